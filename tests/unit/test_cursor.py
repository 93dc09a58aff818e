"""The collection cursor and the replay plan (fanout/cursor.py): every gap, duplicate, epoch
change and divergence case, without Redis or sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.layout import DATA_FIELD, EventId, Notification, event_id
from fanout.cursor import Advance, CollectionCursor, Replay, StreamState, is_recoverable

E = "ep1"


def note(seq: int, ms: int | None = None, epoch: str = E) -> Notification:
    return Notification(epoch, 1000 + seq if ms is None else ms, seq, f"d{seq}".encode())


def entry(seq: int, ms: int | None = None) -> tuple[bytes, dict[bytes, bytes]]:
    ms = 1000 + seq if ms is None else ms
    return f"{ms}-{seq}".encode(), {DATA_FIELD: f"d{seq}".encode()}


def ids(step: Advance) -> list[str]:
    return [eid for batch in step.batches for eid, _ in batch]


def cursor_at(seq: int, epoch: str | None = E, max_frame_events: int = 100) -> CollectionCursor:
    c = CollectionCursor(max_frame_events)
    c.load(epoch, seq, 1000 + seq if seq else 0)
    return c


# ---------------------------------------------------------------- the rule


def test_recovery_rule() -> None:
    last = EventId(1010, 10, "e1")
    live = StreamState("e1", 15, 1015)
    assert is_recoverable(last, live, (1011, 11))
    assert not is_recoverable(last, live, (1012, 12)), "a gap (trimmed events) is not recovered"
    assert not is_recoverable(last, StreamState("e2", 15), (1011, 11)), "other epoch"
    assert not is_recoverable(last, StreamState(None, 0), None), "collection unknown to Redis"
    assert not is_recoverable(last, StreamState("e1", 9, 1009), None), "client ahead of Redis"
    assert is_recoverable(last, StreamState("e1", 10, 1010), None), "nothing new"
    assert not is_recoverable(last, StreamState("e1", 10, 1099), None), "its seq was reused"
    assert not is_recoverable(last, live, None), "newer events all expired"


# ---------------------------------------------------------------- live notifications


def test_in_order_notifications_are_delivered_in_frames_of_bounded_size() -> None:
    c = cursor_at(0, epoch=None, max_frame_events=3)
    step = c.on_notifications([note(s) for s in range(1, 8)])
    assert [len(b) for b in step.batches] == [3, 3, 1]
    assert ids(step) == [event_id(1000 + s, s, E) for s in range(1, 8)]
    assert step.epoch_changes == [(None, E)]
    assert (c.seq, c.ms, c.last_id) == (7, 1007, event_id(1007, 7, E))
    assert step.gap is None


def test_duplicates_are_dropped() -> None:
    c = cursor_at(5)
    step = c.on_notifications([note(4), note(5), note(6), note(6), note(3)])
    assert ids(step) == [event_id(1006, 6, E)]
    assert c.seq == 6 and not step.went_back


def test_a_seq_jump_is_a_gap_to_read_and_nothing_after_it_is_delivered() -> None:
    c = cursor_at(5)
    notes = [note(6), note(8), note(9)]
    step = c.on_notifications(notes)
    assert ids(step) == [event_id(1006, 6, E)]
    assert step.gap == notes[1:]
    assert c.seq == 6 and c.read_start() == "(1006-6"
    # the repair reads 7 and 8 from the stream, then the queued notifications follow
    repaired = c.on_entries([entry(7), entry(8)])
    assert ids(repaired) == [event_id(1007, 7, E), event_id(1008, 8, E)]
    rest = c.on_notifications(step.gap)
    assert ids(rest) == [event_id(1009, 9, E)]


def test_epoch_change_flushes_what_came_before_and_starts_over() -> None:
    c = cursor_at(5)
    step = c.on_notifications([note(6), note(1, 2000, "ep2"), note(2, 2001, "ep2")])
    assert [len(b) for b in step.batches] == [1, 2]
    assert step.epoch_changes == [(E, "ep2")]
    assert ids(step)[1:] == [event_id(2000, 1, "ep2"), event_id(2001, 2, "ep2")]
    assert c.last_id == event_id(2001, 2, "ep2")


def test_epoch_change_into_a_gap() -> None:
    c = cursor_at(5)
    step = c.on_notifications([note(3, 2000, "ep2")])
    assert step.epoch_changes == [(E, "ep2")] and step.gap is not None and not step.batches
    assert c.seq == 0 and c.read_start() == "-"


def test_redis_going_back_in_history_is_followed() -> None:
    """A failover without WAIT lost seqs 9-10; the new master reuses seq 9 for a new event."""
    c = cursor_at(10)
    step = c.on_notifications([note(9, 5000), note(10, 5001)])
    assert step.went_back == [(10, 9)]
    assert ids(step) == [event_id(5000, 9, E), event_id(5001, 10, E)]
    assert (c.seq, c.ms) == (10, 5001)


def test_entries_skip_duplicates_and_report_trimmed_jumps() -> None:
    c = cursor_at(5)
    step = c.on_entries([entry(4), entry(5), entry(9), entry(10)])
    assert ids(step) == [event_id(1009, 9, E), event_id(1010, 10, E)]
    assert step.trimmed == [(5, 9)]
    assert not step.gap
    gone_back = c.on_entries([entry(8, 9000)])
    assert gone_back.went_back == [(10, 8)] and ids(gone_back) == [event_id(9000, 8, E)]


def test_entries_on_an_empty_cursor_report_no_trim() -> None:
    c = cursor_at(0)
    step = c.on_entries([entry(40), entry(41)])
    assert len(ids(step)) == 2 and step.trimmed == []


def test_meta_epoch_after_a_reconnect() -> None:
    c = cursor_at(5)
    assert c.on_meta_epoch(None) is None and c.seq == 5
    assert c.on_meta_epoch(E) is None and c.seq == 5
    assert c.on_meta_epoch("ep2") == (E, "ep2")
    assert (c.epoch, c.seq, c.last_id) == ("ep2", 0, "0")


def test_sweep_and_replica_checks() -> None:
    c = cursor_at(5)
    assert not c.is_behind(None, 0)
    assert not c.is_behind(E, 5)
    assert c.is_behind(E, 6)
    assert c.is_behind("ep2", 1)
    assert c.has_reached(EventId(1005, 5, E)) and not c.has_reached(EventId(1007, 7, E))
    assert c.has_reached(EventId(1, 99, "other")), "another history: waiting is pointless"
    assert not cursor_at(0, epoch=None).has_reached(EventId(1, 1, E))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["ok", "drop", "dup", "late"]), min_size=1, max_size=60),
    st.integers(1, 7),
)
def test_any_loss_or_duplication_of_notifications_delivers_each_event_once(
    fate: list[str], frame: int
) -> None:
    """Simulate the hub: notifications dropped, repeated or late; gaps read from the stream."""
    stream = [entry(s) for s in range(1, len(fate) + 1)]
    c = cursor_at(0, epoch=E, max_frame_events=frame)
    delivered: list[str] = []
    late: list[Notification] = []

    def feed(notes: list[Notification]) -> None:
        while notes:
            step = c.on_notifications(notes)
            delivered.extend(ids(step))
            notes = []
            if step.gap is not None:  # read the stream up to what has been appended
                upto = max(n.seq for n in step.gap)
                start = c.seq
                delivered.extend(ids(c.on_entries(stream[start:upto])))
                notes = step.gap

    for seq, what in enumerate(fate, start=1):
        n = note(seq)
        if what == "ok":
            feed([n])
        elif what == "dup":
            feed([n, n])
        elif what == "late":
            late.append(n)
        if what != "late" and late:
            feed(late)
            late = []
    feed(late)
    # the sweep's safety net catches what no later notification revealed
    if c.is_behind(E, len(stream)):
        delivered.extend(ids(c.on_entries(stream[c.seq :])))
    assert delivered == [event_id(1000 + s, s, E) for s in range(1, len(fate) + 1)]


# ---------------------------------------------------------------- replay


def replay(
    c: CollectionCursor, last_id: str | None, stream: list[Any], page: int = 2
) -> tuple[Replay, list[str], list[tuple[str, str]]]:
    """Run a replay against an in-memory stream; returns the plan, sent ids and the ranges."""
    plan = Replay.parse(last_id)
    plan.start(c)
    sent: list[str] = []
    ranges: list[tuple[str, str]] = []
    while (rng := plan.next_range(c)) is not None:
        ranges.append(rng)
        lo = rng[0]
        after = (0, 0) if lo == "-" else tuple(int(x) for x in lo[1:].split("-"))
        hi = tuple(int(x) for x in rng[1].split("-"))
        rows = [e for e in stream if after < tuple(int(x) for x in e[0].split(b"-")) <= hi]
        sent.extend(eid for eid, _ in plan.on_page(c, rows[:page]))
    return plan, sent, ranges


STREAM = [entry(s) for s in range(1, 8)]


@pytest.mark.parametrize("last_id", [None, "", "$"])
def test_no_last_id_joins_live_without_reading(last_id: str | None) -> None:
    plan, sent, ranges = replay(cursor_at(7), last_id, STREAM)
    assert plan.live and plan.recovered and sent == [] and ranges == []


def test_zero_replays_everything_retained_in_pages() -> None:
    plan, sent, ranges = replay(cursor_at(7), "0", STREAM, page=3)
    assert plan.recovered and not plan.live
    assert sent == [event_id(1000 + s, s, E) for s in range(1, 8)]
    assert ranges[0] == ("-", "1007-7") and len(ranges) == 3


def test_zero_on_an_empty_collection_reads_nothing() -> None:
    plan, sent, ranges = replay(cursor_at(0, epoch=None), "0", [])
    assert plan.recovered and sent == [] and ranges == []


def test_after_an_id_replays_the_rest_recovered() -> None:
    plan, sent, ranges = replay(cursor_at(7), event_id(1004, 4, E), STREAM)
    assert plan.recovered
    assert sent == [event_id(1000 + s, s, E) for s in (5, 6, 7)]
    assert ranges[0] == ("(1004-4", "1007-7")


def test_the_newest_id_joins_live_recovered() -> None:
    plan, sent, _ = replay(cursor_at(7), event_id(1007, 7, E), STREAM)
    assert plan.live and plan.recovered and sent == []


@pytest.mark.parametrize(
    "last_id, why",
    [
        (event_id(1007, 7, "ep2"), "another epoch: Redis lost data"),
        (event_id(1009, 9, E), "ahead of Redis"),
        (event_id(1999, 7, E), "its seq was reused for another event"),
        ("not-an-id", "not an id of this service"),
        ("1-2@e@f", "malformed"),
    ],
)
def test_unrecoverable_ids_replay_everything_retained(last_id: str, why: str) -> None:
    plan, sent, _ = replay(cursor_at(7), last_id, STREAM)
    assert not plan.recovered, why
    assert sent == [event_id(1000 + s, s, E) for s in range(1, 8)], why


def test_trimmed_events_after_the_id_are_not_recovered() -> None:
    trimmed = [entry(s) for s in range(4, 8)]  # 1-3 gone
    plan, sent, _ = replay(cursor_at(7), event_id(1001, 1, E), trimmed)
    assert not plan.recovered
    assert sent == [event_id(1000 + s, s, E) for s in range(4, 8)]


def test_everything_after_the_id_trimmed_is_not_recovered() -> None:
    plan, sent, _ = replay(cursor_at(7), event_id(1001, 1, E), [])
    assert not plan.recovered and sent == []


def test_events_trimmed_between_pages_are_not_recovered() -> None:
    c = cursor_at(7)
    plan = Replay.parse(event_id(1001, 1, E))
    plan.start(c)
    assert plan.next_range(c) == ("(1001-1", "1007-7")
    assert len(plan.on_page(c, [entry(2), entry(3)])) == 2 and plan.recovered
    assert plan.next_range(c) == ("(1003-3", "1007-7")
    assert plan.on_page(c, []) == [], "4-7 trimmed meanwhile"
    assert not plan.recovered and plan.next_range(c) is None


def test_epoch_change_during_a_replay_starts_over_not_recovered() -> None:
    c = cursor_at(7)
    plan = Replay.parse(event_id(1001, 1, E))
    plan.start(c)
    assert plan.next_range(c) is not None
    c.on_notifications([note(1, 3000, "ep2"), note(2, 3001, "ep2")])  # while XRANGE was out
    assert plan.on_page(c, [entry(2)]) == [], "a page of the old history is dropped"
    assert plan.next_range(c) == ("-", "3001-2")
    events = plan.on_page(c, [entry(1, 3000), entry(2, 3001)])
    assert [eid for eid, _ in events] == [event_id(3000, 1, "ep2"), event_id(3001, 2, "ep2")]
    assert not plan.recovered and plan.next_range(c) is None


def test_live_events_during_a_replay_extend_it_to_the_new_cursor() -> None:
    c = cursor_at(5)
    plan = Replay.parse(event_id(1003, 3, E))
    plan.start(c)
    assert plan.next_range(c) == ("(1003-3", "1005-5")
    c.on_notifications([note(6), note(7)])
    plan.on_page(c, [entry(4), entry(5)])
    assert plan.next_range(c) == ("(1005-5", "1007-7")
    plan.on_page(c, [entry(6), entry(7)])
    assert plan.recovered and plan.next_range(c) is None
