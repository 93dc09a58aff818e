"""Token buckets per sender, in process memory (each gunicorn worker limits on its own)."""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self) -> int:
        return max(1, int(1 / self.rate)) if self.rate > 0 else 1


def sender_address(
    remote_addr: str | None, forwarded_for: str | None, trusted: frozenset[str]
) -> str:
    """The address a webhook came from, for rate limiting.

    Behind a proxy every request comes from the proxy's address; when the direct peer is one of
    ``INGEST_TRUSTED_PROXIES`` the sender is the right-most ``X-Forwarded-For`` hop that is not a
    trusted proxy itself (hops further left can be forged by the client). Without trusted
    proxies the header is ignored, so a sender cannot dodge the limit by inventing one.
    """
    peer = remote_addr or "-"
    if not trusted or peer not in trusted or not forwarded_for:
        return peer
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if hop and hop not in trusted:
            return hop
    return peer
