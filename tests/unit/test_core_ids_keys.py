from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.layout import (
    EventId,
    InvalidEventId,
    InvalidName,
    check_name,
    collection_keys,
    parse_channel,
)


def test_event_id_roundtrip() -> None:
    eid = EventId.parse("1700000000000-42@ab12cd34")
    assert (eid.ms, eid.seq, eid.epoch) == (1700000000000, 42, "ab12cd34")
    assert str(eid) == "1700000000000-42@ab12cd34"
    assert eid.stream_id == "1700000000000-42"


@pytest.mark.parametrize("bad", ["", "0", "$", "1-2", "1-2@", "a-b@c", "1-2@x y", "1-2@e@f"])
def test_event_id_rejects_foreign_ids(bad: str) -> None:
    with pytest.raises(InvalidEventId):
        EventId.parse(bad)


@given(
    st.integers(0, 10**14), st.integers(0, 10**18), st.from_regex(r"[a-z0-9]{1,32}", fullmatch=True)
)
def test_event_id_parse_format_inverse(ms: int, seq: int, epoch: str) -> None:
    eid = EventId(ms, seq, epoch)
    assert EventId.parse(str(eid)) == eid


def test_keys_share_one_hash_tag_per_collection() -> None:
    k = collection_keys("postgres", "posts", "vski")
    tag = "{postgres/posts}"
    for key in (k.stream, k.meta, k.channel, k.dedupe("abc"), k.group_registry()):
        assert tag in key
        assert key.count("{") == 1 and key.count("}") == 1
    assert len({k.stream, k.meta, k.channel, k.dedupe("abc")}) == 4
    assert parse_channel(k.channel, "vski") == ("postgres", "posts")
    assert parse_channel("other:{a/b}:n", "vski") is None


def test_databases_do_not_share_keys() -> None:
    a = collection_keys("db1", "posts")
    b = collection_keys("db2", "posts")
    assert a.stream != b.stream and a.channel != b.channel


@pytest.mark.parametrize(
    "name", ["", "a{b", "a}b", "a/b", "a:b", "a b", ".hidden", "-x", "x" * 65, "é", "a\nb"]
)
def test_invalid_names_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        check_name("collection", name)


@given(st.text(max_size=80))
def test_any_accepted_name_keeps_the_layout(name: str) -> None:
    try:
        check_name("collection", name)
    except InvalidName:
        return
    k = collection_keys("db", name)
    assert k.stream.count("{") == 1 and k.stream.count("}") == 1
    assert parse_channel(k.channel) == ("db", name)
