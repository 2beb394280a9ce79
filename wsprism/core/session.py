"""One client session: identity, rooms, rate-limit state and the ways to talk to it.

The class lives in the hot path (`wsprism._fast`, framer): a session is also the picows
listener of its connection, so an idle connection costs one object on our side. What
the rest of the gateway uses of it:

- attributes: tenant, user, sid, trace_id, ip, state, rooms (a dict used as an ordered set, least recently joined
  first), active_room, room_members (the active room's members), bucket, registered
- send(bytes) reliable text frame; send_binary(bytes); send_lossy(bytes) -> bool;
  send_error(code, msg, seq); close(code, reason); next_trace_id()
"""
from .._fast import CLOSED, CLOSING, OPEN, PENDING, Session

__all__ = ["Session", "PENDING", "OPEN", "CLOSING", "CLOSED"]
