"""One client session: identity, rooms, rate-limit state and the ways to talk to it.

The class lives in the hot path (`wsprism._fast`, framer): a session is also the picows
listener of its connection, so an idle connection costs one object on our side. It is
built by the router once the handshake passed (`Session(host, tenant, user, sid, ip,
exp)`) and calls only what it is handed: its `host` (wsprism/lifecycle.py: connect,
disconnect, detach, backpressure) and its tenant's `LanePolicy` (the Ext Lane entry,
the Hot Lane handlers, the sys.error encoder). What the rest of the gateway uses of it:

- attributes: tenant, user, sid, trace_id, ip, state, rooms (a dict used as an ordered
  set, least recently joined first), active_room, room_members (the active room's
  members), bucket, registered, ticket_exp, exp_handle, slow_handle, ctx (Python services)
- send(bytes) reliable text frame; send_binary(bytes); send_lossy(bytes) -> bool;
  send_error(code, msg, seq); close(code, reason); refuse(code, msg, close_code)
  (sys.error then close); next_trace_id()
"""
from .._fast import CLOSED, CLOSING, OPEN, PENDING, Session

__all__ = ["Session", "PENDING", "OPEN", "CLOSING", "CLOSED"]
