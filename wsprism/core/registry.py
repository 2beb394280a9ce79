"""The session registry of one tenant: who is connected, by user and by (user, sid).

Counts are exact within one process: the event loop runs one callback at a time, and a
session is counted from the moment its handshake is accepted (`reserve`) until it is
detached.
"""
from .session import Session


class SessionRegistry:
    __slots__ = ("count", "by_user", "by_key")

    def __init__(self) -> None:
        self.count = 0                                   # accepted handshakes not yet gone
        self.by_user: dict[str, list[Session]] = {}      # admitted sessions, oldest first
        self.by_key: dict[tuple[str, str], Session] = {}

    def reserve(self) -> None:
        self.count += 1

    def release(self) -> None:
        self.count -= 1

    def find(self, user: str, sid: str) -> Session | None:
        return self.by_key.get((user, sid))

    def sessions_of(self, user: str) -> list[Session]:
        return self.by_user.get(user, [])

    def add(self, session: Session) -> None:
        self.by_user.setdefault(session.user, []).append(session)
        self.by_key[(session.user, session.sid)] = session

    def remove(self, session: Session) -> None:
        lst = self.by_user.get(session.user)
        if lst is not None:
            try:
                lst.remove(session)
            except ValueError:
                pass
            if not lst:
                del self.by_user[session.user]
        key = (session.user, session.sid)
        if self.by_key.get(key) is session:
            del self.by_key[key]

    def all_sessions(self) -> list[Session]:
        return [s for lst in self.by_user.values() for s in lst]

    @property
    def users(self) -> int:
        return len(self.by_user)
