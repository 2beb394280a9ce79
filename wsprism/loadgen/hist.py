"""Latency histogram cheap enough to update once per received frame.

Two fixed arrays of counters, no allocation per sample:

- fine buckets of 2**10 ns (about 1 µs) up to about 67 ms;
- coarse buckets of 2**20 ns (about 1 ms) up to about 68 s, for everything slower.

The hot paths in :mod:`wsprism.loadgen.client` index ``fine`` inline
(``lat >> FINE_SHIFT``) and call :meth:`LatencyHist.add` only for the rare slow
sample. Histograms from several processes are merged through :meth:`to_wire`.
"""
from __future__ import annotations

from array import array

FINE_SHIFT = 10
FINE_N = 1 << 16
COARSE_SHIFT = 20
COARSE_N = 1 << 16


class LatencyHist:
    __slots__ = ("fine", "coarse")

    def __init__(self) -> None:
        self.fine = array("Q", bytes(8 * FINE_N))
        self.coarse = array("Q", bytes(8 * COARSE_N))

    def add(self, lat_ns: int) -> None:
        if lat_ns < 0:
            lat_ns = 0
        u = lat_ns >> FINE_SHIFT
        if u < FINE_N:
            self.fine[u] += 1
        else:
            c = lat_ns >> COARSE_SHIFT
            self.coarse[c if c < COARSE_N else COARSE_N - 1] += 1

    def count(self) -> int:
        return sum(self.fine) + sum(self.coarse)

    def to_wire(self) -> dict:
        """Sparse form, small enough to pickle through a pipe."""
        return {
            "f": {i: n for i, n in enumerate(self.fine) if n},
            "c": {i: n for i, n in enumerate(self.coarse) if n},
        }

    def merge_wire(self, wire: dict) -> None:
        for i, n in wire.get("f", {}).items():
            self.fine[int(i)] += n
        for i, n in wire.get("c", {}).items():
            self.coarse[int(i)] += n

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """Latency in microseconds at each quantile (bucket middle), None when empty."""
        total = self.count()
        if total == 0:
            return [None for _ in qs]
        targets = sorted((max(1, int(q * total + 0.999999)), k) for k, q in enumerate(qs))
        out: list[float | None] = [None] * len(qs)
        seen = 0
        t = 0
        for shift, arr in ((FINE_SHIFT, self.fine), (COARSE_SHIFT, self.coarse)):
            width = 1 << shift
            for i, n in enumerate(arr):
                if not n:
                    continue
                seen += n
                while t < len(targets) and seen >= targets[t][0]:
                    out[targets[t][1]] = (i * width + width / 2) / 1000.0
                    t += 1
                if t == len(targets):
                    return out
        return out
