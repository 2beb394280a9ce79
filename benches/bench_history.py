"""The in-memory history store (wsprism/core/history.py): what it adds per publish,
what a replay costs, and how much memory it holds.

    pytest benches/bench_history.py --benchmark-columns=min,median,mean,ops --benchmark-group-by=group

Groups:
- publish_encode: one chat message encoded and framed for fan-out, without history
  (`encode_message` + `build_frame`, today's path) and with it (`encode_room_parts` +
  `HistoryStore.publish`: offset, splice, frame, ring append, size/ttl trim) into a
  room that holds `size` messages already (steady state).
- replay_100: a join 100 messages behind: the decision, then the 100 frames handed out.
- memory_1000x100: 1000 rooms × 100 messages of 200 B as delivered; `extra_info` has
  the bytes Python allocated for them (tracemalloc), the frames' own bytes, and the
  process's RSS growth. Goal (issue 12): ≤ 30 MiB.
"""
import gc
import tracemalloc

import psutil
import pytest

from wsprism._fast import OP_TEXT, build_frame
from wsprism.core.envelope import encode_message, encode_room_parts
from wsprism.core.history import HistoryStore, Since

DATA = {"from": "user-0001", "msg": "x" * 77}        # 200 B once positioned


@pytest.mark.parametrize("history", [False, True], ids=["off", "on"])
def test_publish_encode(benchmark, history):
    benchmark.group = "publish_encode"
    if not history:
        benchmark(lambda: build_frame(OP_TEXT, encode_message("chat", "msg", "room:1", DATA)))
        return
    store = HistoryStore(100, 300_000)
    for _ in range(100):
        store.publish("room:1", *encode_room_parts("chat", "msg", "room:1", DATA))
    publish = store.publish
    benchmark(lambda: publish("room:1", *encode_room_parts("chat", "msg", "room:1", DATA)))
    assert store.count == 100


def test_replay_100(benchmark):
    benchmark.group = "replay_100"
    store = HistoryStore(100, 300_000)
    head, tail = encode_room_parts("chat", "msg", "room:1", DATA)
    for _ in range(200):
        store.publish("room:1", head, tail)
    rec = store.rooms["room:1"]
    since = Since(rec.top - 100, rec.epoch)

    def replay():
        r = store.replay("room:1", since)
        return r.take(1 << 30), r.recovered

    frames, recovered = benchmark(replay)
    assert len(frames) == 100 and recovered


def test_memory_1000x100(benchmark):
    benchmark.group = "memory_1000x100"
    names = [f"room:{r:04d}" for r in range(1000)]
    parts = [encode_room_parts("chat", "msg", n, {"from": f"user-{i:04d}", "msg": "x" * 77})
             for i, n in enumerate(names)]
    result = {}

    def fill(trace: bool):
        store = HistoryStore(100, 300_000)
        gc.collect()
        rss0 = psutil.Process().memory_info().rss
        if trace:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            for name, (head, tail) in zip(names, parts):
                store.publish(name, head, tail)
        if trace:
            result["traced_mib"] = (tracemalloc.get_traced_memory()[0] - before) / 2**20
            tracemalloc.stop()
        else:
            result["rss_growth_mib"] = (psutil.Process().memory_info().rss - rss0) / 2**20
        result["frame_mib"] = store.nbytes / 2**20
        result["messages"] = store.count
        return store

    fill(trace=False)                       # RSS first, without tracemalloc's own overhead
    gc.collect()
    benchmark.pedantic(fill, args=(True,), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 2) for k, v in result.items()})
    assert result["messages"] == 100_000 and result["traced_mib"] <= 30
