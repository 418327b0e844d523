"""Per-client-address rate limiting: a token bucket per address, refilled continuously.

Over the limit a request gets 429 with Retry-After. Buckets live in this process (with several
workers each enforces the limit on the connections it serves); idle buckets are dropped.
"""
from __future__ import annotations

import math
import time


class RateLimiter:
    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst or max(per_minute, 1))
        self._buckets: dict[str, tuple[float, float]] = {}   # address -> (tokens, last refill)

    def retry_after(self, address: str) -> int:
        """0 when the request may go ahead (and is counted); else the seconds to wait."""
        now = time.monotonic()
        tokens, last = self._buckets.get(address, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[address] = (tokens - 1, now)
            self._sweep(now)
            return 0
        self._buckets[address] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self.rate))

    def _sweep(self, now: float) -> None:
        if len(self._buckets) > 10_000:
            full = self.capacity / self.rate if self.rate else 0
            self._buckets = {a: v for a, v in self._buckets.items() if now - v[1] < full}
