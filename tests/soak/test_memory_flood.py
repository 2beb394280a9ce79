"""The memory bound under the issue's flood (issue 16), on a gateway process of its own.

30 members of one room that never read each send their whole rate-limit burst (400
chat messages of ~4 KB, the default policy) at once, while 2 members read everything.
Before the outbound caps this took the gateway from ~56 MB to ~1.9 GB in a second.
Now: RSS growth stays within 30 x (outbound_max_bytes + 1 MiB), /healthz answers
within 50 ms (p99, polled every 10 ms throughout), every non-reader is closed 4005, and
the readers receive every message the gateway accepted. Slow (`-m slow`): it runs the
scenario of `benches/hostile.py flood` three times and judges the median.

    python -m pytest -m slow -s tests/soak/test_memory_flood.py
"""
import os
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benches"))

import hostile  # noqa: E402

MIB = 1024 * 1024
FLOODERS = 30
OUTBOUND_MAX = 4 * MIB          # the default: 4 x outbound_high_water_bytes (1 MiB)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_thirty_non_readers_flooding_one_room_stay_within_the_memory_bound():
    runs = [hostile.flood(sys.executable, flooders=FLOODERS, readers=2, burst=400, size=3900) for _ in range(3)]
    for r in runs:
        print("\nFLOOD", r)
        # every non-reader closed 4005 (memory or time rule); nobody else
        assert r["closed_4005"] == FLOODERS, r
        # readers receive every message the gateway accepted
        assert r["received_by_readers"] == [r["chat_accepted"]] * 2, r
        assert r["healthz"]["failures"] == 0, r
    growth = statistics.median(r["rss_growth_mb"] for r in runs)
    p99 = statistics.median(r["healthz"]["p99_ms"] for r in runs)
    assert growth * MIB <= FLOODERS * (OUTBOUND_MAX + MIB), runs
    assert p99 <= 50, runs
