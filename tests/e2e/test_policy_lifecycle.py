"""The policy file over a process's life: refused at start with its location, reloaded on
SIGHUP (a bad file keeps the policy in force), re-checking live subscriptions; the open
policy's warnings; floods of refused SUBSCRIBEs and hostile claims. Standalone Redis: these
are about the tiers' processes, not the topology."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from common.layout import collection_keys
from devstack.ports import free_port
from tests.support.procs import BIN, Proc, base_env, fanout_proc, ingest_proc, wait_until
from tests.support.redis_server import RedisServer
from tests.support.tokens import make_token
from tests.support.users import User, post_record, write_policy

pytestmark = pytest.mark.timeout(90)

BASE = """
version = 1
[claims]
id = ["id", "sub"]
[[collection]]
name = "life_docs"
subscribe = '@request.auth.id != ""'
filter = 'owner = @request.auth.id'
[[collection]]
name = "life_open"
subscribe = ""
[webhooks]
sender = '@request.auth.sub = "vski-master"'
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    write_policy(path, BASE)
    return path


@pytest.fixture
def tiers(redis_srv: RedisServer, policy: Path) -> Iterator[tuple[Proc, Proc]]:
    env = {"REALTIME_POLICY": str(policy)}
    node = fanout_proc(redis_srv.url, **env).start()
    ingest = ingest_proc(redis_srv.url, **env).start()
    try:
        yield node, ingest
    finally:
        node.stop()
        ingest.stop()


def run_until_exit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("tier", ["vski-fanout", "vski-ingest"])
@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ('version = 1\n[[collection]]\nname = "x"\nsubscibe = ""\n', ":4:1:", "subscibe"),
        ("version = 1\n[[collection]]\nname = \"x\"\nfilter = 'a == 1'\n", ":4:", "=="),
        ("version = 1\n[defaults\n", ":2:", ""),
        ("", ":1:1:", "version"),
    ],
)
def test_a_bad_file_stops_the_tier_at_start_with_its_location(
    redis_srv: RedisServer, tmp_path: Path, tier: str, text: str, where: str, says: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    bind = f"127.0.0.1:{free_port()}"
    env = base_env(redis_srv.url, REALTIME_POLICY=str(bad), INGEST_BIND=bind, FANOUT_BIND=bind)
    done = run_until_exit([str(BIN / tier)], env)
    assert done.returncode != 0
    assert f"{bad}{where}" in done.stderr, done.stderr
    assert says in done.stderr


def test_without_a_policy_both_tiers_say_open(redis_srv: RedisServer) -> None:
    node = fanout_proc(redis_srv.url).start()
    ingest = ingest_proc(redis_srv.url).start()
    try:
        for proc in (node, ingest):
            assert wait_until(lambda p=proc: '"policy":"open"' in p.log() or _ready(p), 10)
            body = _ready_body(proc)
            assert body["policy"] == "open", body
        assert _ready_body(ingest)["webhooks"] == "any-token"
        assert node.log().count('"policy_open"') == 1
        assert ingest.log().count('"policy_open"') == 1, "one warning, from the master"
        assert '"webhooks_open"' in ingest.log()
    finally:
        node.stop()
        ingest.stop()


def _ready_body(proc: Proc) -> dict[str, str]:
    import urllib.request

    with urllib.request.urlopen(f"{proc.url}/ready", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def _ready(proc: Proc) -> bool:
    try:
        _ready_body(proc)
    except OSError:
        return False
    return True


async def test_sighup_rechecks_subscriptions_and_a_bad_file_keeps_the_policy(
    tiers: tuple[Proc, Proc], policy: Path
) -> None:
    node, ingest = tiers
    alice = await User(node, {"sub": "alice"}).open()
    assert (await alice.subscribe("life_docs"))["type"] == "SUBSCRIBED"
    assert (await alice.subscribe("life_open"))["type"] == "SUBSCRIBED"
    # a bad file on SIGHUP: refused, logged, the old policy stays in force
    policy.write_text(BASE + "\n[[collection]]\nname = 'life_open'\n")  # duplicate entry
    node.signal(signal.SIGHUP)
    assert wait_until(lambda: "policy_reload_refused" in node.log(), 10)
    assert post_record(ingest, "life_docs", {"id": "a1", "owner": "alice"}).status == 200
    assert await alice.wait(lambda: alice.seen("life_docs") == ["a1"])
    # tighter policy: life_open becomes superusers only, life_docs filters on another field
    policy.write_text(
        BASE.replace(
            "filter = 'owner = @request.auth.id'", "filter = 'editor = @request.auth.id'"
        ).replace('name = "life_open"\nsubscribe = ""', 'name = "life_open"')
    )
    node.signal(signal.SIGHUP)
    assert await alice.wait(lambda: any(e["collection"] == "life_open" for e in alice.errors))
    err = next(e for e in alice.errors if e["collection"] == "life_open")
    assert err["code"] == "forbidden"
    assert post_record(ingest, "life_open", {"id": "o1"}).status == 200
    assert post_record(ingest, "life_docs", {"id": "a2", "owner": "alice"}).status == 200
    assert post_record(ingest, "life_docs", {"id": "a3", "editor": "alice"}).status == 200
    assert await alice.wait(lambda: alice.seen("life_docs") == ["a1", "a3"])
    await asyncio.sleep(0.3)
    assert alice.records["life_open"] == [], "a refused subscription kept receiving"
    assert alice.close_code is None, "the socket stays open"
    await alice.close()


async def test_ingest_sighup_applies_a_good_file_and_keeps_the_old_on_a_bad_one(
    tiers: tuple[Proc, Proc], policy: Path, redis_srv: RedisServer
) -> None:
    _node, ingest = tiers
    keys = collection_keys("postgres", "life_open")
    client = redis_srv.client()

    def last_stored() -> bytes:
        return bytes(client.xrevrange(keys.stream, count=1)[0][1][b"d"])

    policy.write_text("version = 1\n[defaults\n")  # does not parse
    ingest.signal(signal.SIGHUP)
    assert wait_until(lambda: "policy_reload_refused" in ingest.log(), 10)
    time.sleep(1.5)  # gunicorn restarts its workers on HUP: they must boot on the old policy
    reply = post_record(ingest, "life_open", {"id": "k1", "pin": "1234"})
    assert reply.status == 200, reply.body
    assert b"1234" in last_stored()
    policy.write_text(
        BASE.replace('name = "life_open"\n', 'name = "life_open"\nhidden = ["pin"]\n')
    )
    ingest.signal(signal.SIGHUP)
    assert wait_until(lambda: ingest.log().count("policy_reloaded") >= 1, 10)

    def stripped() -> bool:
        post_record(ingest, "life_open", {"id": f"k{time.monotonic_ns()}", "pin": "9999"})
        return b"9999" not in last_stored()

    assert wait_until(stripped, 15, interval=0.3), "the new hidden field was not applied"


async def test_a_flood_of_refused_subscribes_is_rate_limited_not_a_crash(
    tiers: tuple[Proc, Proc],
) -> None:
    node, _ingest = tiers
    url = f"{node.ws_url}/api/realtime?auth={make_token(sub='mallory')}"
    frame = json.dumps({"type": "SUBSCRIBE", "collection": "life_not_listed"})
    errors = 0
    code = None
    async with connect(url) as ws:
        for _ in range(1000):
            try:
                await ws.send(frame)
            except ConnectionClosed:
                break
        try:
            async with asyncio.timeout(10):
                async for raw in ws:
                    errors += json.loads(raw).get("code") == "forbidden"
        except (ConnectionClosed, TimeoutError):
            pass
        code = ws.close_code
    assert code == 1008, code
    assert 0 < errors <= 400, errors
    ok = await User(node, {"sub": "alice"}).open()
    assert (await ok.subscribe("life_docs"))["type"] == "SUBSCRIBED", "node kept serving"
    await ok.close()


@pytest.mark.parametrize(
    ("claims", "allowed", "sees"),
    [
        # `id` is read before `sub` ([claims] id = ["id", "sub"]); PyJWT itself refuses a
        # `sub` that is not a string (401 invalid_token), so the hostile values go in `id`.
        # Lists and objects compare false with every plain operator: `!= ""` refuses them
        ({"sub": "h", "id": ["alice"]}, False, []),
        ({"sub": "h", "id": {"$ne": ""}}, False, []),
        # a number or a bool is not "" (strict types); 12345 = 12345, True never equals it
        ({"sub": "h", "id": 12345}, True, ["h3"]),
        ({"sub": "h", "id": True}, True, []),
        ({"sub": "", "id": None}, False, []),  # null id: falls back to sub, which is ""
        ({"sub": "x" * 4000}, True, []),
        # claims named like operators or like a rule operand are just claims
        ({"sub": "alice", "||": "true", "&&": {"a": 1}, "@request.auth.id": "bob"}, True, ["h1"]),
    ],
)
async def test_hostile_claims_get_a_clear_answer(
    tiers: tuple[Proc, Proc], claims: dict[str, object], allowed: bool, sees: list[str]
) -> None:
    node, ingest = tiers
    user = await User(node, claims).open()
    answer = await user.subscribe("life_docs")
    if allowed:
        assert answer["type"] == "SUBSCRIBED", answer
    else:
        assert answer["type"] == "ERROR" and answer["code"] == "forbidden", answer
    post_record(ingest, "life_docs", {"id": "h1", "owner": "alice"})
    post_record(ingest, "life_docs", {"id": "h2", "owner": '" || true || "'})
    post_record(ingest, "life_docs", {"id": "h3", "owner": 12345})
    await asyncio.sleep(0.5)
    assert user.seen("life_docs") == sees
    assert node.alive()
    await user.close()
