"""The load generator behind `wsprism bench` (also `python benches/load.py`).

Client processes built on the picows client and uvloop drive a gateway (or the bare
baseline servers in wsprism/loadgen/baselines/: picows, websockets, Bun) over real
sockets; see docs/benchmarks.md.
"""
from .command import main

__all__ = ["main"]
