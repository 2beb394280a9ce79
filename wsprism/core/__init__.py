"""The realtime core (SPEC 2, 3, 5, 7): what a tenant is while it runs.

- tenant.py: `Tenant`, the one publish path (`publish`, `publish_hot`, `send_to_user`) and
  the one place sessions are admitted and rooms joined and left (the seams for a broker,
  SPEC 11, and for history, SPEC 13)
- registry.py, rooms.py: who is connected (by user and sid), room membership and presence
- dispatcher.py: the handler table, `ServiceError`, `DEFERRED`, dispatch and the ack
- envelope.py: the Ext Lane's one decoder and the outbound encoders
- session.py: the session (the compiled listener of wsprism/_fast), and its states
- codes.py, stats.py: error and close codes by name; the counters the hot path bumps

The core is handed what it calls (wsprism/assembly.py fills a tenant in); it imports
nothing from policy, ops or services.
"""
