"""The compose topology as plain processes behind a real nginx running the repository's config.

deploy/compose/nginx.conf is used as is, except the lines tagged ``# vski:`` (listen address and
upstream servers), which point at ingest and fanout processes on 127.0.0.1 instead of Docker
service names. Webhooks and WebSocket clients go through nginx only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

from devstack.ports import free_port, wait_port
from tests.support import ROOT
from tests.support.ingest_http import post_titled
from tests.support.procs import Proc, fanout_proc, ingest_proc
from tests.support.redis_server import RedisServer
from tests.support.tokens import make_token

pytestmark = pytest.mark.nginx

NGINX_CONF = ROOT / "deploy" / "compose" / "nginx.conf"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)


def render_conf(listen_port: int, upstreams: dict[str, list[int]]) -> str:
    """The repository's nginx.conf with only the ``# vski:`` lines replaced."""
    out = []
    for line in NGINX_CONF.read_text().splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        if "# vski:listen" in line:
            out.append(f"{indent}listen 127.0.0.1:{listen_port};")
        elif m := re.search(r"# vski:upstream (\w+)", line):
            out += [f"{indent}server 127.0.0.1:{p};" for p in upstreams[m.group(1)]]
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@dataclass
class Nginx:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        return (self.dir / "stdout.log").read_text(errors="replace")


def _nginx_cmd(d: Path) -> list[str]:
    glob = f"daemon off; pid {d / 'nginx.pid'};"
    if os.geteuid() == 0:
        glob += " user root;"  # workers must write request-body temp files as the test user
    return [
        str(NGINX),
        "-p",
        str(d),
        "-c",
        str(d / "nginx.conf"),
        "-e",
        str(d / "error.log"),
        "-g",
        glob,
    ]


@dataclass
class Topology:
    redis: RedisServer
    ingest: Proc
    fanouts: list[Proc]
    nginx: Nginx


@pytest.fixture(scope="module")
def topo(redis_mod: RedisServer) -> Iterator[Topology]:
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does it)")
    ingest = ingest_proc(redis_mod.url, workers=2).start()
    fanouts = [fanout_proc(redis_mod.url, FANOUT_DRAIN_SECONDS="3").start() for _ in range(3)]
    d = Path(tempfile.mkdtemp(prefix="vski-nginx-"))
    port = free_port()
    (d / "nginx.conf").write_text(
        render_conf(port, {"ingest": [ingest.port], "fanout": [f.port for f in fanouts]})
    )
    check = subprocess.run([*_nginx_cmd(d)[:-2], "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        _nginx_cmd(d),
        stdout=(d / "stdout.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_port(port, 20)
        yield Topology(redis_mod, ingest, fanouts, Nginx(port, d, proc))
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful nginx stop
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for p in [ingest, *fanouts]:
            p.stop()
        shutil.rmtree(d, ignore_errors=True)


TOKEN = make_token(ttl=3600)


def post(t: Topology, coll: str, title: str, body: bytes | None = None) -> tuple[int, Any]:
    return post_titled(t.nginx.url, coll, title, TOKEN, body)


def ws_url(t: Topology, token: str = TOKEN) -> str:
    return f"{t.nginx.ws}/api/realtime?db=postgres&auth={token}"


async def recv_events(ws: Any, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        got += frame.get("events", [])
    return got


async def subscribe(ws: Any, coll: str, last_id: str | None = None) -> dict[str, Any]:
    msg = {"type": "SUBSCRIBE", "collection": coll}
    if last_id:
        msg["lastId"] = last_id
    await ws.send(json.dumps(msg))
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if frame.get("type") == "SUBSCRIBED":
            return frame


def fanout_connections(p: Proc) -> float:
    with urllib.request.urlopen(p.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^vski_fanout_connections (\S+)$", text, flags=re.M)
    return float(m.group(1)) if m else 0.0


async def test_webhook_through_nginx_reaches_websocket_clients_on_every_node(
    topo: Topology,
) -> None:
    coll = "nginx_fan"
    clients = [await websockets.connect(ws_url(topo), open_timeout=20) for _ in range(6)]
    try:
        for ws in clients:
            await subscribe(ws, coll)
        # least_conn spread six concurrent sockets over the three nodes
        per_node = [fanout_connections(p) for p in topo.fanouts]
        assert sum(per_node) >= 6 and all(c >= 1 for c in per_node), per_node
        status, answer = post(topo, coll, "hello")
        assert status == 200 and answer["success"] is True
        for ws in clients:
            (event,) = await recv_events(ws, 1)
            assert event["id"] == answer["id"]
            record = {"id": "hello", "title": "hello"}
            assert event["data"] == {"action": "create", "record": record}
    finally:
        for ws in clients:
            await ws.close()
    # the token travels in the query string; nginx's access log must not keep it
    log = topo.nginx.access_log()
    assert "/api/realtime" in log and "/webhook" in log
    assert TOKEN not in log and "auth=" not in log


async def test_refusals_pass_through_nginx_unchanged(topo: Topology) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_url(topo, "not-a-token"), open_timeout=20)
    assert info.value.response.status_code == 401
    big = json.dumps(
        {"collection": "c", "action": "create", "record": {"x": "a" * 1_200_000}}
    ).encode()
    status, answer = post(topo, "c", "big", big)
    assert status == 413 and answer["error"] == "payload_too_large"  # ingest's JSON, not nginx's
    status, answer = post(topo, "c", "bad", b'{"collection": "bad name", "action": "create"}')
    assert status == 422 and "error" in answer
    with pytest.raises(urllib.error.HTTPError) as nf:
        urllib.request.urlopen(topo.nginx.url + "/metrics", timeout=10)
    assert nf.value.code == 404  # the tiers' metrics are not published through the front door
    with urllib.request.urlopen(topo.nginx.url + "/nginx-health", timeout=10) as resp:
        assert resp.status == 200


async def test_rolling_restart_of_a_fanout_node_loses_nothing(topo: Topology) -> None:
    """Drain one node (SIGTERM): its clients reconnect through nginx to another node and resume
    from their lastId with every event posted meanwhile, in order, without duplicates."""
    coll = "nginx_roll"
    clients = [await websockets.connect(ws_url(topo), open_timeout=20) for _ in range(6)]
    victim = topo.fanouts[0]
    seen: list[list[str]] = [[] for _ in clients]
    resumed = 0
    try:
        for ws in clients:
            await subscribe(ws, coll)
        first = post(topo, coll, "before")[1]["id"]
        for i, ws in enumerate(clients):
            seen[i] += [e["id"] for e in await recv_events(ws, 1)]
        victim.stop()  # SIGTERM: drains, closes its sockets with 1012
        posted = [post(topo, coll, f"during-{k}")[1]["id"] for k in range(5)]
        for i, ws in enumerate(clients):
            with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
                seen[i] += [e["id"] for e in await recv_events(ws, 5, timeout=3)]
            if len(seen[i]) < 6:  # this one was on the drained node: resume like the SDK
                resumed += 1
                await ws.close()
                ws2 = await websockets.connect(ws_url(topo), open_timeout=20)
                clients[i] = ws2
                await ws2.send(
                    json.dumps({"type": "SUBSCRIBE", "collection": coll, "lastId": seen[i][-1]})
                )
                while len(seen[i]) < 6:
                    frame = json.loads(await asyncio.wait_for(ws2.recv(), 20))
                    seen[i] += [e["id"] for e in frame.get("events", [])]
    finally:
        for ws in clients:
            await ws.close()
        victim.start()  # back for any later test
    assert resumed >= 1  # least_conn put some sockets on the drained node
    for ids in seen:
        assert ids == [first, *posted]
