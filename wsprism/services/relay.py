"""Hot Lane service 1, the built-in echo/relay (SPEC 4).

It runs inside the compiled framer (wsprism/_fast/framer_*: `_relay`), so a relayed
frame costs one Python object, the outgoing frame shared by every member. It is
registered in each tenant's Hot Lane table like any other service (wsprism/assembly.py):
the table's entry for svc_id 1 is the framer's `RELAY` marker.
"""
from .._fast import RELAY, HotService

SVC_ID = int(HotService.HOT_SVC_RELAY)
HANDLER = RELAY
