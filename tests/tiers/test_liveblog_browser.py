"""The liveblog end to end, as a reader sees it: headless Chromium on the three tiers.

Two ``layers serve`` processes and two ``layers worker`` processes share one backend
(SQLite, Redis, then PostgreSQL). Four pages (two per interface server) connect; posts are published
through both servers, one worker is killed and restarted midway, and every page must
show every post exactly once, in order.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` package (it
drives the system browser; no browser is downloaded). Without them the test skips on a
laptop and fails in CI (``LAYERS_TEST_REQUIRE_SERVICES=1``). Set
``LAYERS_DOCS_SCREENSHOT=1`` to refresh the docs' screenshot.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ROOT, Proc, unavailable
from .test_interface import free_port

ROUTING = "examples.liveblog.routing:channel_routing"
CHROMIUM = os.environ.get("LAYERS_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "_static" / "liveblog.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def _wait_http(base: str, proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{base} did not come up:\n{proc.output()}")
        time.sleep(0.1)


def _post(base: str, text: str) -> None:
    response = httpx.post(f"{base}/posts", data={"text": text}, timeout=20)
    assert response.status_code == 201, response.text


@pytest.mark.slow
def test_every_page_shows_every_post_once_in_order(
    any_cross_url: str,
    browser: Any,
    spawn: Callable[..., Proc],
    start_worker: Callable[..., Proc],
) -> None:
    cross_url = any_cross_url
    workers = [start_worker(cross_url, ROUTING) for _ in range(2)]
    bases, servers = [], []
    for _ in range(2):
        port = free_port()
        servers.append(spawn("-m", "layers", "serve", "--url", cross_url, "--port", str(port)))
        bases.append(f"http://127.0.0.1:{port}")
    for base, server in zip(bases, servers, strict=True):
        _wait_http(base, server)

    context = browser.new_context(viewport={"width": 900, "height": 600})
    pages = []
    for n in range(4):
        page = context.new_page()
        page.goto(bases[n % 2] + "/")
        page.wait_for_selector("#status.live", timeout=15_000)
        pages.append(page)

    expected = []

    def publish(n: int) -> None:
        text = f"update {n}: the three tiers are live"
        _post(bases[n % 2], text)
        expected.append(text)

    for n in range(5):
        publish(n)
    # One worker dies without warning; the other carries on, then it comes back.
    workers[0].popen.kill()
    workers[0].popen.wait(10)
    for n in range(5, 8):
        publish(n)
    workers[0] = start_worker(cross_url, ROUTING)
    for n in range(8, 11):
        publish(n)
    # And a reader publishes from the page's own form.
    pages[1].fill("#text", "posted from the browser")
    pages[1].click("button[type=submit]")
    expected.append("posted from the browser")

    for page in pages:
        page.wait_for_function(
            f"document.querySelectorAll('#posts li').length >= {len(expected)}", timeout=20_000
        )
    time.sleep(0.3)  # a duplicate would arrive within this
    for page in pages:
        shown = page.eval_on_selector_all("#posts li", "items => items.map(i => i.textContent)")
        assert shown == expected
    if os.environ.get("LAYERS_DOCS_SCREENSHOT"):
        pages[0].screenshot(path=str(SCREENSHOT), full_page=True)
    context.close()
    for proc in workers:
        assert proc.terminate() == 0, proc.output()
    for proc in servers:
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal.
        assert proc.terminate() in (0, -15), proc.output()
        assert "Traceback" not in proc.output()
