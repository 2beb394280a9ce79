"""Services: the built-ins (room, chat, sys; the Hot Lane relay), webhook forwarders
(SPEC 10) and in-process Python services (SPEC 15).

Each is registered in its tenant's handler tables when the tenant is assembled
(wsprism/assembly.py); the dispatcher and the framer know none of them by name.

- base.py: helpers for handlers (`require_room`, `decode_data`)
- room.py, chat.py, sys.py: the built-in Ext Lane services (`HANDLERS`, by type)
- relay.py: Hot Lane svc 1 (run in the compiled framer)
- webhook.py: services forwarded to the backend over HTTP
- python.py: user `Service` classes (wsprism.service), their ctx and gw
"""
from . import chat, room, sys as sys_service

BUILTIN_EXT = {"room": room.HANDLERS, "chat": chat.HANDLERS, "sys": sys_service.HANDLERS}
