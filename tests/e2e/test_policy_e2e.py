"""The access policy end to end: two fanout nodes and ingest as processes on real Redis
(standalone and Redis Cluster), users with their own tokens.

Two users under an owner rule each receive only their own records, live, on replay with
``lastId`` and ``0``, after resuming on the other node, and through a consumer group; a token
the rule refuses gets ``forbidden`` and keeps its socket; a superuser sees everything; hidden
fields are never stored; a user's token cannot post webhooks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from common.layout import collection_keys
from tests.support.backends import RedisTarget
from tests.support.stack import Stack, stack_on
from tests.support.users import MASTER, User, post_record, write_policy

pytestmark = pytest.mark.timeout(120)

POLICY = """
version = 1
[claims]
id = ["id", "sub"]
[superusers]
rule = '@request.auth.role = "admin"'

[[collection]]
name = "pol_notes"
subscribe = '@request.auth.id != ""'
filter = 'author = @request.auth.id'
hidden = ["secret"]

[[collection]]
name = "pol_posts"
subscribe = '@request.auth.id != ""'
filter = 'status = "published" || author = @request.auth.id'

[[collection]]
name = "pol_jobs"
subscribe = '@request.auth.id != ""'
filter = 'owner = @request.auth.id'

[[collection]]
name = "pol_gone"
subscribe = ""
filter = 'owner = @request.auth.id'
on_delete = "all"

[[collection]]
name = "pol_gone_f"
subscribe = ""
filter = 'owner = @request.auth.id'

[webhooks]
sender = '@request.auth.sub = "vski-master"'
"""

ALICE = {"sub": "alice"}
BOB = {"sub": "bob"}
ADMIN = {"sub": "root", "role": "admin"}
NOBODY = {"sub": ""}  # a token the subscribe rule refuses: @request.auth.id is ""


@pytest.fixture(scope="module")
def stack(
    redis_backend: RedisTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack[RedisTarget]]:
    policy = write_policy(tmp_path_factory.mktemp("policy") / "policy.toml", POLICY)
    env = {"REALTIME_POLICY": policy}
    with stack_on(redis_backend, 2, ingest_env=env, **env) as s:
        yield s


async def users(node_of: list[tuple[int, dict[str, str]]], stack: Stack[RedisTarget]) -> list[User]:
    return [await User(stack.nodes[i], claims).open() for i, claims in node_of]


def post(stack: Stack[RedisTarget], collection: str, **record: object) -> str:
    reply = post_record(stack.ingest, collection, dict(record))
    assert reply.status == 200, reply.body
    return str(reply.json()["id"])


async def test_owner_rule_live_replay_and_resume_on_the_other_node(
    stack: Stack[RedisTarget],
) -> None:
    coll = "pol_notes"
    alice, bob, admin = await users([(0, ALICE), (1, BOB), (0, ADMIN)], stack)
    for u in (alice, bob, admin):
        assert (await u.subscribe(coll))["type"] == "SUBSCRIBED"
    authors = {"a": "alice", "b": "bob"}
    ids = [
        post(stack, coll, id=f"m{i}", author=authors[a], secret="s3cret")
        for i, a in enumerate("abba")
    ]
    assert await alice.wait(lambda: len(alice.ids[coll]) == 2)
    assert await admin.wait(lambda: len(admin.ids[coll]) == 4)
    assert alice.seen(coll) == ["m0", "m3"]
    assert bob.seen(coll) == ["m1", "m2"]
    assert all("secret" not in r for u in (alice, bob, admin) for r in u.records[coll])
    # replay with lastId "0" and with an id, and a resume on the other node with the lastId
    replay = await User(stack.nodes[1], ALICE).open()
    zero = await replay.subscribe(coll, last_id="0")
    assert zero["recovered"] is True and replay.seen(coll) == ["m0", "m3"]
    again = await User(stack.nodes[0], BOB).open()
    after = await again.subscribe(coll, last_id=ids[0])
    assert after["recovered"] is True, "a filtered gap in seq is not a loss"
    assert again.seen(coll) == ["m1", "m2"]
    last = alice.ids[coll][-1]
    await alice.close()
    post(stack, coll, id="x1", author="alice")
    post(stack, coll, id="x2", author="bob")
    resumed = await User(stack.nodes[1], ALICE).open()
    answer = await resumed.subscribe(coll, last_id=last)
    assert answer["recovered"] is True
    assert await resumed.wait(lambda: resumed.seen(coll) == ["x1"])
    await asyncio.sleep(0.3)
    assert resumed.seen(coll) == ["x1"], "bob's event leaked into alice's resume"
    assert await bob.wait(lambda: bob.seen(coll)[-1:] == ["x2"])
    for u in (bob, admin, replay, again, resumed):
        await u.close()


async def test_refused_token_keeps_its_socket_and_superuser_sees_all(
    stack: Stack[RedisTarget],
) -> None:
    coll = "pol_posts"
    nobody, alice = await users([(0, NOBODY), (1, ALICE)], stack)
    refused = await nobody.subscribe(coll)
    assert refused["type"] == "ERROR" and refused["code"] == "forbidden"
    assert refused["collection"] == coll
    unlisted = await nobody.subscribe("pol_not_in_policy")
    assert unlisted["code"] == "forbidden"
    # the socket stays open: a listed collection it may see still works on it
    assert (await alice.subscribe(coll))["type"] == "SUBSCRIBED"
    post(stack, coll, id="p1", status="published", author="carol")
    post(stack, coll, id="p2", status="draft", author="carol")
    post(stack, coll, id="p3", status="draft", author="alice")
    assert await alice.wait(lambda: alice.seen(coll) == ["p1", "p3"])
    assert nobody.close_code is None and nobody.records[coll] == []
    await nobody.close()
    await alice.close()


async def test_hidden_fields_never_reach_a_stream(stack: Stack[RedisTarget]) -> None:
    coll = "pol_notes"
    post(stack, coll, id="h1", author="alice", secret="never-stored", body="kept")
    keys = collection_keys("postgres", coll)
    stored = stack.redis.client().xrevrange(keys.stream, count=1)
    data = stored[0][1][b"d"]
    assert b"never-stored" not in data and b"secret" not in data and b'"kept"' in data


async def test_a_users_token_cannot_post_webhooks(stack: Stack[RedisTarget]) -> None:
    coll = "pol_posts"
    keys = collection_keys("postgres", coll)
    before = stack.redis.client().xlen(keys.stream)
    forged = post_record(stack.ingest, coll, {"id": "f1", "status": "published"}, claims=ALICE)
    assert forged.status == 403 and forged.json()["error"] == "forbidden_sender"
    assert stack.redis.client().xlen(keys.stream) == before, "a refused webhook was stored"
    ok = post_record(stack.ingest, coll, {"id": "f2"}, claims=MASTER)
    assert ok.status == 200


async def test_group_members_only_get_their_own_events(stack: Stack[RedisTarget]) -> None:
    coll = "pol_jobs"
    alice, bob, alice2 = await users([(0, ALICE), (1, BOB), (1, ALICE)], stack)
    for u in (alice, bob, alice2):
        assert (await u.subscribe(coll, group="workers"))["type"] == "SUBSCRIBED"
    owners = ["alice", "bob", "carol", "alice", "bob", "alice"]
    for i, owner in enumerate(owners):
        post(stack, coll, id=f"j{i}", owner=owner)

    def got() -> tuple[list[str], list[str]]:
        return sorted(alice.seen(coll) + alice2.seen(coll)), sorted(bob.seen(coll))

    assert await alice.wait(lambda: got() == (["j0", "j3", "j5"], ["j1", "j4"]))
    await asyncio.sleep(0.5)
    assert got() == (["j0", "j3", "j5"], ["j1", "j4"]), "carol's job reached a member"
    # alice's two connections share alice's events, each event once
    assert not set(alice.seen(coll)) & set(alice2.seen(coll))
    # nothing stays pending: own events are ACKed, carol's (seen by nobody) ACKed unseen
    keys = collection_keys("postgres", coll)
    client = stack.redis.client()

    def pending() -> int:
        groups = client.xinfo_groups(keys.stream)
        return sum(int(g["pending"]) for g in groups if g["name"].startswith(b"workers"))

    assert await alice.wait(lambda: pending() == 0), pending()
    names = {g["name"] for g in client.xinfo_groups(keys.stream)}
    assert len([n for n in names if n.startswith(b"workers~")]) == 2, names
    for u in (alice, bob, alice2):
        await u.close()


@pytest.mark.parametrize(("coll", "expect"), [("pol_gone", ["d1"]), ("pol_gone_f", [])])
async def test_deletes_follow_on_delete(
    stack: Stack[RedisTarget], coll: str, expect: list[str]
) -> None:
    (alice,) = await users([(0, ALICE)], stack)
    await alice.subscribe(coll)
    reply = post_record(stack.ingest, coll, None, action="delete", record_id="d1")
    assert reply.status == 200
    post(stack, coll, id="marker", owner="alice")
    assert await alice.wait(lambda: "marker" in alice.seen(coll))
    deletes = [r.get("id") for r in alice.records[coll] if r.get("id") != "marker"]
    assert deletes == expect
    if expect:
        assert alice.records[coll][0] == {"id": "d1"}, "on_delete all sends only the id"
    await alice.close()
