"""Several OS processes on one SQLite file: first use, at-most-once, wake-ups."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from layers.backends.sqlite import SqliteChannelLayer

from .conftest import arun

WORKER = Path(__file__).with_name("_worker.py")

pytestmark = pytest.mark.slow


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start worker processes; kill any still running at the end of the test."""
    started: list[subprocess.Popen[str]] = []

    def start(**job: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(job)],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


def _result(proc: subprocess.Popen[str]) -> Any:
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_processes_starting_at_once_on_a_new_file(spawn: Any, db_path: Path) -> None:
    """Four processes create the file and schema together; every send lands once."""
    go = db_path.with_suffix(".go")
    procs = [
        spawn(mode="produce", path=str(db_path), go=str(go), channel="born", start=k * 50, count=50)
        for k in range(4)
    ]
    go.touch()
    assert [_result(p) for p in procs] == ["done"] * 4

    @arun
    async def read() -> None:
        async with SqliteChannelLayer(path=str(db_path), capacity=10_000) as layer:
            got = [(await layer.receive("born"))["i"] for _ in range(200)]
        assert sorted(got) == list(range(200))
        for k in range(4):  # each producer's messages keep their order
            mine = [i for i in got if k * 50 <= i < (k + 1) * 50]
            assert mine == sorted(mine)

    read()


@pytest.mark.parametrize("fallback", [False, True], ids=["returning", "fallback"])
def test_at_most_once_across_processes(spawn: Any, db_path: Path, fallback: bool) -> None:
    """Three processes drain one channel: disjoint, complete, each in order."""
    total = 600
    drains = [
        spawn(mode="drain", path=str(db_path), channel="work", fallback=fallback) for _ in range(3)
    ]
    for proc in drains:  # each opens the file at its first receive, while this one sends
        _wait_ready(proc)

    @arun
    async def send() -> None:
        async with SqliteChannelLayer(path=str(db_path), capacity=total) as layer:
            for i in range(total):
                await layer.send("work", {"i": i})

    send()
    parts = [_result(p) for p in drains]
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)), "a message reached two processes"
    assert sorted(flat) == list(range(total))
    for part in parts:
        assert part == sorted(part)


def test_round_trips_with_another_process(spawn: Any, db_path: Path) -> None:
    """Requests go to another process and replies come back on a reply channel."""
    echo = spawn(mode="echo", path=str(db_path), channel="echo")
    _wait_ready(echo)

    @arun
    async def talk() -> None:
        async with SqliteChannelLayer(path=str(db_path)) as layer:
            reply = await layer.new_channel()
            for n in range(50):
                await layer.send("echo", {"reply": reply, "n": n})
                assert await layer.receive(reply) == {"n": n}
            await layer.send("echo", {"stop": True})

    talk()
    assert _result(echo) == "stopped"


def test_the_example_runs(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "sqlite_processes.py"
    result = subprocess.run(
        [sys.executable, str(example), str(tmp_path / "example.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "4 squared is 16 (answered by another process)" in result.stdout
