"""The live console page in headless Chromium (playwright) against the real dev stack.

The page must show an event posted to ingest, post a test webhook itself (through the dev
server's relay to ingest), and resume from the last id after a disconnect without gaps or
duplicates, using the SDK's frames.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.browser import chromium_page
from tests.support.dev_stack import DevStack
from tests.support.ingest_http import post_titled

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with DevStack(args=["--quiet"]) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def _post(stack: DevStack, coll: str, title: str) -> str:
    status, answer = post_titled(f"http://127.0.0.1:{stack.ingest_port}", coll, title, stack.token)
    assert status == 200, answer
    return str(answer["id"])


def _titles(b: Page) -> list[str]:
    return list(
        b.evaluate(
            "[...document.querySelectorAll('#events li')].map(li => JSON.parse("
            "li.textContent.split('  ').slice(2).join('  ')).record?.title ?? null)"
        )
    )


def test_console_shows_posts_and_resumes(stack: DevStack, browser: Page) -> None:
    coll = f"console{os.getpid()}"
    browser.goto(f"{stack.console_url}/?collection={coll}&autoconnect=1")
    browser.wait_for_function("document.getElementById('status').textContent === 'connected'")
    browser.wait_for_function(
        f"window.vskiConsole.frames.some(f => f.type === 'SUBSCRIBED' && f.collection === '{coll}')"
    )

    # 1. an event posted straight to ingest appears in the page, in the DOM
    first = _post(stack, coll, "from-ingest")
    browser.wait_for_function(f"document.querySelector('#events li[data-id=\"{first}\"]') !== null")
    assert _titles(browser) == ["from-ingest"]

    # 2. the page's own form posts through the dev server's relay to ingest
    browser.fill("#record", '{"title": "from-page"}')
    browser.click("#post")
    browser.wait_for_function(
        "document.getElementById('postResult').textContent.startsWith('200 ')"
    )
    browser.wait_for_function("window.vskiConsole.events.length === 2")
    assert _titles(browser) == ["from-ingest", "from-page"]
    last = browser.evaluate("window.vskiConsole.events[1].id")
    assert browser.evaluate("document.getElementById('lastId').value") == last

    # 3. disconnect, miss two events, connect again: resumes from the lastId field
    browser.click("#disconnect")
    browser.wait_for_function("document.getElementById('status').textContent === 'disconnected'")
    missed = [_post(stack, coll, "missed-1"), _post(stack, coll, "missed-2")]
    browser.click("#connect")
    browser.wait_for_function("window.vskiConsole.events.length >= 4")
    ids = browser.evaluate("window.vskiConsole.events.map(e => e.id)")
    assert ids[2:] == missed
    assert len(set(ids)) == len(ids) == 4
    assert _titles(browser) == ["from-ingest", "from-page", "missed-1", "missed-2"]
    sub = browser.evaluate(
        "window.vskiConsole.frames.filter(f => f.type === 'SUBSCRIBED').map(f => f.last_id)"
    )
    assert len(sub) == 2 and sub[1] == missed[-1]  # SUBSCRIBED comes after the replay
    if os.environ.get("VSKI_SCREENSHOT"):
        browser.screenshot(path=os.environ["VSKI_SCREENSHOT"])


def test_console_replays_history_from_lastid_zero_on_the_second_node(
    stack: DevStack, browser: Page
) -> None:
    coll = f"replay{os.getpid()}"
    ids = [_post(stack, coll, f"old-{i}") for i in range(3)]
    browser.goto(f"{stack.console_url}/?collection={coll}&lastId=0&node=1&autoconnect=1")
    browser.wait_for_function("window.vskiConsole.events.length >= 3")
    assert browser.evaluate("document.getElementById('node').value").endswith(
        str(stack.fanout_port + 1)
    )
    assert browser.evaluate("window.vskiConsole.events.map(e => e.id)") == ids


def test_console_relay_refuses_what_ingest_refuses(stack: DevStack) -> None:
    req = urllib.request.Request(
        f"{stack.console_url}/api/webhook",
        data=b'{"collection": "bad name!", "action": "x"}',
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("expected 422")
    except urllib.error.HTTPError as exc:
        assert exc.code == 422
        assert "error" in json.loads(exc.read())
