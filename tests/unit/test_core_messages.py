"""Unit tests of webhook decoding (common/messages.py) and shared settings (common/config.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import ConfigError, load_common
from common.messages import MessageError, Webhook, decode_webhook


def hook(**fields: object) -> bytes:
    base: dict[str, object] = {
        "database": "postgres",
        "collection": "posts",
        "id": "rec_1",
        "action": "create",
        "timestamp": "2026-11-27T10:00:00.000Z",
        "record": {"id": "rec_1", "title": "Hello"},
    }
    base.update(fields)
    kept = {k: v for k, v in base.items() if v is not ...}
    return json.dumps(kept, separators=(",", ":")).encode()


def refused(body: bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode_webhook(body)
    return info.value


# ---------------------------------------------------------------- webhook: accepted


def test_decodes_the_protocol_example() -> None:
    w = decode_webhook(hook())
    assert w == Webhook(
        "postgres",
        "posts",
        "create",
        "rec_1",
        "2026-11-27T10:00:00.000Z",
        b'{"id":"rec_1","title":"Hello"}',
    )
    assert json.loads(w.data_json()) == {
        "action": "create",
        "record": {"id": "rec_1", "title": "Hello"},
    }


@pytest.mark.parametrize(
    ("sent", "normalised"),
    [
        ("create", "create"),
        ("update", "update"),
        ("delete", "delete"),
        ("INSERT", "create"),
        ("UPDATE", "update"),
        ("DELETE", "delete"),
        ("Insert", "create"),
        ("CREATE", "create"),
    ],
)
def test_action_is_normalised(sent: str, normalised: str) -> None:
    record = None if normalised == "delete" else {"id": "r"}
    assert decode_webhook(hook(action=sent, record=record)).action == normalised


@pytest.mark.parametrize("record", [None, ...])
def test_delete_without_record(record: object) -> None:
    w = decode_webhook(hook(action="DELETE", record=record))
    assert w.action == "delete"
    assert w.record == b"null"
    assert json.loads(w.data_json()) == {"action": "delete", "record": None}


def test_defaults_and_integer_id() -> None:
    w = decode_webhook(b'{"collection":"posts","action":"update","id":42,"record":{"a":1}}')
    assert (w.database, w.record_id, w.timestamp) == ("postgres", "42", None)


def test_record_bytes_are_kept_as_sent() -> None:
    raw = '{"collection":"c","action":"create","record":{"t":"é ☃","n":1.50,"z":[]}}'.encode()
    w = decode_webhook(raw)
    assert w.record == '{"t":"é ☃","n":1.50,"z":[]}'.encode()
    assert json.loads(w.data_json())["record"] == {"t": "é ☃", "n": 1.5, "z": []}


def test_unknown_fields_are_ignored() -> None:
    assert decode_webhook(hook(extra={"x": 1})).collection == "posts"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(record=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_data_json_is_exactly_action_and_record(record: dict[str, object]) -> None:
    w = decode_webhook(hook(record=record, action="UPDATE"))
    assert json.loads(w.data_json()) == {"action": "update", "record": record}


# ---------------------------------------------------------------- webhook: refused


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"collection": "posts",}', b"\xff\xfe"])
def test_bad_json_is_400(body: bytes) -> None:
    err = refused(body)
    assert (err.status, err.code) == (400, "invalid_json")


def test_deep_nesting_is_400_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    err = refused(b'{"collection":"p","action":"create","record":{"a":' + deep + b"}}")
    assert (err.status, err.code) == (400, "invalid_json")
    assert "deep" in err.message


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"null",
        b"42",
        hook(collection=...),
        hook(action=...),
        hook(action=5),
        hook(collection=["posts"]),
        hook(id=True),
        hook(id=[1]),
        hook(database=None),
    ],
)
def test_wrong_shape_is_422(body: bytes) -> None:
    err = refused(body)
    assert (err.status, err.code) == (422, "invalid_payload")
    assert "shape" in err.message


def test_unknown_action_is_422() -> None:
    err = refused(hook(action="upsert"))
    assert (err.status, err.code) == (422, "invalid_action")
    assert "create, update, delete" in err.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("collection", "{posts}"),
        ("collection", "a:b"),
        ("collection", ""),
        ("collection", "x" * 65),
        ("collection", "a/b"),
        ("collection", "a b"),
        ("database", "{db"),
        ("database", "db}"),
        ("database", ""),
        ("database", ".hidden"),
        ("database", "d" * 65),
    ],
)
def test_invalid_names_are_422(field: str, value: str) -> None:
    err = refused(hook(**{field: value}))
    assert (err.status, err.code) == (422, "invalid_name")
    assert field in err.message and "A-Z a-z 0-9" in err.message


def test_longest_valid_name_is_accepted() -> None:
    assert decode_webhook(hook(collection="c" * 64)).collection == "c" * 64


@pytest.mark.parametrize("action", ["create", "update", "INSERT"])
@pytest.mark.parametrize("record", [None, ...])
def test_record_required_unless_delete(action: str, record: object) -> None:
    err = refused(hook(action=action, record=record))
    assert (err.status, err.code) == (422, "invalid_payload")
    assert "record is required" in err.message


@pytest.mark.parametrize("record", [[1, 2], "text", 5, True])
def test_record_must_be_object(record: object) -> None:
    assert refused(hook(record=record)).code == "invalid_payload"


def test_overlong_id_and_timestamp() -> None:
    assert "id is longer" in refused(hook(id="x" * 257)).message
    assert "timestamp is longer" in refused(hook(timestamp="t" * 65)).message


# ---------------------------------------------------------------- common/config.py

BASE = {"JWT_SECRET": "s3cret"}


def test_config_defaults() -> None:
    s = load_common(BASE)
    assert s.jwt.secrets == ("s3cret",) and s.jwt.algorithms == ("HS256",)
    assert s.retention.max_age_ms == 3_600_000 and s.retention.max_len == 10_000
    assert s.redis.url == "redis://127.0.0.1:6379/0" and s.redis.cluster is False
    assert s.log_format == "json"


def test_missing_secret_names_jwt_secret() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_common({})
    assert load_common({}, require_secret=False).jwt.secrets == ()


def test_previous_secrets_for_rotation() -> None:
    s = load_common({"JWT_SECRET": "new", "JWT_PREVIOUS_SECRETS": "old1, old2,"})
    assert s.jwt.secrets == ("new", "old1", "old2")


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("JWT_ALGORITHMS", "RS256", "JWT_ALGORITHMS"),
        ("JWT_ALGORITHMS", "none", "JWT_ALGORITHMS"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL"),
        ("REDIS_URL", "http://x", "REDIS_URL"),
        ("REDIS_CLUSTER", "maybe", "REDIS_CLUSTER"),
        ("REDIS_TIMEOUT", "fast", "REDIS_TIMEOUT"),
        ("REDIS_TIMEOUT", "0", "REDIS_TIMEOUT"),
        ("REDIS_KEY_PREFIX", "a:b", "REDIS_KEY_PREFIX"),
        ("RETENTION_SECONDS", "-5", "RETENTION_SECONDS"),
        ("RETENTION_MAX_EVENTS", "0", "RETENTION_MAX_EVENTS"),
        ("RETENTION_MAX_EVENTS", "1e3", "RETENTION_MAX_EVENTS"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_common({**BASE, name: value})


def test_values_are_parsed() -> None:
    s = load_common(
        {
            **BASE,
            "REDIS_CLUSTER": "yes",
            "RETENTION_SECONDS": "1.5",
            "RETENTION_MAX_EVENTS": "50",
            "LOG_LEVEL": "WARNING",
            "VSKI_DEV": "1",
        }
    )
    assert s.redis.cluster is True and s.retention.max_age_ms == 1500
    assert s.retention.max_len == 50 and s.log_level == "warning"
    assert s.dev_mode is True and s.log_format == "console"
