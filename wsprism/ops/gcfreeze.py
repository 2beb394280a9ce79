"""Keep the garbage collector's full passes off the live sessions (docs/operations.md,
"Garbage collector").

A full collection walks every object the collector tracks (about 16 per session), and
Python runs one each time a quarter more objects have reached the oldest generation.
Steady traffic and connection churn do not get there (sessions come and go, freed at
once), but many sessions opening together (a deploy, a reconnect storm) do: 196 ms
while 12 000 sessions opened, 243 ms for 7 000 more (benches/gc_pauses.py), the loop
standing still for every session. Sessions and what they hold are freed by reference
counting (nothing of theirs forms a cycle: picows holds the listener through a weak
proxy, uvloop drops the protocol on close; tests/integration/test_gc_freeze.py checks
it), so the collector has nothing to find among them.

- `startup()`: once the gateway is ready, collect once and move everything that exists
  (modules, config, tenants: ~50 000 objects) out of the collector's sight (`gc.freeze`).
- `after_sweep()`: after each liveness sweep (every `ping_interval_ms`), freeze again:
  sessions that lived through a sweep leave the collector's walk. Young cycles are
  collected first (generations 0 and 1, cheap), so only objects that survived two
  collections are frozen.

Only `wsprism start` (app.run) enables this: a gateway embedded in another process
(`app.serve`, the tests) leaves that process's collector alone. `WSPRISM_GC_FREEZE=0`
keeps it off there too (for measuring the difference).
"""
import gc
import os

ENABLED = False


def enable() -> None:
    global ENABLED
    ENABLED = os.environ.get("WSPRISM_GC_FREEZE", "1") != "0"


def startup() -> None:
    if ENABLED:
        gc.collect()
        gc.freeze()


def after_sweep() -> None:
    if ENABLED:
        gc.collect(1)
        gc.freeze()
