"""The consumer-group ledger (fanout/group_ledger.py): who holds which event, in-flight limits,
hand-off on leave and reclaim, ACK checks — without Redis or sockets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ClientError
from fanout.group_ledger import RELEASED_MEMORY, GroupLedger

EPOCH = "ep"


@dataclass(eq=False)
class Conn:
    name: str
    closing: bool = False


def entries(*seqs: int) -> list[tuple[str, bytes]]:
    return [(f"{1000 + s}-{s}", b"{}") for s in seqs]


def cid(seq: int) -> str:
    return f"{1000 + seq}-{seq}@{EPOCH}"


def ledger(limit: int = 3) -> tuple[GroupLedger, list[Conn]]:
    led = GroupLedger("g", "jobs", limit)
    conns = [Conn(n) for n in ("a", "b", "c")]
    for i, c in enumerate(conns):
        assert led.add(c, f"node:{i}")
    return led, conns


def test_a_repeated_join_is_not_a_second_member() -> None:
    led, (a, _b, _c) = ledger()
    assert not led.add(a, "node:9")
    assert len(led.holders) == 3


def test_round_robin_skips_members_without_free_slots() -> None:
    led, (a, b, c) = ledger(limit=1)
    first = led.next_holder()
    assert first is not None and first.member is a
    led.hand_out(first, entries(1), EPOCH, 0.0, timeout=False)
    order = [led.next_holder() for _ in range(3)]
    assert [h.member if h else None for h in order] == [b, c, b], "a is full"
    b.closing = True
    holder = led.next_holder()
    assert holder is not None and holder.member is c, "a closing member gets nothing more"
    c.closing = True
    assert led.next_holder() is None


def test_hand_out_gives_client_ids_and_raises_the_floor() -> None:
    led, (a, _b, _c) = ledger()
    holder = led.by_member[a]
    events = led.hand_out(holder, entries(2, 5), EPOCH, 1.0, timeout=False)
    assert [e for e, _ in events] == [cid(2), cid(5)]
    assert set(holder.inflight) == {"1002-2", "1005-5"}
    assert led.free(holder) == 1
    assert led.floor == (1005, 5)


def test_ack_frees_a_slot_and_a_second_ack_is_refused() -> None:
    led, (a, b, _c) = ledger()
    led.hand_out(led.by_member[a], entries(1), EPOCH, 0.0, timeout=False)
    assert led.ack(a, cid(1)) == "1001-1"
    assert led.free(led.by_member[a]) == 3
    with pytest.raises(ClientError) as exc:
        led.ack(a, cid(1))
    assert exc.value.code == "invalid_ack"
    for bad_member, bad_id in ((b, cid(1)), (a, "garbage"), (Conn("x"), cid(1))):
        with pytest.raises(ClientError) as exc:
            led.ack(bad_member, bad_id)
        assert exc.value.code == "invalid_ack"


def test_ack_of_an_id_with_the_wrong_epoch_is_refused() -> None:
    led, (a, _b, _c) = ledger()
    led.hand_out(led.by_member[a], entries(1), EPOCH, 0.0, timeout=False)
    with pytest.raises(ClientError):
        led.ack(a, "1001-1@other")


def test_entry_moved_to_another_member_keeps_a_late_ack_valid() -> None:
    led, (a, b, _c) = ledger()
    ha, hb = led.by_member[a], led.by_member[b]
    led.hand_out(ha, entries(1), EPOCH, 0.0, timeout=False)
    led.hand_out(hb, entries(1), EPOCH, 40.0, timeout=True)  # reclaimed for b
    assert "1001-1" not in ha.inflight and ha.stalled, "it held the entry too long"
    assert led.holder_of["1001-1"] is hb
    assert led.free(ha) == 1, "a stalled member gets one event at a time"
    led.ack(a, cid(1))  # late, but it did the work: accepted
    assert not ha.stalled and led.free(ha) == 3
    led.ack(b, cid(1))
    assert "1001-1" not in led.holder_of


def test_remove_drops_what_it_held_from_the_index() -> None:
    led, (a, b, _c) = ledger()
    led.hand_out(led.by_member[a], entries(1, 2), EPOCH, 0.0, timeout=False)
    led.hand_out(led.by_member[b], entries(3), EPOCH, 0.0, timeout=False)
    holder = led.remove(a)
    assert holder is not None and holder.gone and set(holder.inflight) == {"1001-1", "1002-2"}
    assert set(led.holder_of) == {"1003-3"}
    assert led.remove(a) is None
    assert holder.free(3) == 0
    with pytest.raises(ClientError):
        led.ack(a, cid(1))


def test_forget_trimmed_entries() -> None:
    led, (a, _b, _c) = ledger()
    led.hand_out(led.by_member[a], entries(1, 2), EPOCH, 0.0, timeout=False)
    led.forget(["1001-1", "9-9"])
    assert set(led.by_member[a].inflight) == {"1002-2"}
    led.ack(a, cid(1))  # still accepted late


def test_overdue_and_reconcile_with_redis() -> None:
    led, (a, b, _c) = ledger()
    led.hand_out(led.by_member[a], entries(1, 2), EPOCH, 10.0, timeout=False)
    led.hand_out(led.by_member[b], entries(3), EPOCH, 50.0, timeout=False)
    assert [h.member for h in led.overdue(limit=20.0)] == [a]
    lost = led.reconcile(led.by_member[a], owned={"1002-2"})  # 1 reclaimed by another node
    assert lost == ["1001-1"]
    ha = led.by_member[a]
    assert set(ha.inflight) == {"1002-2"} and ha.stalled
    assert "1001-1" not in led.holder_of


def test_reset_after_the_group_was_recreated() -> None:
    led, (a, b, _c) = ledger()
    led.hand_out(led.by_member[a], entries(1), EPOCH, 0.0, timeout=False)
    led.hand_out(led.by_member[b], entries(2), EPOCH, 0.0, timeout=False)
    led.reset()
    assert led.holder_of == {} and all(not h.inflight for h in led.holders)
    led.ack(a, cid(1))  # late ACKs still accepted


def test_released_memory_is_bounded() -> None:
    led, (a, _b, _c) = ledger(limit=RELEASED_MEMORY + 10)
    ha = led.by_member[a]
    n = RELEASED_MEMORY + 5
    led.hand_out(ha, entries(*range(1, n + 1)), EPOCH, 0.0, timeout=False)
    led.reset()
    assert len(ha.released) == RELEASED_MEMORY
    with pytest.raises(ClientError):
        led.ack(a, cid(1)), "the oldest released ids are forgotten"
    led.ack(a, cid(n))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["read", "ack", "leave", "join", "reclaim"]), st.integers(0, 3)),
        max_size=80,
    ),
    st.integers(1, 4),
)
def test_no_entry_is_held_by_two_members_and_limits_hold(
    ops: list[tuple[str, int]], limit: int
) -> None:
    """Random joins, reads, ACKs, leaves and reclaims: the index and the members agree."""
    led = GroupLedger("g", "jobs", limit)
    conns = [Conn(str(i)) for i in range(4)]
    next_seq = 1
    for op, who in ops:
        conn = conns[who]
        if op == "join":
            led.add(conn, f"node:{who}")
        elif op == "leave":
            led.remove(conn)
        elif op == "read" and (holder := led.next_holder()) is not None:
            room = led.free(holder)
            led.hand_out(
                holder, entries(*range(next_seq, next_seq + room)), EPOCH, 0.0, timeout=False
            )
            next_seq += room
        elif op == "ack" and conn in led.by_member and led.by_member[conn].inflight:
            sid = next(iter(led.by_member[conn].inflight))
            led.ack(conn, led.by_member[conn].inflight[sid][0])
        elif op == "reclaim" and led.holder_of and (target := led.next_holder()) is not None:
            sid = next(iter(led.holder_of))
            led.hand_out(target, [(sid, b"{}")], EPOCH, 1.0, timeout=True)
        held = [sid for h in led.holders for sid in h.inflight]
        assert len(held) == len(set(held)), "an entry held by two members"
        assert set(held) == set(led.holder_of)
        for sid, holder in led.holder_of.items():
            assert sid in holder.inflight and not holder.gone
        for h in led.holders:
            assert len(h.inflight) <= limit
