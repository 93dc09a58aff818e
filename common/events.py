"""How an event sits in Redis, shared by the writer (ingest) and the readers (fanout).

- Stream entry: id ``<ms>-<seq>`` (see :mod:`common.ids`), one field ``d`` = the event's ``data``
  JSON (``{"action":...,"record":...}``), stored pre-encoded so fanout forwards bytes as they are.
- Notification on the collection's sharded channel, published by the same append script:
  ``<epoch> <ms>-<seq> <data>``. Fanout delivers live events from it without reading the stream;
  the dense seq tells it when a notification was missed, and it then reads the gap from the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

DATA_FIELD = b"d"


@dataclass(frozen=True, slots=True)
class Notification:
    epoch: str
    ms: int
    seq: int
    data: bytes

    @property
    def stream_id(self) -> str:
        return f"{self.ms}-{self.seq}"

    @property
    def event_id(self) -> str:
        return f"{self.ms}-{self.seq}@{self.epoch}"


class BadNotification(ValueError):
    pass


def parse_notification(payload: bytes) -> Notification:
    try:
        epoch, sid, data = payload.split(b" ", 2)
        ms, _, seq = sid.partition(b"-")
        return Notification(epoch.decode(), int(ms), int(seq), data)
    except (ValueError, UnicodeDecodeError):
        raise BadNotification(f"not an event notification: {payload[:80]!r}") from None


def format_notification(epoch: str, stream_id: str, data: bytes) -> bytes:
    return epoch.encode() + b" " + stream_id.encode() + b" " + data
