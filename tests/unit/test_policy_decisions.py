"""SUBSCRIBE decisions, superusers, claims mapping, webhook senders, hostile tokens."""

from __future__ import annotations

from typing import Any

import pytest

from common.policy import Policy, parse_policy
from common.policy.view import View

POLICY = """
version = 1
[claims]
id = ["id", "sub"]
team = "meta.team"

[superusers]
rule = '@request.auth.collectionName = "_superusers"'

[[collection]]
name = "posts"
subscribe = '@request.auth.id != ""'
filter = 'status = "published" || author = @request.auth.id'

[[collection]]
database = "shop"
name = "posts"
subscribe = ""

[[collection]]
name = "jobs"
subscribe = '@request.auth.id != ""'
groups = '@request.auth.role = "worker"'
filter = 'team = @request.auth.team'
on_delete = "all"

[[collection]]
name = "inherit"
subscribe = '@request.auth.role = "a"'

[[collection]]
name = "audit"

[[collection]]
name = "projects"
subscribe = ""
filter = '@sub.teams ?= team'
proxy = true

[webhooks]
sender = '@request.auth.sub = "vski-master" && @request.auth.type = "trigger"'
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY, "p.toml")


def test_subscribe_rule_and_view(policy: Policy) -> None:
    d = policy.subscribe_decision({"id": "u1"}, "main", "posts", group=None)
    assert d.allowed and not d.proxy and d.on_delete == "filter" and not d.superuser
    assert d.view is not None and d.view.inputs == ("u1",)
    assert d.view.matches({"status": "draft", "author": "u1"}, action="create")
    assert not d.view.matches({"status": "draft", "author": "u2"}, action="update")
    d = policy.subscribe_decision({}, "main", "posts", group=None)
    assert not d.allowed and d.message == "the subscribe rule refused this token"
    assert d.view is None


def test_exact_database_wins(policy: Policy) -> None:
    d = policy.subscribe_decision({}, "shop", "posts", group=None)
    assert d.allowed and d.view is View.ALL


def test_groups_rule(policy: Policy) -> None:
    worker = {"id": "w", "role": "worker", "meta": {"team": "t1"}}
    assert policy.subscribe_decision({"id": "u"}, "db", "jobs", group=None).allowed
    d = policy.subscribe_decision({"id": "u"}, "db", "jobs", group="g")
    assert not d.allowed and d.message == "the groups rule refused this token"
    d = policy.subscribe_decision(worker, "db", "jobs", group="g")
    assert d.allowed and d.on_delete == "all" and d.view is not None
    assert d.view.inputs == ("t1",)
    # groups absent: the subscribe rule decides
    assert policy.subscribe_decision({"role": "a"}, "db", "inherit", group="g").allowed
    assert not policy.subscribe_decision({"role": "b"}, "db", "inherit", group="g").allowed


def test_absent_rule_means_superusers_only(policy: Policy) -> None:
    d = policy.subscribe_decision({"id": "u"}, "db", "audit", group=None)
    assert not d.allowed and d.message == "only superusers may subscribe to 'audit'"
    d = policy.subscribe_decision({"id": "u"}, "db", "audit", group="g")
    assert "consumer groups" in d.message
    sup = {"collectionName": "_superusers"}
    for coll, group in (("audit", None), ("audit", "g"), ("posts", None), ("nope", None)):
        d = policy.subscribe_decision(sup, "db", coll, group=group)
        assert d.allowed and d.superuser and d.view is View.ALL and not d.proxy, coll
    assert policy.subscribe_decision(sup, "db", "jobs", group=None).on_delete == "all"


def test_unlisted(policy: Policy) -> None:
    d = policy.subscribe_decision({"id": "u"}, "db", "other", group=None)
    assert not d.allowed and d.message == "collection 'other' is not listed in the policy"
    relaxed = parse_policy("version = 1\n[defaults]\nunlisted = 'authenticated'\n", "p")
    d = relaxed.subscribe_decision({}, "db", "other", group="g")
    assert d.allowed and d.view is View.ALL


def test_proxy_collection_uses_sub_vars(policy: Policy) -> None:
    d = policy.subscribe_decision({"id": "u"}, "db", "projects", group=None)
    assert d.allowed and d.proxy and d.view is not None
    assert not d.view.matches({"team": "t1"}, action="create")  # no vars yet: nothing
    d = policy.subscribe_decision(
        {"id": "u"}, "db", "projects", group=None, sub_vars={"teams": ["t1", "t2"]}
    )
    assert d.view is not None and d.view.matches({"team": "t2"}, action="create")
    assert not d.view.matches({"team": "t3"}, action="create")


def test_claims_fallback_skips_null(policy: Policy) -> None:
    d = policy.subscribe_decision({"id": None, "sub": "s1"}, "db", "posts", group=None)
    assert d.allowed and d.view is not None and d.view.inputs == ("s1",)
    d = policy.subscribe_decision({"id": "", "sub": "s1"}, "db", "posts", group=None)
    assert not d.allowed  # "" is present: it wins, and "" != "" is false


def test_views_are_shared_between_equal_inputs(policy: Policy) -> None:
    def view(payload: dict[str, Any]) -> View:
        d = policy.subscribe_decision(payload, "db", "posts", group=None)
        assert d.view is not None
        return d.view

    assert view({"id": "u1"}) == view({"sub": "u1", "other": 5})
    assert hash(view({"id": "u1"})) == hash(view({"id": "u1", "x": [1]}))
    assert view({"id": "u1"}) != view({"id": "u2"})
    assert view({"id": 1}) != view({"id": True})
    assert view({"id": 1}) == view({"id": 1.0})
    reloaded = parse_policy(POLICY, "p.toml")
    d = reloaded.subscribe_decision({"id": "u1"}, "db", "posts", group=None)
    assert d.view != view({"id": "u1"})  # a new load is a new filter


def test_filter_without_inputs_gives_one_view() -> None:
    p = parse_policy(
        "version = 1\n[[collection]]\nname = 'a'\nsubscribe = ''\nfilter = 'status = \"ok\"'\n", "p"
    )
    views = {p.subscribe_decision({"id": str(i)}, "d", "a", group=None).view for i in range(50)}
    assert len(views) == 1


def test_sender(policy: Policy) -> None:
    assert policy.has_webhooks and not policy.sender_is_open
    assert policy.sender_allowed({"sub": "vski-master", "type": "trigger"})
    assert not policy.sender_allowed({"sub": "vski-master"})
    assert not policy.sender_allowed({"id": "user", "sub": "vski-master", "type": "x"})
    none = parse_policy("version = 1\n", "p")
    assert not none.has_webhooks and none.sender_is_open and none.sender_allowed({})
    empty = parse_policy("version = 1\n[webhooks]\nsender = ''\n", "p")
    assert empty.has_webhooks and empty.sender_is_open and empty.sender_allowed({})


HOSTILE: list[Any] = [
    [],
    ["u1"],
    {"id": "u1"},
    0,
    1,
    -1.5,
    True,
    False,
    None,
    "",
    "x" * 1_000_000,
    '" || true || "',
    "%",
]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:20])
def test_hostile_claim_values(policy: Policy, value: Any) -> None:
    payload: dict[str, Any] = {
        "id": value,
        "sub": value,
        "role": value,
        "collectionName": value,
        "meta": value,
        "type": value,
        "||": "x",
        "== 1": True,
        "@request.auth.id": "u1",
        "status = 'published'": 1,
    }
    for coll in ("posts", "jobs", "inherit", "audit", "projects", "other"):
        for group in (None, "g"):
            d = policy.subscribe_decision(payload, "db", coll, group=group)
            assert not d.superuser
            if d.view is not None and d.view.filter is not None:
                records: list[Any] = [{"status": "draft", "author": value}, {"team": value}, None]
                for record in records:
                    d.view.matches(record, action="update")
    assert not policy.sender_allowed(payload)
    d = policy.subscribe_decision(payload, "db", "posts", group=None)
    # strict types: a number or bool is != "" (allowed); null, "" and containers are not
    allowed = not isinstance(value, (list, dict)) and value is not None and value != ""
    assert d.allowed is allowed
    if d.view is not None:
        assert not d.view.matches({"status": "draft", "author": "u1"}, action="create")


@pytest.mark.parametrize("payload", [None, [], "token", 5, {"meta": "str"}, {"meta": [1]}])
def test_non_object_payloads(policy: Policy, payload: Any) -> None:
    d = policy.subscribe_decision(payload, "db", "posts", group=None)
    assert not d.allowed
    assert policy.subscribe_decision(payload, "db", "shop", group=None).allowed is False
    assert not policy.sender_allowed(payload)
    assert policy.subscribe_decision(payload, "shop", "posts", group=None).allowed


def test_record_values_cannot_inject(policy: Policy) -> None:
    d = policy.subscribe_decision({"id": "u1"}, "db", "posts", group=None)
    assert d.view is not None
    for value in ['" || true || "', "' || 1 = 1 || '", "\\", "%", "_", "u1%", "%u1", "U1"]:
        assert not d.view.matches({"status": value, "author": value}, action="create"), value
