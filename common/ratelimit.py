"""Token buckets: one per client connection (fanout) and one per sender address (ingest).

A bucket holds up to ``burst`` tokens and gains ``rate`` per second; each message takes one.
Time is passed in (monotonic seconds) where callers already have it, so tests need no clock.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        """Take one token if there is one."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def refund(self) -> None:
        """Give one token back: the message answered something the server chose to send."""
        self.tokens = min(self.burst, self.tokens + 1.0)


class KeyedRateLimiter:
    """A bucket per key (sender address), the least recently seen forgotten past ``max_keys``
    so a flood of spoofed keys cannot grow memory. ``rate <= 0`` disables the limit."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, key: str, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst, now)
        self._buckets[key] = bucket
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket.take(now)

    def retry_after(self) -> int:
        """Whole seconds until a sender has a token again, for ``Retry-After``."""
        return max(1, int(1 / self.rate)) if self.rate > 0 else 1
