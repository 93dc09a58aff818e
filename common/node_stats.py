"""The numbers a node puts in its heartbeat, computed from what it already keeps.

Both tiers count with Prometheus metrics (``fanout/metrics.py``, ``ingest/metrics.py``); a
heartbeat turns those monotonic counters and histograms into per-second rates and recent
latencies by taking the difference between two heartbeats, so the operations view shows the
same numbers a Prometheus ``rate()`` would, without a second set of counters on the hot path.
Pure (no Redis, no sockets), except for reading the process's own memory from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any

_PAGE = resource.getpagesize()


@cache
def version() -> str:
    """The installed vski-realtime version (what an operator compares during an upgrade)."""
    try:
        return metadata.version("vski-realtime")
    except metadata.PackageNotFoundError:
        return "unknown"


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident memory of a process now (Linux ``/proc/<pid>/statm``); elsewhere the peak of
    this process (``ru_maxrss``), or None for another process."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    if pid is not None and pid != os.getpid():
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ---------------------------------------------------------------- reading metric families


def sample_total(families: Iterable[Any], sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` (e.g. ``vski_fanout_events_sent_total``) whose
    labels include ``labels``, over metric families as ``collect()`` returns them."""
    total = 0.0
    for family in families:
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@dataclass(frozen=True)
class HistogramState:
    """A histogram's cumulative buckets (upper bound -> count), sum and count at one moment."""

    buckets: tuple[tuple[float, float], ...] = ()
    sum: float = 0.0
    count: float = 0.0


def histogram_state(families: Iterable[Any], name: str) -> HistogramState:
    """The state of histogram ``name`` (without suffix), summed over its label sets."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in families:
        for s in family.samples:
            if s.name == f"{name}_bucket":
                bound = float(s.labels.get("le", "+Inf"))
                buckets[bound] = buckets.get(bound, 0.0) + s.value
            elif s.name == f"{name}_sum":
                total += s.value
            elif s.name == f"{name}_count":
                count += s.value
    return HistogramState(tuple(sorted(buckets.items())), total, count)


# ---------------------------------------------------------------- differences between beats

RATE_WINDOW = 10.0  # seconds: rates and latencies are over about the last 10 s


@dataclass
class _Window:
    """Readings of the last ``RATE_WINDOW`` seconds (plus the one just before, as the base)."""

    readings: deque[tuple[float, Any]] = field(default_factory=deque)

    def push(self, now: float, value: Any) -> tuple[float, Any] | None:
        """Add a reading; returns the oldest one at least a window old (or the oldest kept)."""
        r = self.readings
        r.append((now, value))
        while len(r) > 2 and r[1][0] <= now - RATE_WINDOW:
            r.popleft()
        return r[0] if len(r) > 1 else None


@dataclass
class RateMeter:
    """Per-second rate of a monotonic counter over about the last ``RATE_WINDOW`` seconds."""

    _window: _Window = field(default_factory=_Window)

    def update(self, value: float, now: float) -> float:
        base = self._window.push(now, value)
        if base is None or now <= base[0] or value < base[1]:  # first reading or a reset
            if base is not None and value < base[1]:
                self._window.readings.clear()
                self._window.push(now, value)
            return 0.0
        return float((value - base[1]) / (now - base[0]))


@dataclass(frozen=True)
class Latency:
    """Mean and 99th percentile (the upper bound of its bucket) of the observations of about
    the last ``RATE_WINDOW`` seconds, in milliseconds; None when there were none."""

    mean_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class LatencyMeter:
    _window: _Window = field(default_factory=_Window)

    def update(self, state: HistogramState, now: float) -> Latency:
        base = self._window.push(now, state)
        last: HistogramState = base[1] if base is not None else HistogramState()
        count = state.count - last.count
        if count <= 0 or state.count < last.count:
            return Latency()
        mean = (state.sum - last.sum) / count * 1000
        before = dict(last.buckets)
        p99: float | None = None
        for bound, cumulative in state.buckets:
            if cumulative - before.get(bound, 0.0) >= 0.99 * count:
                p99 = bound * 1000 if bound != float("inf") else None
                break
        if p99 is None:  # above the last finite bucket: the mean is the best bound we have
            with contextlib.suppress(ValueError):
                p99 = max(mean, max(b for b, _ in state.buckets if b != float("inf")) * 1000)
        return Latency(round(mean, 3), None if p99 is None else round(p99, 3))
