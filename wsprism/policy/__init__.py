"""Policy (SPEC 2, 3, 4, 14): what may pass, checked cheapest first.

- ext_lane.py: the Ext Lane's checks in order, the tenant's entry from the framer
- allowlist.py: `svc:type` and `svc_id:opcode` allowlists, compiled once
- ratelimit.py: the token buckets per `rate_limit_scope` (checked in the framer)
- sessions.py: per-user session rules (deny, kick_oldest), handed to the core's admission
- defender.py: the handshake defender (global and per-IP buckets, trusted proxies)

The Hot Lane's checks run in the compiled framer (wsprism/_fast/framer_*), whose
docstring numbers them.
"""
