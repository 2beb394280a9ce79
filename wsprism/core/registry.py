"""The session registry of one tenant: who is connected, by user and by sid.

Counts are exact within one process: the event loop runs one callback at a time, and a
session is counted from the moment its handshake is accepted (`reserve`) until it is
detached. A sid is unique per user (a reconnect with the same user and sid replaces the
live session, SPEC 1); two users may share one, so `by_sid` holds one session or, rarely,
a list of them.
"""


class SessionRegistry:
    __slots__ = ("count", "admitted", "by_user", "by_sid")

    def __init__(self) -> None:
        self.count = 0                          # accepted handshakes not yet gone
        self.admitted = 0                       # of which admitted (in by_user and by_sid)
        self.by_user: dict[str, list] = {}      # admitted sessions, oldest first
        self.by_sid: dict[str, object] = {}     # sid -> Session, or list of Sessions

    def reserve(self) -> None:
        self.count += 1

    def release(self) -> None:
        self.count -= 1

    def find(self, user: str, sid: str):
        entry = self.by_sid.get(sid)
        if entry is None:
            return None
        if type(entry) is not list:
            return entry if entry.user == user else None
        for session in entry:
            if session.user == user:
                return session
        return None

    def with_sid(self, sid: str) -> list:
        entry = self.by_sid.get(sid)
        if entry is None:
            return []
        return list(entry) if type(entry) is list else [entry]

    def sessions_of(self, user: str) -> list:
        return self.by_user.get(user, [])

    def add(self, session) -> None:
        self.admitted += 1
        self.by_user.setdefault(session.user, []).append(session)
        sid = session.sid
        entry = self.by_sid.get(sid)
        if entry is None:
            self.by_sid[sid] = session
        elif type(entry) is list:
            entry.append(session)
        else:
            self.by_sid[sid] = [entry, session]

    def remove(self, session) -> None:
        lst = self.by_user.get(session.user)
        if lst is not None:
            try:
                lst.remove(session)
                self.admitted -= 1
            except ValueError:
                pass
            if not lst:
                del self.by_user[session.user]
        sid = session.sid
        entry = self.by_sid.get(sid)
        if entry is session:
            del self.by_sid[sid]
        elif type(entry) is list and session in entry:
            entry.remove(session)
            if len(entry) == 1:
                self.by_sid[sid] = entry[0]

    def all_sessions(self) -> list:
        return [s for lst in self.by_user.values() for s in lst]

    @property
    def users(self) -> int:
        return len(self.by_user)
