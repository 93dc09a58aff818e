"""Where a node stands in one collection, and how a subscriber gets from its lastId to there.

This is the sans-I/O core of live delivery (in the manner of ``websockets``' protocol module):
it takes notifications and stream entries in and says what to do — deliver these events, drop
that one as already delivered, read this gap from the stream, the epoch changed, Redis went
back in history — and it gives the replay plan for a SUBSCRIBE's ``lastId``. The hub
(``fanout/hub.py``) does the reading and writing; nothing here awaits or touches Redis, so
every gap, duplicate, epoch and divergence case has a millisecond unit test
(``tests/unit/test_cursor.py``).

The recovery rule (:func:`is_recoverable`) lives here and only here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.layout import (
    DATA_FIELD,
    EventId,
    InvalidEventId,
    Notification,
    event_id,
    split_stream_id,
    stream_id,
)

Event = tuple[str, bytes]  # (client-visible id, data JSON)


# ---------------------------------------------------------------- the recovery rule


@dataclass(frozen=True, slots=True)
class StreamState:
    """What Redis (as this node last saw it) says about a collection."""

    epoch: str | None  # None: never written, or its metadata expired
    last_seq: int  # seq of the newest event of this epoch (0 if none)
    last_ms: int = 0  # its time


def _same_history(last: EventId, state: StreamState) -> bool:
    """Same epoch and the client is not ahead of Redis (ahead: Redis lost writes it had)."""
    return state.epoch is not None and state.epoch == last.epoch and last.seq <= state.last_seq


def is_recoverable(last: EventId, state: StreamState, first_after: tuple[int, int] | None) -> bool:
    """True if replaying after ``last`` gives the client every event it missed.

    ``first_after`` is the (ms, seq) of the first retained entry after ``last``, None if there
    is none. The rule: same epoch, not ahead of Redis, and the next retained event is exactly
    ``last.seq + 1``; with nothing after it, ``last`` must be the newest event itself (same seq
    *and* time: a failover without WAIT can reuse a seq for another event).
    """
    if not _same_history(last, state):
        return False
    if first_after is None:
        return last.seq == state.last_seq and last.ms == state.last_ms
    return first_after[1] == last.seq + 1


# ---------------------------------------------------------------- live delivery


@dataclass(slots=True)
class Advance:
    """What the hub must do after feeding notifications or entries to the cursor."""

    batches: list[list[Event]] = field(default_factory=list)  # deliver, in order
    # notifications from the first missing seq on: read the stream up to them, then feed them
    gap: list[Notification] | None = None
    epoch_changes: list[tuple[str | None, str]] = field(default_factory=list)  # (old, new)
    went_back: list[tuple[int, int]] = field(default_factory=list)  # (cursor seq, seq)
    trimmed: list[tuple[int, int]] = field(default_factory=list)  # (after seq, next seq)

    @property
    def events(self) -> int:
        return sum(len(b) for b in self.batches)


class CollectionCursor:
    """The (epoch, seq, ms) of the last event this node delivered live for one collection."""

    __slots__ = ("epoch", "max_frame_events", "ms", "seq")

    def __init__(self, max_frame_events: int = 100) -> None:
        self.epoch: str | None = None
        self.seq = 0
        self.ms = 0
        self.max_frame_events = max_frame_events

    def load(self, epoch: str | None, seq: int, ms: int) -> None:
        """Start from the collection's meta hash (epoch None: nothing written yet)."""
        self.epoch = epoch
        self.seq, self.ms = (seq, ms) if epoch is not None else (0, 0)

    @property
    def state(self) -> StreamState:
        return StreamState(self.epoch, self.seq, self.ms)

    @property
    def last_id(self) -> str:
        """The newest event delivered, as SUBSCRIBED's ``last_id`` (``"0"`` if none)."""
        if self.epoch is None or self.seq == 0:
            return "0"
        return event_id(self.ms, self.seq, self.epoch)

    @property
    def position(self) -> str:
        return stream_id(self.ms, self.seq)

    def read_start(self) -> str:
        """XRANGE start for what comes after the cursor."""
        return f"({self.position}" if self.seq else "-"

    def _new_epoch(self, epoch: str, out: Advance) -> None:
        out.epoch_changes.append((self.epoch, epoch))
        self.epoch, self.seq, self.ms = epoch, 0, 0

    def _step(self, seq: int, ms: int, out: Advance) -> bool:
        """False if (seq, ms) was delivered already. An event with a passed seq but a later
        time means Redis lost its newest writes (failover without WAIT) and reused their seqs:
        follow Redis from there; the lost events are gone and resumes from their ids are
        reported as not recovered."""
        if seq <= self.seq:
            if ms <= self.ms:
                return False
            out.went_back.append((self.seq, seq))
            self.seq, self.ms = seq - 1, ms
        return True

    def _append(self, batch: list[Event], out: Advance, eid: str, data: bytes) -> list[Event]:
        batch.append((eid, data))
        if len(batch) >= self.max_frame_events:
            out.batches.append(batch)
            return []
        return batch

    def on_notifications(self, notes: Sequence[Notification]) -> Advance:
        """Live notifications of this collection, in arrival order."""
        out = Advance()
        batch: list[Event] = []
        for i, note in enumerate(notes):
            if note.epoch != self.epoch:
                if batch:
                    out.batches.append(batch)
                    batch = []
                self._new_epoch(note.epoch, out)
            if not self._step(note.seq, note.ms, out):
                continue
            if note.seq != self.seq + 1:
                out.gap = list(notes[i:])
                break
            self.seq, self.ms = note.seq, note.ms
            batch = self._append(batch, out, note.event_id, note.data)
        if batch:
            out.batches.append(batch)
        return out

    def on_entries(self, entries: Iterable[tuple[Any, Any]]) -> Advance:
        """Stream entries read after the cursor (gap repair): ``(stream id, fields)``. A jump
        in seq here is not a gap to read but events trimmed by retention before we got them."""
        out = Advance()
        batch: list[Event] = []
        epoch = self.epoch or ""
        for sid, fields in entries:
            ms, seq = split_stream_id(sid)
            if not self._step(seq, ms, out):
                continue
            if seq != self.seq + 1 and self.seq:
                out.trimmed.append((self.seq, seq))
            self.seq, self.ms = seq, ms
            batch = self._append(batch, out, event_id(ms, seq, epoch), fields[DATA_FIELD])
        if batch:
            out.batches.append(batch)
        return out

    def on_meta_epoch(self, epoch: str | None) -> tuple[str | None, str] | None:
        """The epoch Redis has now (after a reconnect). Returns (old, new) if it changed; the
        cursor then starts over. None in Redis: nothing yet, the next notification says."""
        if epoch is None or epoch == self.epoch:
            return None
        old = self.epoch
        self.epoch, self.seq, self.ms = epoch, 0, 0
        return old, epoch

    def is_behind(self, epoch: str | None, seq: int) -> bool:
        """Redis's meta (epoch, seq) shows events this cursor has not delivered (sweep)."""
        return epoch is not None and (epoch != self.epoch or seq > self.seq)

    def has_reached(self, last: EventId) -> bool:
        """A replica-reading node has applied the client's ``last`` (or another history)."""
        return self.epoch is not None and (self.epoch != last.epoch or self.seq >= last.seq)


# ---------------------------------------------------------------- replay after a lastId


class Replay:
    """The way of one SUBSCRIBE from its ``lastId`` to the live cursor.

    Use: ``plan = Replay.parse(last_id)``; (a replica-reading node may wait for
    ``plan.after``); ``plan.start(cursor)``; then loop ``rng = plan.next_range(cursor)`` — None
    means caught up: join the live set *without awaiting in between* — read the range, and
    ``plan.on_page(cursor, entries)`` gives the events to send. ``plan.recovered`` says at the
    end whether the client got every event after its lastId.
    """

    __slots__ = ("_decided", "after", "epoch", "live", "ms", "recovered", "seq")

    def __init__(self, after: EventId | None, *, live: bool, recovered: bool) -> None:
        self.after = after  # the client's position, when it sent one we can read
        self.live = live  # join at once, read nothing
        self.recovered = recovered
        self.epoch: str | None = None
        self.seq, self.ms = 0, 0
        self._decided = after is None  # recovery already known without reading

    @classmethod
    def parse(cls, last_id: str | None) -> Replay:
        if last_id in (None, "", "$"):
            return cls(None, live=True, recovered=True)
        if last_id == "0":
            return cls(None, live=False, recovered=True)  # everything retained
        try:
            return cls(EventId.parse(last_id), live=False, recovered=True)
        except InvalidEventId:
            return cls(None, live=False, recovered=False)  # not ours: replay everything

    def start(self, cursor: CollectionCursor) -> None:
        self.epoch = cursor.epoch
        last = self.after
        if last is None:
            return
        state = cursor.state
        if not _same_history(last, state):
            self._everything()
        elif last.seq == state.last_seq:
            if is_recoverable(last, state, None):
                self.live = True
            else:
                self._everything()
        else:
            self.seq, self.ms = last.seq, last.ms

    def _everything(self) -> None:
        self.recovered = False
        self._decided = True
        self.seq, self.ms = 0, 0

    def next_range(self, cursor: CollectionCursor) -> tuple[str, str] | None:
        """The next XRANGE (start, end) to read, or None when caught up with the cursor."""
        if self.live:
            return None
        if cursor.epoch != self.epoch:  # Redis lost data during the replay: start over
            self.epoch = cursor.epoch
            self._everything()
        if self.seq >= cursor.seq:
            return None
        start = f"({stream_id(self.ms, self.seq)}" if self.seq else "-"
        return start, cursor.position

    def on_page(self, cursor: CollectionCursor, entries: Sequence[tuple[Any, Any]]) -> list[Event]:
        """Events of one XRANGE page to send (empty if the page is void or out of date)."""
        if cursor.epoch != self.epoch:
            return []  # next_range starts over
        if not self._decided:
            self._decided = True
            assert self.after is not None
            first = split_stream_id(entries[0][0]) if entries else None
            self.recovered = is_recoverable(self.after, cursor.state, first)
        if not entries:
            # the rest up to the cursor is no longer retained
            if self.seq and self.seq < cursor.seq:
                self.recovered = False
            self.seq, self.ms = cursor.seq, cursor.ms
            return []
        epoch = self.epoch or ""
        events = []
        for sid, fields in entries:
            ms, seq = split_stream_id(sid)
            events.append((event_id(ms, seq, epoch), fields[DATA_FIELD]))
        self.ms, self.seq = split_stream_id(entries[-1][0])
        return events
