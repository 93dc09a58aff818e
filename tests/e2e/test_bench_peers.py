"""nginx + nchan as the peer benchmark runs it (bench/nchan_server.py, bench/peer_bench.py).

The generated config must pass ``nginx -t``, and a record POSTed to its publisher location must
reach WebSocket subscribers of that channel only: through a plain websockets client, and through
the C load client's nchan mode, which must count every message and its latency. Skipped with a
reason where nginx, the nchan module (``libnginx-mod-nchan``) or gcc is missing.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support import ROOT

pytestmark = pytest.mark.nginx


def bench_module(name: str) -> ModuleType:
    """A script of bench/ (not a package: the scripts import each other by name)."""
    path = str(ROOT / "bench")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


nchan_server = bench_module("nchan_server")
peer_bench = bench_module("peer_bench")
fanout_bench = bench_module("fanout_bench")


def require_nchan() -> None:
    try:
        nchan_server.find_nginx()
        nchan_server.find_module()
    except nchan_server.NchanMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def nchan() -> Iterator[Any]:
    require_nchan()
    server = nchan_server.NchanServer(workers=1, max_connections=200).start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.dir.exists(), "the temp directory was left behind"


@pytest.mark.parametrize("workers", [1, 2])
def test_generated_config_passes_nginx_t(workers: int) -> None:
    require_nchan()
    server = nchan_server.NchanServer(workers=workers, max_connections=10_000)
    try:
        checked = server.check()
        conf = (server.dir / "nginx.conf").read_text()
    finally:
        server.stop()
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
    assert f"worker_processes {workers};" in conf
    assert "nchan_subscriber websocket;" in conf


async def test_subscriber_receives_a_published_record_of_its_channel_only(nchan: Any) -> None:
    port = nchan.port
    poster = peer_bench.NchanPoster(port, "", 2, 1, 1, record_bytes=peer_bench.RECORD_BYTES)
    async with (
        connect(f"ws://127.0.0.1:{port}/sub/c0", compression=None) as c0,
        connect(f"ws://127.0.0.1:{port}/sub/c1", compression=None) as c1,
    ):
        await asyncio.sleep(0.2)  # nchan subscribes once the handshake is done
        assert await asyncio.to_thread(poster._post_once, 0), "nchan refused the publish"
        frame = await asyncio.wait_for(c0.recv(), 5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c1.recv(), 0.3)
    record = json.loads(frame)
    assert record["id"] == "r0" and "sent" in record
    assert abs(len(frame) - peer_bench.RECORD_BYTES) <= 2  # the benchmark's record size


def test_load_client_nchan_mode_counts_every_message(nchan: Any, tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (the load client is C)")
    binary = fanout_bench.build_client(tmp_path)
    port = nchan.port
    client = fanout_bench.LoadClient(binary, None, port, "/sub/c{c}", 20, 2, protocol="nchan")
    try:
        assert client.ready.wait(10), "the subscribers did not connect"
        assert client.subscribed == 20
        poster = peer_bench.NchanPoster(port, "", 2, 50, 0.4, threads=2, record_bytes=512)
        poster.run()
        assert poster.ok == 20 and poster.failed == 0
        client.settle(20 * 10, timeout=10)
        res = client.finish()
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
    assert client.subs == [10, 10]
    assert res["events"] == 200 and res["frames"] == 200  # one record per frame, each counted
    assert res["lat_n"] == 200 and 0 < res["p99_ms"] < 5000
