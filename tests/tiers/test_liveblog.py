"""The liveblog with HTTP and WebSocket clients: the Django variant, and one process.

Django: a ``post_save`` handler's ``Group("liveblog").send(...)`` reaches readers. Posts are
saved by a worker (``POST /posts``) and by a plain script (as a management command would),
both through the ORM in sync code; an open WebSocket must see both.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from .conftest import ROOT, Proc, child_env
from .test_interface import free_port
from .test_liveblog_browser import _wait_http

SETTINGS = "examples.liveblog.django_variant.settings"
ROUTING = "examples.liveblog.django_variant.routing:channel_routing"
SCRIPT = (
    "import django; django.setup(); "
    "from examples.liveblog.django_variant.models import Post; "
    "Post.objects.create(text='saved by a script')"
)


@pytest.mark.slow
def test_post_save_broadcasts_reach_an_open_page(
    tmp_path: Path, spawn: Callable[..., Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", SETTINGS)
    monkeypatch.setenv("LIVEBLOG_DATABASE", str(tmp_path / "liveblog.sqlite3"))
    monkeypatch.setenv("LIVEBLOG_LAYER_URL", f"sqlite:///{tmp_path}/layer.db")

    def run(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr

    run("-m", "django", "migrate", "--verbosity", "0")
    port = free_port()
    server = spawn("-m", "layers", "serve", "--layer", "default", "--port", str(port))
    worker = spawn("-m", "layers", "worker", ROUTING, "--layer", "default")
    worker.wait_for_output("layers worker: layer")
    _wait_http(f"http://127.0.0.1:{port}", server)

    async def scenario() -> list[dict[str, object]]:
        async with connect(f"ws://127.0.0.1:{port}/liveblog/") as ws:
            async with httpx.AsyncClient() as client:
                posted = await client.post(
                    f"http://127.0.0.1:{port}/posts", data={"text": "saved by a worker"}
                )
                assert posted.status_code == 201, posted.text
            await asyncio.to_thread(run, "-c", SCRIPT)
            async with asyncio.timeout(10):
                return [json.loads(await ws.recv()) for _ in range(2)]

    assert asyncio.run(scenario()) == [
        {"id": 1, "text": "saved by a worker"},
        {"id": 2, "text": "saved by a script"},
    ]
    assert worker.terminate() == 0, worker.output()
    assert server.terminate() in (0, -15), server.output()


@pytest.mark.slow
def test_the_liveblog_in_one_process_on_the_memory_backend(spawn: Callable[..., Proc]) -> None:
    """The README's development command: both tiers in one ``layers serve`` process."""
    port = free_port()
    server = spawn(
        "-m", "layers", "serve", "--url", "memory://", "--port", str(port),
        "--routing", "examples.liveblog.routing:channel_routing",
    )  # fmt: skip
    _wait_http(f"http://127.0.0.1:{port}", server)

    async def scenario() -> list[str]:
        async with connect(f"ws://127.0.0.1:{port}/liveblog/") as ws:
            async with httpx.AsyncClient() as client:
                page = await client.get(f"http://127.0.0.1:{port}/")
                assert "<h1>Liveblog</h1>" in page.text
                for text in ("one", "two"):
                    posted = await client.post(
                        f"http://127.0.0.1:{port}/posts", data={"text": text}
                    )
                    assert posted.status_code == 201
                missing = await client.get(f"http://127.0.0.1:{port}/nope")
                assert missing.status_code == 404
            async with asyncio.timeout(10):
                return [json.loads(await ws.recv())["text"] for _ in range(2)]

    assert asyncio.run(scenario()) == ["one", "two"]
    assert server.terminate() in (0, -15), server.output()
    assert "layers worker stopped: handled" in server.output()
