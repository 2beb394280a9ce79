"""One log line per interval for a failure that may repeat on every message: the webhook
forwarder's backend failures and a Python service's exceptions share it."""
from __future__ import annotations

LOG_EVERY_S = 10.0                  # a failing service is logged at most this often


class Throttle:
    """`due(now)` is None while the last line is younger than `every_s` (counting the
    skipped one), else how many were skipped since that line (and `now` starts the next
    interval)."""

    __slots__ = ("every_s", "_at", "_skipped")

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._at = -every_s
        self._skipped = 0

    def due(self, now: float) -> int | None:
        if now - self._at < self.every_s:
            self._skipped += 1
            return None
        skipped, self._skipped = self._skipped, 0
        self._at = now
        return skipped
