"""Token bucket: the rate limiter behind `policy.rate_limit_*` and the handshake defender.

One source, two builds: this file runs as the pure-Python twin and is also compiled,
typed by `bucket_c.pxd`, as `bucket_c` (setup.py), so the two cannot drift.

A bucket holds up to `burst` tokens and gains `rate` tokens per second. Each allowed
message takes one token. The clock is CLOCK_MONOTONIC in seconds (`time.monotonic()`);
`allow_at(now)` takes an explicit time so tests can drive the clock.
"""
from time import monotonic


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float = -1.0) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = monotonic() if now < 0 else float(now)

    def configure(self, rate: float, burst: float) -> None:
        """Change rate and burst (config reload); the tokens held are capped at the new burst."""
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = float(rate)
        self.burst = float(burst)
        if self.tokens > self.burst:
            self.tokens = self.burst

    def allow_at(self, now: float) -> bool:
        """Refill for the time since the last call, then take one token if there is one."""
        elapsed = now - self.last
        if elapsed > 0.0:
            self.tokens = self.tokens + elapsed * self.rate
            if self.tokens > self.burst:
                self.tokens = self.burst
            self.last = now
        if self.tokens >= 1.0:
            self.tokens = self.tokens - 1.0
            return True
        return False

    def allow(self) -> bool:
        """`allow_at` on the monotonic clock."""
        return self.allow_at(monotonic())

    def refund(self) -> None:
        """Give back one token (used when a second bucket of scope `both` said no)."""
        self.tokens = self.tokens + 1.0
        if self.tokens > self.burst:
            self.tokens = self.burst

    def retry_after(self, now: float) -> float:
        """Seconds until one token is available (0 when one is there now). Does not take it."""
        elapsed = now - self.last
        tokens = self.tokens
        if elapsed > 0.0:
            tokens = tokens + elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / self.rate
