"""Hidden fields and ``on_delete = "all"`` on the raw record bytes stored by ingest."""

from __future__ import annotations

import json

import pytest

from common.policy import Policy, parse_policy
from common.policy.records import RecordShaper

POLICY = """
version = 1
[[collection]]
name = "notes"
hidden = ["secret", "meta.token"]
[[collection]]
name = "plain"
[[collection]]
name = "gone"
hidden = ["secret"]
on_delete = "all"
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY, "p")


def test_nothing_hidden_returns_the_same_bytes(policy: Policy) -> None:
    raw = b'{"id":"1","secret":"s"}'
    assert policy.strip_record("db", "plain", "create", raw, "1") is raw
    assert policy.strip_record("db", "unlisted", "create", raw, "1") is raw
    assert Policy.open().strip_record("db", "notes", "delete", raw, "1") is raw
    clean = b'{"id": "1",  "x": 1.50}'
    assert policy.strip_record("db", "notes", "update", clean, "1") is clean  # no decode at all
    mention = b'{"id":"1","x":"secret"}'  # the name as a value: decoded, nothing removed
    assert policy.strip_record("db", "notes", "update", mention, "1") is mention


def test_hidden_fields_are_removed(policy: Policy) -> None:
    raw = b'{"id":"1","secret":"s","b":2,"meta":{"token":"t","keep":1},"a":[1]}'
    out = policy.strip_record("db", "notes", "create", raw, "1")
    assert out == b'{"id":"1","b":2,"meta":{"keep":1},"a":[1]}'
    # a key spelled with escapes is still that key
    sneaky = b'{"id":"1","s\\u0065cret":"s","meta":{"tok\\u0065n":"t"}}'
    assert json.loads(policy.strip_record("db", "notes", "create", sneaky, "1")) == {
        "id": "1",
        "meta": {},
    }
    dup = b'{"id":"1","secret":"a","secret":"b"}'
    assert b"secret" not in policy.strip_record("db", "notes", "create", dup, "1")
    # on_delete = "filter": a delete keeps its record, minus hidden fields
    assert policy.strip_record("db", "notes", "delete", raw, "1") == out


def test_null_and_non_object_records(policy: Policy) -> None:
    for raw in (b"null", b"[1,2]", b'"secret"', b"5"):
        assert policy.strip_record("db", "notes", "update", raw, "1") is raw


def test_invalid_json_is_never_stored_with_hidden_fields(policy: Policy) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        policy.strip_record("db", "notes", "create", b'{"secret": ', "1")


def test_on_delete_all_keeps_only_the_id(policy: Policy) -> None:
    raw = b'{"id":"r1","secret":"s","title":"x"}'
    assert policy.strip_record("db", "gone", "delete", raw, "other") == b'{"id":"r1"}'
    assert policy.strip_record("db", "gone", "delete", b'{"title":"x"}', "r2") == b'{"id":"r2"}'
    assert policy.strip_record("db", "gone", "delete", b"null", "r3") == b'{"id":"r3"}'
    null = b"null"
    assert policy.strip_record("db", "gone", "delete", null, None) is null
    assert policy.strip_record("db", "gone", "delete", b'{"title":"x"}', None) == b"{}"
    assert policy.strip_record("db", "gone", "update", raw, "r1") == b'{"id":"r1","title":"x"}'


def test_shaper_directly() -> None:
    shaper = RecordShaper(("a.b.c",))
    assert shaper.shape("create", b'{"a":{"b":{"c":1,"d":2}}}', None) == b'{"a":{"b":{"d":2}}}'
    raw = b'{"a":{"b":"c"}}'
    assert shaper.shape("create", raw, None) is raw
    assert RecordShaper().is_identity and not RecordShaper((), "all").is_identity
