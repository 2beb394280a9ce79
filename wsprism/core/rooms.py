"""Room membership of one tenant (the table behind `Tenant.join`/`leave`/`presence`).

A room holds its member sessions (in join order) and how many sessions each user has
in it, so presence counts users, not tabs. `max_users_per_room` counts distinct users,
`max_rooms_per_user` counts distinct rooms over all of a user's sessions, and a room
with no member left is deleted at once. Announcing joins and leaves, and fanning out,
is the tenant's (core/tenant.py): this table only keeps the sets.

A member is live (in `members`, the set room messages fan out to) or joining (in
`joining`: admitted, counted toward every limit and in presence, but not sent room
messages yet, because its replay of the room's history is still being sent;
core/recovery.py). `go_live` moves it over when its replay reaches the room's newest
message.
"""
from . import codes

PRESENCE_USERS_CAP = 1000


class RoomError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class Room:
    __slots__ = ("name", "members", "users", "joining", "channel")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict = {}            # live sessions (the fan-out set): Session -> None, in join order
        self.users: dict[str, int] = {}    # user -> sessions of that user in the room (joining too)
        self.joining: dict = {}            # Session -> its join in progress (core/recovery.py)
        self.channel = None                # its broker channel while it has members here (SPEC 11)

    @property
    def empty(self) -> bool:
        return not self.members and not self.joining

    @property
    def size(self) -> int:
        """Sessions in the room here, joining ones too (what the broker counts)."""
        return len(self.members) + len(self.joining)


class RoomTable:
    __slots__ = ("rooms", "user_rooms", "limits")

    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.user_rooms: dict[str, dict[str, int]] = {}   # user -> {room: sessions in it}
        self.limits = None

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def is_member(self, session, name: str) -> bool:
        """Live or joining."""
        room = self.rooms.get(name)
        return room is not None and (session in room.members or session in room.joining)

    def has_user(self, name: str, user: str) -> bool:
        """Whether `user` has a session (live or joining) in the room on this node."""
        room = self.rooms.get(name)
        return room is not None and user in room.users

    def make_active(self, session, name: str) -> None:
        """A re-join of a room the session is in (live or joining): its active room again."""
        del session.rooms[name]
        session.rooms[name] = None
        session.room_members = self.rooms[name].members

    def join(self, session, name: str, pending=None) -> bool:
        """Add the session to the room and make it the session's active room; RoomError
        past a limit. True when this is the user's first session in the room. With
        `pending` (its join in progress) the session is joining, not live, until
        `go_live`. The caller has handled a re-join (`make_active`)."""
        room = self.rooms.get(name)
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
        name = room.name                  # the table's string: one per room, not one per member
        if pending is None:
            room.members[session] = None
        else:
            room.joining[session] = pending
        room.users[user] = room.users.get(user, 0) + 1
        mine = self.user_rooms.setdefault(user, {})
        mine[name] = mine.get(name, 0) + 1
        if not session.rooms:
            session.rooms = {}            # the first join (core/session.py NO_ROOMS)
        session.rooms[name] = None
        session.room_members = room.members
        return first_of_user

    def go_live(self, session, name: str) -> None:
        """A joining session becomes a live member (its replay is over)."""
        room = self.rooms[name]
        del room.joining[session]
        room.members[session] = None

    def leave(self, session, name: str) -> Room | None:
        """Remove the session (live or joining) from the room. None if it was not a
        member; else the room, whose `users` no longer holds the user if this was the
        user's last session in it (a room left empty is already deleted from the table)."""
        room = self.rooms.get(name)
        if room is None:
            return None
        if session in room.members:
            del room.members[session]
        elif session in room.joining:
            del room.joining[session]
        else:
            return None
        del session.rooms[name]
        active = next(reversed(session.rooms), None)
        session.room_members = self.rooms[active].members if active is not None else None
        user = session.user
        if room.users[user] == 1:
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
        if room.empty:
            del self.rooms[name]
        return room

    def presence(self, name: str, limit: int = PRESENCE_USERS_CAP) -> tuple[int, list[str]]:
        room = self.rooms.get(name)
        if room is None:
            return 0, []
        users = room.users
        if len(users) <= limit:
            return len(users), list(users)
        return len(users), [u for u, _ in zip(users, range(limit))]
