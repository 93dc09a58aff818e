"""Event ids and the recovery rule: can a node replay everything after a client's lastId?

A client-visible id is ``<ms>-<seq>@<epoch>``:

- ``<ms>-<seq>`` is the Redis Stream entry id. The append script sets it explicitly: ``seq`` is a
  per-collection counter that grows by exactly one per event (dense, like Centrifugo's offset),
  ``ms`` is Redis time, never going backwards. Dense seq makes gaps visible: if the first event
  after ``lastId`` does not have seq+1, something in between was trimmed or lost.
- ``<epoch>`` is a random token stored beside the stream when the collection is first written. If
  Redis loses the data (restart without persistence, expired metadata), a new epoch is drawn, so an
  id from before is recognised as stale instead of being compared with unrelated new ids.

Any fanout node can evaluate an id from any other node: all state is in the id and in Redis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID_RE = re.compile(r"^(\d{1,15})-(\d{1,19})@([A-Za-z0-9]{1,32})$")


class InvalidEventId(ValueError):
    """A lastId or ackId that is not an id this service issued."""


@dataclass(frozen=True, slots=True, order=True)
class EventId:
    ms: int
    seq: int
    epoch: str

    @property
    def stream_id(self) -> str:
        return f"{self.ms}-{self.seq}"

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}@{self.epoch}"

    @classmethod
    def parse(cls, text: str) -> EventId:
        m = _ID_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise InvalidEventId(
                f"event id {text!r} is not of the form <ms>-<seq>@<epoch> issued by this service"
            )
        return cls(int(m.group(1)), int(m.group(2)), m.group(3))

    @classmethod
    def from_stream_id(cls, stream_id: str | bytes, epoch: str) -> EventId:
        if isinstance(stream_id, bytes):
            stream_id = stream_id.decode()
        ms, _, seq = stream_id.partition("-")
        return cls(int(ms), int(seq), epoch)


def split_stream_id(stream_id: str | bytes) -> tuple[int, int]:
    """``b"1700000000000-42"`` -> ``(1700000000000, 42)``."""
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode()
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True)
class StreamState:
    """What Redis says about a collection now (from the meta hash)."""

    epoch: str | None  # None: the collection has never been written (or its metadata expired)
    last_seq: int  # seq of the newest event ever appended in this epoch (0 if none)


def is_recoverable(last: EventId, state: StreamState, first_replayed_seq: int | None) -> bool:
    """True if replaying after ``last`` gives the client every event it missed.

    ``first_replayed_seq`` is the seq of the first retained entry after ``last`` (None if there is
    none). The rule: same epoch, the client is not ahead of Redis (ahead means Redis lost writes),
    and the next retained event is exactly ``last.seq + 1`` (otherwise events were trimmed away).
    """
    if state.epoch is None or state.epoch != last.epoch:
        return False
    if last.seq > state.last_seq:
        return False
    if first_replayed_seq is None:
        return last.seq == state.last_seq
    return first_replayed_seq == last.seq + 1
