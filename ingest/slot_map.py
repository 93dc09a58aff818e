"""Which Redis Cluster primary owns which slot: the pure core of direct cluster routing.

Ingest sends a collection's append straight to the primary that owns the collection's slot
(``ingest/direct.py``); this module holds the table it looks that up in, built from a
``CLUSTER SLOTS`` reply and patched slot by slot when a node answers ``MOVED``. No I/O here, so
it is tested in milliseconds. Nodes are named ``host:port``, as redis-py names them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = ["RefreshGate", "SlotMap", "SlotRange", "node_name", "parse_cluster_slots", "slot_of"]

SLOTS = REDIS_CLUSTER_HASH_SLOTS


def slot_of(key: str) -> int:
    """The cluster slot of ``key``: CRC16 (XMODEM) of its hash tag, mod 16384, as the server
    computes it (``CLUSTER KEYSLOT``; tests/cluster checks that they agree)."""
    return int(key_slot(key.encode()))


def node_name(host: str, port: int) -> str:
    return f"{host}:{port}"


def split_name(name: str) -> tuple[str, int]:
    host, _, port = name.rpartition(":")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class SlotRange:
    start: int
    end: int  # inclusive, as CLUSTER SLOTS gives it
    primary: str
    replicas: tuple[str, ...] = ()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_cluster_slots(reply: Sequence[Sequence[Any]], queried_host: str) -> list[SlotRange]:
    """A ``CLUSTER SLOTS`` reply as ranges. A node with no known endpoint (an empty host, or
    ``?`` in Redis 7) is reached at the host we asked, as redis-py does."""
    ranges = []
    for start, end, *nodes in reply:
        names = []
        for node in nodes:
            host, port = _text(node[0]), int(node[1])
            names.append(node_name(queried_host if host in ("", "?") else host, port))
        if names:
            ranges.append(SlotRange(int(start), int(end), names[0], tuple(names[1:])))
    return ranges


class SlotMap:
    """Slot -> primary, one list entry per slot (a lookup is one index). Readers need no lock:
    a refresh builds a new list and swaps it in one assignment; a ``MOVED`` patches one entry."""

    def __init__(self, ranges: Iterable[SlotRange] = ()) -> None:
        self._owner: list[str | None] = [None] * SLOTS
        self._replicas: dict[str, tuple[str, ...]] = {}
        self.replace(ranges)

    def replace(self, ranges: Iterable[SlotRange]) -> None:
        owner: list[str | None] = [None] * SLOTS
        replicas: dict[str, tuple[str, ...]] = {}
        for r in ranges:
            owner[r.start : r.end + 1] = [r.primary] * (r.end - r.start + 1)
            replicas[r.primary] = tuple(dict.fromkeys(replicas.get(r.primary, ()) + r.replicas))
        self._owner, self._replicas = owner, replicas

    def owner(self, slot: int) -> str | None:
        return self._owner[slot]

    def moved(self, slot: int, primary: str) -> None:
        """A node answered ``MOVED <slot> <primary>``: that slot is served there now."""
        self._owner[slot] = primary

    def covered(self) -> int:
        return sum(1 for o in self._owner if o is not None)

    def primaries(self) -> set[str]:
        return {o for o in self._owner if o is not None}

    def nodes(self) -> list[str]:
        """Every known node, primaries first: where a refresh asks for the map."""
        primaries = sorted(self.primaries())
        replicas = [r for p in sorted(self._replicas) for r in self._replicas[p]]
        return list(dict.fromkeys(primaries + replicas))


class RefreshGate:
    """At most one slot-map refresh per ``interval`` seconds, whoever asks: a storm of errors
    (every webhook of a failed master) does not become a storm of ``CLUSTER SLOTS``."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def claim(self) -> bool:
        """True (and the clock starts again) if a refresh may run now."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.interval:
                return False
            self._last = now
            return True
