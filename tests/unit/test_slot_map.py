"""The slot -> primary table of direct cluster routing (ingest/slot_map.py): parsing CLUSTER SLOTS,
lookups at range edges, MOVED patches, the refresh gate."""

from __future__ import annotations

from common.layout import collection_keys
from ingest.slot_map import (
    SLOTS,
    RefreshGate,
    SlotMap,
    SlotRange,
    parse_cluster_slots,
    slot_of,
    split_name,
)

# a Redis 7 reply as redis-py returns it without decoding: bytes hosts, node ids, metadata
REPLY = [
    [0, 5460, [b"127.0.0.1", 7000, b"id-a", []], [b"127.0.0.1", 7003, b"id-d", []]],
    [5461, 10922, [b"127.0.0.1", 7001, b"id-b", []], [b"127.0.0.1", 7004, b"id-e", []]],
    [10923, 16383, [b"127.0.0.1", 7002, b"id-c", []]],
]


def test_slot_of_is_crc16_xmodem_of_the_hash_tag() -> None:
    assert slot_of("123456789") == 0x31C3  # the cluster spec's CRC16 check value
    assert slot_of("foo") == 12182  # CLUSTER KEYSLOT foo
    keys = collection_keys("app", "posts")
    assert slot_of(keys.stream) == slot_of(keys.meta) == slot_of(keys.dedupe("x")) == slot_of(
        keys.channel
    ) == slot_of("app/posts")  # fmt: skip
    assert slot_of("{}x") != slot_of("{}y")  # an empty tag is not a tag


def test_parse_cluster_slots_ranges_primaries_and_replicas() -> None:
    ranges = parse_cluster_slots(REPLY, "10.0.0.9")
    assert ranges == [
        SlotRange(0, 5460, "127.0.0.1:7000", ("127.0.0.1:7003",)),
        SlotRange(5461, 10922, "127.0.0.1:7001", ("127.0.0.1:7004",)),
        SlotRange(10923, 16383, "127.0.0.1:7002", ()),
    ]


def test_unknown_endpoint_is_the_host_that_was_asked() -> None:
    reply = [[0, 16383, ["", 7000, "id"], ["?", 7001, "id2"]]]
    assert parse_cluster_slots(reply, "10.0.0.9") == [
        SlotRange(0, 16383, "10.0.0.9:7000", ("10.0.0.9:7001",))
    ]


def test_lookups_at_range_edges() -> None:
    table = SlotMap(parse_cluster_slots(REPLY, "h"))
    assert table.owner(0) == table.owner(5460) == "127.0.0.1:7000"
    assert table.owner(5461) == "127.0.0.1:7001"
    assert table.owner(16383) == "127.0.0.1:7002"
    assert table.covered() == SLOTS
    assert table.primaries() == {"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"}


def test_uncovered_slots_have_no_owner() -> None:
    table = SlotMap([SlotRange(100, 199, "a:1")])
    assert table.owner(99) is None and table.owner(200) is None
    assert table.owner(150) == "a:1"
    assert table.covered() == 100
    assert SlotMap().owner(0) is None


def test_moved_patches_one_slot_only() -> None:
    table = SlotMap(parse_cluster_slots(REPLY, "h"))
    table.moved(42, "127.0.0.1:7002")
    assert table.owner(42) == "127.0.0.1:7002"
    assert table.owner(41) == table.owner(43) == "127.0.0.1:7000"


def test_moved_to_a_new_node_makes_it_a_primary() -> None:
    table = SlotMap([SlotRange(0, SLOTS - 1, "a:1")])
    table.moved(7, "b:2")
    assert table.primaries() == {"a:1", "b:2"}


def test_replace_forgets_the_old_layout() -> None:
    table = SlotMap(parse_cluster_slots(REPLY, "h"))
    table.moved(1, "x:9")
    table.replace([SlotRange(0, SLOTS - 1, "127.0.0.1:7003", ("127.0.0.1:7000",))])
    assert table.owner(1) == table.owner(16000) == "127.0.0.1:7003"
    assert table.primaries() == {"127.0.0.1:7003"}


def test_nodes_lists_primaries_first_then_replicas_once() -> None:
    split = [
        SlotRange(0, 99, "a:1", ("r:1",)),
        SlotRange(100, 199, "b:2", ("r:2",)),
        SlotRange(200, 299, "a:1", ("r:1",)),  # a primary with two ranges
    ]
    assert SlotMap(split).nodes() == ["a:1", "b:2", "r:1", "r:2"]


def test_split_name_keeps_ipv6_hosts() -> None:
    assert split_name("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert split_name("::1:7000") == ("::1", 7000)


def test_refresh_gate_lets_one_refresh_through_per_interval() -> None:
    now = [100.0]
    gate = RefreshGate(1.0, clock=lambda: now[0])
    assert gate.claim()
    assert not gate.claim()  # a storm of errors in the same second: one refresh
    now[0] += 0.99
    assert not gate.claim()
    now[0] += 0.02
    assert gate.claim()
    assert not gate.claim()
