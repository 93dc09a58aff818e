"""Property-based fuzzing (hypothesis) of every decoder that reads untrusted bytes.

The property is the same for each: any input either decodes to a valid value or raises the
decoder's own refusal (MessageError, InvalidEventId, BadNotification) — never anything else,
which at the tiers would be a 500 or a dropped connection instead of a clear answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.layout import BadNotification, EventId, InvalidEventId, check_name, parse_notification
from common.messages import (
    Ack,
    MessageError,
    Subscribe,
    Unsubscribe,
    Webhook,
    decode_client_message,
    decode_webhook,
)
from tests.support.chaos import reported

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
CLIENT_CODES = {"invalid_json", "unknown_type", "invalid_message", "invalid_name"}
WEBHOOK_CODES = {"invalid_json", "invalid_payload", "invalid_action", "invalid_name"}
EXAMPLES = 1000

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
valid_names = st.from_regex(NAME, fullmatch=True)
# mostly valid names (so the decoders' success paths are exercised too), some hostile ones
names = st.one_of(
    valid_names, valid_names, valid_names, st.text(max_size=80), st.integers(), st.none()
)
ids = st.one_of(
    st.builds(
        lambda ms, seq, ep: f"{ms}-{seq}@{ep}",
        st.integers(0, 10**16),
        st.integers(0, 10**20),
        st.from_regex(r"[a-f0-9]{1,40}", fullmatch=True),
    ),
    st.sampled_from(["0", "$", "", "-", "1-1@"]),
    st.text(max_size=40),
    st.integers(),
)
client_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["SUBSCRIBE", "UNSUBSCRIBE", "ACK", "subscribe", "X"])
        | json_values,
        "collection": names,
    },
    optional={"lastId": ids | json_values, "group": names, "id": ids, "extra": json_values},
)
records = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
webhook_like = st.fixed_dictionaries(
    {
        "collection": names,
        "action": st.sampled_from(["create", "UPDATE", "Delete", "insert", "drop", ""]) | names,
    },
    optional={
        "database": names,
        "id": st.one_of(st.text(max_size=300), st.integers(), json_values),
        "timestamp": st.one_of(st.text(max_size=70), json_values),
        "record": st.one_of(records, records, json_values),
    },
)


def frames(structured: Any) -> Any:
    """Raw bytes, raw text, any JSON, and near-valid messages (as text or bytes)."""
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        json_values.map(json.dumps),
        structured.map(json.dumps),
        structured.map(lambda d: json.dumps(d).encode()),
    )


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.refused = 0

    @property
    def total(self) -> int:
        return self.ok + self.refused


@pytest.fixture(scope="module")
def tally() -> Iterator[dict[str, Tally]]:
    counts = {k: Tally() for k in ("client", "webhook", "event id", "notification")}
    yield counts
    with reported("hostile", "fuzzed decoders (hypothesis)") as row:
        row.update(
            tried=", ".join(f"{t.total} {k}" for k, t in counts.items()),
            events=0,
            clients=0,
            lost=0,
            duplicated=0,
            notes="; ".join(f"{k}: {t.ok} valid, {t.refused} refused" for k, t in counts.items())
            + "; no other exception",
        )
        assert all(t.total > 100 for t in counts.values())


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(frame=frames(client_like))
def test_client_message_decoder(frame: str | bytes, tally: dict[str, Tally]) -> None:
    try:
        msg = decode_client_message(frame)
    except MessageError as exc:
        tally["client"].refused += 1
        assert exc.code in CLIENT_CODES and exc.message
        return
    tally["client"].ok += 1
    assert isinstance(msg, Subscribe | Unsubscribe | Ack)
    assert check_name("collection", msg.collection) == msg.collection
    if msg.group is not None:
        assert NAME.match(msg.group)


@FUZZ
@given(body=frames(webhook_like))
def test_webhook_decoder(body: str | bytes, tally: dict[str, Tally]) -> None:
    raw = body.encode() if isinstance(body, str) else body
    try:
        hook = decode_webhook(raw)
    except MessageError as exc:
        tally["webhook"].refused += 1
        assert exc.code in WEBHOOK_CODES and exc.status in (400, 422) and exc.message
        return
    tally["webhook"].ok += 1
    assert isinstance(hook, Webhook)
    assert NAME.match(hook.database) and NAME.match(hook.collection)
    assert hook.action in ("create", "update", "delete")
    data = json.loads(hook.data_json())
    assert set(data) == {"action", "record"} and data["action"] == hook.action
    assert data["record"] is None or isinstance(data["record"], dict)


@FUZZ
@given(text=ids)
def test_event_id_parser(text: Any, tally: dict[str, Tally]) -> None:
    try:
        eid = EventId.parse(text)
    except InvalidEventId:
        tally["event id"].refused += 1
        return
    tally["event id"].ok += 1
    assert str(eid) == text and EventId.parse(str(eid)) == eid


@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda ep, ms, seq, data: f"{ep} {ms}-{seq} ".encode() + data,
            st.text(max_size=10),
            st.integers(),
            st.integers(),
            st.binary(max_size=50),
        ),
    )
)
def test_notification_parser(payload: bytes, tally: dict[str, Tally]) -> None:
    try:
        note = parse_notification(payload)
    except BadNotification:
        tally["notification"].refused += 1
        return
    tally["notification"].ok += 1
    # only Redis (the append script) publishes these: a well-formed shape is all that is checked
    assert isinstance(note.data, bytes) and isinstance(note.seq, int)
