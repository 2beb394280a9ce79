"""Allowlists compiled once per config load (deny by default).

Ext Lane entries are `svc:type` or `svc:*`; the check is two dict/set lookups on the
envelope's own strings, with no string built per message. Hot Lane entries are
`svc_id:opcode` or `svc_id:*`, compiled into a 256x256 bit table (`HotAllowlist`, in
the hot path: wsprism/_fast/hotheader).
"""
from .._fast import HotAllowlist

__all__ = ["ExtAllowlist", "HotAllowlist"]


class ExtAllowlist:
    __slots__ = ("wild", "exact")

    def __init__(self, entries) -> None:
        wild: set[str] = set()
        exact: dict[str, set[str]] = {}
        for entry in entries:
            svc, _, typ = entry.partition(":")
            if typ == "*":
                wild.add(svc)
            else:
                exact.setdefault(svc, set()).add(typ)
        self.wild = frozenset(wild)
        self.exact = {k: frozenset(v) for k, v in exact.items()}

    def allows(self, svc: str, typ: str) -> bool:
        if svc in self.wild:
            return True
        types = self.exact.get(svc)
        return types is not None and typ in types
