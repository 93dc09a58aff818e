"""Pure parts of the subscribe proxy and of revocation: answers, grants, the revocation list,
the disconnect body, the admin key check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import falcon.testing
import pytest

from common.errors import ClientError, HTTPRefusal
from common.policy import View, parse_policy
from fanout.access import Access, identities, user_id
from fanout.revocation_list import TOKEN, USER, RevocationList
from fanout.subscribe_proxy import (
    DEFAULT_TTL,
    ProxyAnswer,
    ProxyKey,
    ProxyUnavailable,
    parse_answer,
)
from ingest.admin_auth import AdminAuth
from ingest.revocations import parse_disconnect

POLICY = parse_policy(
    """
version = 1
[claims]
id = ["id", "sub"]
[superusers]
rule = '@request.auth.role = "admin"'
[[collection]]
name = "projects"
subscribe = '@request.auth.id != ""'
filter = '@sub.teams ?= team'
proxy = true
[[collection]]
name = "open"
subscribe = ""
""",
    "t.toml",
)


# ---------------------------------------------------------------- proxy answers


def test_a_proxy_answer_is_validated() -> None:
    ok = parse_answer(
        b'{"allow": true, "vars": {"teams": ["t1"]}, "ttl": 5}', "application/json", 10
    )
    assert ok == ProxyAnswer(True, {"teams": ["t1"]}, 15)
    default = parse_answer(b'{"allow": false}', "application/json; charset=utf-8", 0)
    assert default.allow is False and default.vars == {} and default.expires_at == DEFAULT_TTL
    for body, ctype in [
        (b'{"allow": true}', "text/html"),
        (b'{"allow": true}', None),
        (b"{nope", "application/json"),
        (b'{"allow": "yes"}', "application/json"),
        (b'{"vars": {}}', "application/json"),
        (b'{"allow": true, "vars": []}', "application/json"),
        (b'{"allow": true, "ttl": -1}', "application/json"),
        (b'{"allow": true, "ttl": 1e9}', "application/json"),
        (b"[]", "application/json"),
    ]:
        with pytest.raises(ProxyUnavailable) as exc:
            parse_answer(body, ctype, 0)
        assert exc.value.code == "auth_unavailable"


class FakeProxy:
    """Answers from a dict; counts asks (what Access needs of SubscribeProxy)."""

    def __init__(self, answers: dict[str, ProxyAnswer | Exception]) -> None:
        self.answers = answers
        self.asked: list[tuple[ProxyKey, bool]] = []

    async def ask(self, key: ProxyKey, claims: Mapping[str, Any], *, fresh: bool = False) -> Any:
        self.asked.append((key, fresh))
        answer = self.answers[key[0]]
        if isinstance(answer, Exception):
            raise answer
        return answer


def grant(access: Access, claims: dict[str, Any], coll: str = "projects", **kw: Any) -> Any:
    return asyncio.run(access.grant(claims, "db", coll, None, **kw))


def test_grants_ask_the_proxy_and_use_its_vars() -> None:
    soon = time.monotonic() + 30
    proxy = FakeProxy(
        {
            "alice": ProxyAnswer(True, {"teams": ["t1"]}, soon),
            "bob": ProxyAnswer(False, {}, soon),
            "dan": ProxyUnavailable("no answer within 1000 ms"),
        }
    )
    access = Access(POLICY, proxy)  # type: ignore[arg-type]
    g = grant(access, {"sub": "alice"})
    assert g.proxy_key == ("alice", "db", "projects", None) and g.expires_at == soon
    assert g.view.matches({"team": "t1"}, action="create")
    assert not g.view.matches({"team": "t2"}, action="create")
    with pytest.raises(ClientError) as refused:
        grant(access, {"sub": "bob"})
    assert refused.value.code == "forbidden"
    with pytest.raises(ClientError) as down:
        grant(access, {"sub": "dan"})
    assert down.value.code == "auth_unavailable"
    with pytest.raises(ClientError) as local:  # refused by the local rule: no ask at all
        grant(access, {"sub": ""})
    assert local.value.code == "forbidden" and all(k[0][0] != "" for k in proxy.asked)
    admin = grant(access, {"sub": "root", "role": "admin"})
    assert admin.view is View.ALL and admin.proxy_key is None, "superusers skip the proxy"
    assert grant(access, {"sub": "zed"}, "open").proxy_key is None


def test_a_grant_never_outlives_the_token() -> None:
    far = time.monotonic() + 3600
    access = Access(POLICY, FakeProxy({"alice": ProxyAnswer(True, {"teams": []}, far)}))  # type: ignore[arg-type]
    g = grant(access, {"sub": "alice"}, token_exp=time.time() + 5)
    assert g.expires_at is not None and g.expires_at <= time.monotonic() + 5.1


def test_without_a_proxy_url_a_proxy_collection_is_unavailable() -> None:
    with pytest.raises(ClientError) as exc:
        grant(Access(POLICY), {"sub": "alice"})
    assert (
        exc.value.code == "auth_unavailable" and "REALTIME_SUBSCRIBE_PROXY_URL" in exc.value.message
    )


def test_user_ids() -> None:
    assert user_id(POLICY, {"id": "u1", "sub": "s1"}) == "u1"
    assert user_id(POLICY, {"sub": "s1"}) == "s1"
    assert user_id(POLICY, {"sub": ["x"]}) == "['x']"
    assert user_id(POLICY, {}) == ""
    assert identities(POLICY, {"id": "u1", "sub": "s1"}) == ["s1", "u1"]
    assert identities(POLICY, {}) == []


# ---------------------------------------------------------------- revocation


def test_the_revocation_list() -> None:
    rl = RevocationList()
    assert rl.add(USER, "alice", 100.0) and rl.add(TOKEN, "j1", 50.0)
    assert not rl.add("x", "nope", 100.0)
    assert rl.revoked(["bob", "alice"], None, now=10)
    assert rl.revoked([], "j1", now=10) and not rl.revoked([], "j1", now=60)
    assert not rl.revoked(["bob"], "j2", now=10)
    rl.add(USER, "alice", 20.0)  # a shorter one does not shorten it
    assert rl.revoked(["alice"], None, now=90)
    rl.merge(USER, [("carol", 30.0)])
    rl.prune(now=60)
    assert len(rl) == 1 and rl.revoked(["alice"], None, now=61)


def test_disconnect_bodies() -> None:
    now = 1_000_000.0
    assert parse_disconnect(b'{"user": "alice"}', now, 86400) == ("u", "alice", int(now + 86400))
    assert parse_disconnect(b'{"token_id": "j", "until": 1000100}', now, 86400) == (
        "t",
        "j",
        1000100,
    )
    cases = [
        (b"nope", 400),
        (b"{}", 422),
        (b'{"user": "a", "token_id": "b"}', 422),
        (b'{"user": ""}', 422),
        (b'{"user": 3}', 422),
        (b'{"user": "a", "until": 5}', 422),
        (b'{"user": "a", "bogus": true}', 422),
        (b"[1]", 422),
    ]
    for body, status in cases:
        with pytest.raises(HTTPRefusal) as exc:
            parse_disconnect(body, now, 86400)
        assert exc.value.status == status, body


def test_the_admin_key_check() -> None:
    auth = AdminAuth("k" * 24)
    auth.check(falcon.testing.create_req(headers={"Authorization": "Bearer " + "k" * 24}))
    for header in ("", "Bearer", "Bearer " + "k" * 23, "Basic " + "k" * 24, "Bearer kkk"):
        with pytest.raises(HTTPRefusal) as exc:
            auth.check(falcon.testing.create_req(headers={"Authorization": header}))
        assert (exc.value.status, exc.value.code) == (401, "unauthorized")
    with pytest.raises(HTTPRefusal) as off:
        AdminAuth(None).check(falcon.testing.create_req())
    assert off.value.status == 404
