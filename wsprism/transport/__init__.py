"""Transport (SPEC 1, 8, 14): the picows server (server.py) and the pre-upgrade router
(handshake.py: 404, 426, 503, 429, 400, 401 cheapest first, and /healthz, /readyz,
/metrics on the same port). The per-connection listener itself is the session, in
wsprism/_fast (framer) and core/session.py."""
