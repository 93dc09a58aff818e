"""The operations view as a newcomer meets it: ``vski-realtime dev`` prints the operations URL
(with the generated admin key after ``#key=``), that URL shows both fanout nodes live in a
browser, and ``vski-realtime status`` prints the same deployment as tables, finding the running
stack by itself or taking ``--ingest`` and ``--admin-key``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.browser import chromium_page
from tests.support.dev_stack import BIN, DevStack
from tests.support.ingest_http import post_titled

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.timeout(180)

CLI = str(BIN / "vski-realtime")


@pytest.fixture(scope="module")
def dev() -> Iterator[DevStack]:
    with DevStack(args=["--quiet"]) as s:
        yield s


def status(dev: DevStack, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "--state-dir", str(dev.state), "status", *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )


def ops_url(dev: DevStack) -> str:
    return dev.printed(r"^ops\s+http://").split()[1]


def test_the_banner_prints_the_operations_url_with_the_admin_key(dev: DevStack) -> None:
    url = ops_url(dev)
    key = (dev.state / "admin_key").read_text().strip()
    assert url == f"http://127.0.0.1:{dev.ingest_port}/admin/#key={key}"
    assert dev.info()["ops"] == f"http://127.0.0.1:{dev.ingest_port}/admin/"


def test_status_finds_the_running_stack_and_shows_both_nodes(dev: DevStack) -> None:
    deadline = time.monotonic() + 15
    while True:  # the registry fills within a heartbeat (2 s in the dev stack)
        out = status(dev)
        fanout_rows = [line for line in out.stdout.splitlines() if " fanout " in line]
        if len(fanout_rows) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out.returncode == 0, out.stderr
    assert len(fanout_rows) == 2, out.stdout
    for port in (dev.fanout_port, dev.fanout_port + 1):
        assert any(f"127.0.0.1:{port}" in row and row.split()[0] == "ok" for row in fanout_rows)
    assert any(
        " ingest " in line and f":{dev.ingest_port}" in line for line in out.stdout.splitlines()
    )
    assert "HOTTEST COLLECTIONS" in out.stdout and "CONSUMER GROUPS" in out.stdout


def test_status_json_and_explicit_flags_and_a_wrong_key(dev: DevStack) -> None:
    coll = f"cli{int(time.time())}"
    code, answer = post_titled(f"http://127.0.0.1:{dev.ingest_port}", coll, "from-cli", dev.token)
    assert code == 200, answer
    key = (dev.state / "admin_key").read_text().strip()
    ingest = f"http://127.0.0.1:{dev.ingest_port}"
    deadline = time.monotonic() + 10
    while True:
        out = status(dev, "--ingest", ingest, "--admin-key", key, "--json", "--limit", "50")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        names = [c["collection"] for c in data["collections"]["collections"]]
        if coll in names or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert coll in names
    assert data["status"]["totals"]["fanout"] == 2
    refused = status(dev, "--ingest", ingest, "--admin-key", "wrong")
    assert refused.returncode == 1 and "refused (401)" in refused.stderr
    assert refused.stdout == ""


@pytest.mark.browser
def test_the_printed_operations_url_shows_both_nodes_live(dev: DevStack) -> None:
    page: Page
    with chromium_page() as page:
        page.goto(ops_url(dev))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            fanout = page.evaluate(
                "document.querySelectorAll('#nodes tr[data-role=fanout][data-state=ok]').length"
            )
            if fanout == 2:
                break
            time.sleep(0.2)
        assert fanout == 2
        assert "#key=" not in page.url, "the key is taken out of the address bar"
        polls = page.evaluate("window.vskiOps.polls")
        time.sleep(4.5)  # live: the page keeps polling at the heartbeat
        assert page.evaluate("window.vskiOps.polls") > polls
