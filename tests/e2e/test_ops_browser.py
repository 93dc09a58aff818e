"""The operations page (``/admin/``) in headless Chromium against a running stack: gunicorn
ingest and two fanout nodes with a 0.5 s heartbeat.

A wrong key is refused and shows nothing; with the key both nodes appear; a webhook moves the
webhooks chart; a group member that never acknowledges shows up as a stuck group; the history
viewer finds a posted event; a killed node leaves the page within one TTL. With
``VSKI_SCREENSHOTS=1`` the test also writes the screenshots of docs/operations-view.md into
docs/img/ (under load, so that the charts have something to show).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support import ROOT
from tests.support.browser import chromium_page
from tests.support.ingest_http import post_webhook, webhook_body
from tests.support.ops import ADMIN_KEY, TTL, ops_env, unique_prefix
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack, stack_on
from tests.support.tokens import make_token

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

IMG = ROOT / "docs" / "img"


@pytest.fixture(scope="module")
def stack(redis_mod: RedisServer) -> Iterator[Stack[Any]]:
    env = ops_env(unique_prefix("opspage"))
    with stack_on(
        redis_mod,
        2,
        ingest_env={**env, "REALTIME_ADMIN_KEY": ADMIN_KEY},
        FANOUT_GROUP_VISIBILITY_SECONDS="1",
        **env,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def page(stack: Stack[Any]) -> Iterator[Page]:
    with chromium_page() as p:
        p.set_viewport_size({"width": 1360, "height": 1000})
        errors: list[str] = []
        p.on("pageerror", lambda e: errors.append(str(e)))
        p.goto(f"{stack.ingest.url}/admin/")
        yield p
        assert errors == [], f"errors in the page: {errors}"


def wait_js(page: Page, expression: str, timeout: float = 15) -> None:
    """Poll a JS expression from here: ``wait_for_function`` evaluates it with ``eval`` inside
    the page, which the page's Content-Security-Policy (rightly) forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout}s: {expression}"
        time.sleep(0.1)


def rows(page: Page, selector: str) -> int:
    return int(page.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))


def use_key(page: Page, key: str) -> None:
    page.fill("#key", key)
    page.click("#useKey")


def post(stack: Stack[Any], coll: str, n: int, **record: Any) -> str:
    body = webhook_body(collection=coll, record_id=f"r{n}", record={"id": f"r{n}", **record},
                        timestamp=f"{time.time()}")  # fmt: skip
    reply = post_webhook(stack.ingest.port, body)
    assert reply.status == 200, reply.body
    return str(reply.json()["id"])


@contextlib.contextmanager
def group_member(stack: Stack[Any], node: int, coll: str, group: str) -> Iterator[ClientConnection]:
    """A member that never acknowledges what it receives."""
    url = f"{stack.nodes[node].ws_url}/api/realtime?db=postgres&auth={make_token()}"
    with connect(url, open_timeout=10, compression=None) as ws:
        ws.send(json.dumps({"type": "SUBSCRIBE", "collection": coll, "group": group}))
        assert json.loads(ws.recv(10))["type"] == "SUBSCRIBED"
        yield ws


def test_1_a_wrong_key_is_refused_and_shows_nothing(page: Page) -> None:
    wait_js(page, "document.getElementById('authError').textContent.includes('admin key')")
    use_key(page, "not-the-key")
    wait_js(page, "document.getElementById('authError').textContent.includes('refused')")
    assert page.is_visible("#authError")
    assert rows(page, "#nodes tr[data-node-id]") == 0
    assert page.evaluate("sessionStorage.getItem('vskiAdminKey')") is None


def test_2_with_the_key_both_fanout_nodes_and_ingest_appear(page: Page, stack: Stack[Any]) -> None:
    use_key(page, ADMIN_KEY)
    wait_js(
        page,
        "document.querySelectorAll('#nodes tr[data-role=fanout][data-state=ok]').length === 2"
        " && document.querySelectorAll('#nodes tr[data-role=ingest]').length === 1",
    )
    assert not page.is_visible("#authError")
    addresses = page.evaluate("window.vskiOps.nodes.map(n => n.address)")
    want = {n.env["FANOUT_BIND"] for n in stack.nodes} | {stack.ingest.env["INGEST_BIND"]}
    assert set(addresses) == want
    assert page.evaluate("sessionStorage.getItem('vskiAdminKey')") == ADMIN_KEY
    assert page.evaluate("localStorage.length") == 0


def test_3_a_webhook_moves_the_chart(page: Page, stack: Stack[Any]) -> None:
    wait_js(page, "window.vskiOps.samples.x.length >= 3")
    before = page.evaluate("document.querySelector('#chartWebhooks canvas').toDataURL()")
    coll = f"chart{int(time.time())}"
    for i in range(10):
        post(stack, coll, i)
    wait_js(page, "window.vskiOps.samples.webhooks['all ingest']?.some(v => v > 0)", timeout=15)
    page.wait_for_timeout(600)  # one more redraw
    after = page.evaluate("document.querySelector('#chartWebhooks canvas').toDataURL()")
    assert after != before, "the webhooks chart did not change"
    page.wait_for_selector(f"#collections tr[data-collection='{coll}']", timeout=15_000)


def test_4_a_member_that_never_acknowledges_shows_as_a_stuck_group(
    page: Page, stack: Stack[Any]
) -> None:
    coll = f"stuck{int(time.time())}"
    with group_member(stack, 1, coll, "mailers"):
        for i in range(3):
            post(stack, coll, i)
        page.wait_for_selector(
            f"#groups tr[data-group='mailers'][data-collection='{coll}'][data-stuck='1']",
            timeout=20_000,
        )
        text = page.inner_text(f"#groups tr[data-collection='{coll}']")
        assert "stuck" in text and "3" in text


def test_5_the_history_viewer_finds_a_posted_event(page: Page, stack: Stack[Any]) -> None:
    coll = f"hist{int(time.time())}"
    ids = [post(stack, coll, i, title=f"needle-{i}") for i in range(3)]
    page.fill("#historyDb", "postgres")
    page.fill("#historyCollection", coll)
    page.click("#historyNewest")
    page.wait_for_selector(f"#history tr[data-event-id='{ids[1]}']")
    assert "needle-1" in page.inner_text(f"#history tr[data-event-id='{ids[1]}']")
    assert page.evaluate("window.vskiOps.history.map(e => e.id)") == ids[::-1]
    page.fill("#historyAfter", ids[0])
    page.fill("#historyLimit", "1")
    page.click("#historyOldest")
    wait_js(page, f"window.vskiOps.history.map(e => e.id).join() === {json.dumps(ids[1])}")
    page.click("#historyNext")
    wait_js(page, f"window.vskiOps.history.map(e => e.id).join() === {json.dumps(ids[2])}")


def test_6_a_killed_node_leaves_the_page_within_one_ttl(page: Page, stack: Stack[Any]) -> None:
    if os.environ.get("VSKI_SCREENSHOTS"):
        screenshots(page, stack)
    victim = stack.nodes[0]
    node_id = page.evaluate(
        f"window.vskiOps.nodes.find(n => n.address === {json.dumps(victim.env['FANOUT_BIND'])}).id"
    )
    victim.signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_js(
        page,
        f"!document.querySelector('#nodes tr[data-node-id={json.dumps(node_id)}]')",
        timeout=10,
    )
    gone = time.monotonic() - killed
    # one TTL, plus the page's poll interval (a heartbeat) and a redraw
    assert gone <= TTL + 0.5 + 1.0, f"the killed node left the page after {gone:.2f}s"
    assert rows(page, "#nodes tr[data-role=fanout]") == 1
    stack.ensure_up()


def screenshots(page: Page, stack: Stack[Any]) -> None:
    """The pictures of docs/operations-view.md, taken under a little load."""
    with contextlib.ExitStack() as held:
        held.enter_context(group_member(stack, 0, "orders", "invoicing"))
        url = "{}/api/realtime?db=postgres&auth=" + make_token()
        listeners = [
            held.enter_context(connect(url.format(n.ws_url))) for n in stack.nodes for _ in range(3)
        ]
        under_load(page, stack, listeners)
    assert Path(IMG / "operations-view.png").stat().st_size > 20_000


def under_load(page: Page, stack: Stack[Any], listeners: list[ClientConnection]) -> None:
    stop = threading.Event()
    for ws in listeners:
        for coll in ("orders", "carts", "posts"):
            ws.send(json.dumps({"type": "SUBSCRIBE", "collection": coll}))

    def load() -> None:
        n = 0
        while not stop.is_set():
            for coll, every in (("orders", 1), ("carts", 2), ("posts", 5), ("audit", 7)):
                if n % every == 0:
                    post(stack, coll, n, total=n * 3)
            n += 1
            time.sleep(0.05)

    def drain() -> None:
        while not stop.is_set():
            for ws in listeners:
                try:
                    while True:
                        ws.recv(0)
                except TimeoutError:
                    pass
            time.sleep(0.05)

    threads = [
        threading.Thread(target=load, daemon=True),
        threading.Thread(target=drain, daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(14)
        page.fill("#historyCollection", "orders")
        page.fill("#historyAfter", "")
        page.fill("#historyLimit", "8")
        page.click("#historyNewest")
        page.wait_for_selector("#history tr[data-event-id]")
        page.wait_for_selector("#groups tr[data-group='invoicing'][data-stuck='1']", timeout=20_000)
        IMG.mkdir(exist_ok=True)
        page.screenshot(path=str(IMG / "operations-view.png"), full_page=True)
        page.locator("section.charts").screenshot(path=str(IMG / "operations-view-charts.png"))
    finally:
        stop.set()
        for t in threads:
            t.join(5)
