"""Rooms and presence of one tenant.

A room holds its member sessions (in join order) and how many sessions each user has
in it, so presence counts users, not tabs. `max_users_per_room` counts distinct users,
`max_rooms_per_user` counts distinct rooms over all of a user's sessions, and a room
with no member left is deleted at once.
"""
import re

from .._fast import OP_TEXT, broadcast, build_frame
from . import codes
from .envelope import encode_message

ROOM_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
PRESENCE_USERS_CAP = 1000


class RoomError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class Room:
    __slots__ = ("name", "members", "users")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict = {}            # Session -> None, in join order
        self.users: dict[str, int] = {}    # user -> sessions of that user in the room


class RoomTable:
    __slots__ = ("rooms", "user_rooms", "limits", "presence_events")

    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.user_rooms: dict[str, dict[str, int]] = {}   # user -> {room: sessions in it}
        self.limits = None
        self.presence_events = False

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def join(self, session, name: str) -> bool:
        """Add the session to the room and make it the session's active room.

        True when this is the user's first session in the room (the caller announces
        it with `announce_join` after answering the joiner)."""
        room = self.rooms.get(name)
        if room is not None and session in room.members:
            del session.rooms[name]             # re-join: make it the active room again
            session.rooms[name] = None
            session.room_members = room.members
            return False
        user = session.user
        limits = self.limits
        first_of_user = room is None or user not in room.users
        if room is None and limits.max_rooms_total and len(self.rooms) >= limits.max_rooms_total:
            raise RoomError(codes.RESOURCE_EXHAUSTED, "max_rooms_total reached")
        if first_of_user:
            if room is not None and limits.max_users_per_room and len(room.users) >= limits.max_users_per_room:
                raise RoomError(codes.RESOURCE_EXHAUSTED, "max_users_per_room reached")
            mine = self.user_rooms.get(user)
            if limits.max_rooms_per_user and mine is not None and name not in mine \
                    and len(mine) >= limits.max_rooms_per_user:
                raise RoomError(codes.RESOURCE_EXHAUSTED, "max_rooms_per_user reached")
        if room is None:
            room = self.rooms[name] = Room(name)
        room.members[session] = None
        room.users[user] = room.users.get(user, 0) + 1
        mine = self.user_rooms.setdefault(user, {})
        mine[name] = mine.get(name, 0) + 1
        session.rooms[name] = None
        session.room_members = room.members
        return first_of_user

    def announce_join(self, name: str, user: str) -> None:
        """`room.user_joined` to every member, when the tenant has presence events on."""
        room = self.rooms.get(name)
        if room is not None and self.presence_events:
            self.broadcast(room, encode_message("room", "user_joined", name, {"user": user}))

    def leave(self, session, name: str) -> bool:
        """Remove the session from the room; False if it was not a member."""
        room = self.rooms.get(name)
        if room is None or session not in room.members:
            return False
        del room.members[session]
        del session.rooms[name]
        active = next(reversed(session.rooms), None)
        session.room_members = self.rooms[active].members if active is not None else None
        user = session.user
        left_room = room.users[user] == 1
        if left_room:
            del room.users[user]
        else:
            room.users[user] -= 1
        mine = self.user_rooms[user]
        if mine[name] == 1:
            del mine[name]
            if not mine:
                del self.user_rooms[user]
        else:
            mine[name] -= 1
        if not room.members:
            del self.rooms[name]
        elif left_room and self.presence_events:
            self.broadcast(room, encode_message("room", "user_left", name, {"user": user}))
        return True

    def leave_all(self, session) -> None:
        for name in list(session.rooms):
            self.leave(session, name)

    def broadcast(self, room: Room, data: bytes) -> int:
        """Reliable fan-out: the frame is built once and queued for every member.
        Returns how many members it went to."""
        broadcast(room.members, build_frame(OP_TEXT, data), False)
        return len(room.members)

    def presence(self, name: str, limit: int = PRESENCE_USERS_CAP) -> tuple[int, list[str]]:
        room = self.rooms.get(name)
        if room is None:
            return 0, []
        users = room.users
        if len(users) <= limit:
            return len(users), list(users)
        return len(users), [u for u, _ in zip(users, range(limit))]
