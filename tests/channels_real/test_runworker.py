"""Channels' ``runworker`` with a ChannelNameRouter, two worker processes, each message once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import layers

from .conftest import make_url

PROJECT = Path(__file__).parent / "workerproject"


def _start_worker(url: str, log: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "CHREAL_URL": url,
        "CHREAL_LOG": str(log),
        "DJANGO_SETTINGS_MODULE": "chreal_settings",
        "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "django", "runworker", "tasks"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(workers: list[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    for worker in workers:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
        outputs.append(out)
    return outputs


@pytest.mark.parametrize("backend", ["sqlite", "redis", "postgres"])
def test_two_runworker_processes_handle_each_message_once(backend: str, tmp_path: Path) -> None:
    url = make_url(backend, tmp_path)
    log = tmp_path / "handled.log"
    workers = [_start_worker(url, log) for _ in range(2)]
    total = 60
    try:
        time.sleep(2)  # both workers start and wait on the channel
        for worker in workers:
            assert worker.poll() is None, worker.communicate()[0]

        async def produce() -> None:
            layer = layers.from_url(url)
            for n in range(total):
                await layer.send("tasks", {"type": "task.run", "n": n}, wait=10)
            await layer.aclose()

        asyncio.run(produce())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= total:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate would show up now
    finally:
        outputs = _stop(workers)
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    handled = Counter(int(n) for _, n in lines)
    assert sorted(handled) == list(range(total)), outputs
    assert max(handled.values()) == 1, "a message was handled twice"
    assert len({pid for pid, _ in lines}) >= 1
    if backend == "postgres":
        import psycopg

        schema = url.rsplit("schema=", 1)[1]
        base = url.split("?")[0]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_runworker_on_memory_says_it_cannot_see_other_processes(tmp_path: Path) -> None:
    worker = _start_worker("memory://", tmp_path / "handled.log")
    try:
        time.sleep(2)  # started, built its layer, waiting on "tasks"
    finally:
        (output,) = _stop([worker])
    assert "memory backend" in output
    assert "other processes" in output
