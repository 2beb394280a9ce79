"""Handshake defender: global and per-IP token buckets before any upgrade work.

The per-IP table is bounded by `max_ip_entries`; the least recently seen address is
evicted first. `X-Forwarded-For` is believed only when the TCP peer is listed in
`gateway.trusted_proxies`; then the client is the rightmost address not itself trusted.
"""
import ipaddress
import math
from collections import OrderedDict
from time import monotonic

from .._fast import TokenBucket


class Defender:
    def __init__(self, cfg, trusted_proxies) -> None:
        self.global_bucket = TokenBucket(cfg.global_rps, cfg.global_burst)
        self.per_ip: OrderedDict[str, TokenBucket] = OrderedDict()
        self.reconfigure(cfg, trusted_proxies)

    def reconfigure(self, cfg, trusted_proxies) -> None:
        self.enabled = cfg.enabled
        self.cfg = cfg
        self.global_bucket.configure(cfg.global_rps, cfg.global_burst)
        for b in self.per_ip.values():
            b.configure(cfg.per_ip_rps, cfg.per_ip_burst)
        self.max_entries = cfg.max_ip_entries
        while len(self.per_ip) > self.max_entries:
            self.per_ip.popitem(last=False)
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def client_ip(self, peer_ip: str, forwarded_for: str | None) -> str:
        if forwarded_for is None or not self._is_trusted(peer_ip):
            return peer_ip
        for part in reversed(forwarded_for.split(",")):
            ip = part.strip()
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                return peer_ip
            if not self._is_trusted(ip):
                return ip
        return peer_ip

    def check(self, ip: str) -> tuple[str, int] | None:
        """None when the handshake may proceed, else (reason, Retry-After seconds)."""
        now = monotonic()
        bucket = self.per_ip.get(ip)
        if bucket is None:
            bucket = TokenBucket(self.cfg.per_ip_rps, self.cfg.per_ip_burst, now)
            self.per_ip[ip] = bucket
            if len(self.per_ip) > self.max_entries:
                self.per_ip.popitem(last=False)
        else:
            self.per_ip.move_to_end(ip)
        if not bucket.allow_at(now):
            return "rate_limited_ip", _whole_seconds(bucket.retry_after(now))
        if not self.global_bucket.allow_at(now):
            bucket.refund()
            return "rate_limited_global", _whole_seconds(self.global_bucket.retry_after(now))
        return None


def _whole_seconds(s: float) -> int:
    return max(1, math.ceil(s))
