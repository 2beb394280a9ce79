"""The names clients, the config and the backend may use (SPEC 3 and 14), one pattern
each: as compiled regexes (use `fullmatch`) and as msgspec string types.

- tenant ids, and service names in `tenants[].services`: 1-64 of `A-Z a-z 0-9 _ . -`
- session ids (`sid`), and the `svc`/`type` the server API accepts: 1-64 of `A-Z a-z 0-9 _ . : -`
- room names: 1-128 of `A-Z a-z 0-9 _ . : @ -`
"""
import re
from typing import Annotated

import msgspec

TENANT_ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
SID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
ROOM_PATTERN = r"[A-Za-z0-9_.:@-]{1,128}"

TENANT_ID = re.compile(TENANT_ID_PATTERN)
SERVICE_NAME = TENANT_ID
SID = re.compile(SID_PATTERN)
ROOM = re.compile(ROOM_PATTERN)
ROOM_RULE = "1-128 chars of [A-Za-z0-9_.:@-]"

TenantIdStr = Annotated[str, msgspec.Meta(pattern=f"^{TENANT_ID_PATTERN}$")]
NameStr = Annotated[str, msgspec.Meta(pattern=f"^{SID_PATTERN}$")]
RoomStr = Annotated[str, msgspec.Meta(pattern=f"^{ROOM_PATTERN}$")]
