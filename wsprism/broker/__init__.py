"""Scale-out: the Redis broker shared by every worker and node (SPEC section 11).

- resp.py     our Redis connections (RESP via hiredis, pipelined, no library retries)
- redis.py    RedisBroker: links, states, lease and reaper, admissions, publishes
- scripts.py  the Lua scripts (lua/*.lua): one atomic step per admission
- keys.py     key and channel names; wire.py what nodes publish for each other
- metrics.py  the broker's counters
"""
from .redis import DOWN, SYNCING, UP, AdmitResult, RedisBroker
from .resp import BrokerError

__all__ = ["RedisBroker", "AdmitResult", "BrokerError", "DOWN", "SYNCING", "UP"]
