"""The demo and the layers command."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from typing import Any

import pytest

from layers.backends.memory import MemoryChannelLayer
from layers.cli import main
from layers.conformance_tests.plugin import async_test
from layers.core.errors import BackendError
from layers.demo import run_demo


@async_test
async def test_demo_scenario_delivers_everything_once() -> None:
    report = await run_demo(MemoryChannelLayer(), requests=60, listeners=4, broadcasts=5, fifo=100)
    assert report.ok, report.lines()
    assert len(report.latencies) == 60
    assert sum(report.answered_by.values()) == 60
    assert report.broadcasts_delivered == report.broadcasts_expected == 20
    assert report.fifo_count == 100


def test_a_send_that_fails_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    """The error reaches the caller; the demo's reading tasks do not log it again."""

    class Failing(MemoryChannelLayer):
        async def send(self, channel: str, message: dict[str, Any]) -> None:
            if message.get("type") == "demo.fifo" and message["i"] == 50:
                raise BackendError("the store went away")
            await super().send(channel, message)

    with pytest.raises(BackendError, match="went away"):
        asyncio.run(run_demo(Failing(), requests=20, listeners=2, broadcasts=3, fifo=100))
    gc.collect()  # a task that failed unseen logs when it is collected
    assert "never retrieved" not in caplog.text


def test_a_fifo_consumer_that_fails_stops_the_demo(caplog: pytest.LogCaptureFixture) -> None:
    """The producer, held back by a full channel, does not wait forever for it."""

    class FailingReads(MemoryChannelLayer):
        reads = 0

        async def receive(self, channel: str) -> dict[str, Any]:
            if channel.endswith(".fifo"):
                self.reads += 1
                if self.reads > 10:
                    raise BackendError("the store went away")
            return await super().receive(channel)

    async def main() -> None:
        layer = FailingReads(capacity=20)
        await asyncio.wait_for(
            run_demo(layer, requests=20, listeners=2, broadcasts=3, fifo=100), timeout=60
        )

    with pytest.raises(BackendError, match="went away"):
        asyncio.run(main())
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_layers_demo_command_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "layers", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "result              OK" in result.stdout
    assert "group broadcast" in result.stdout


def test_demo_refuses_processes_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--processes", "2"]) == 2
    assert "one process only" in capsys.readouterr().err


def test_unknown_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonsense"]) == 2
    assert "usage: layers COMMAND" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_backends_command_lists_memory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    assert "memory" in capsys.readouterr().out


def test_demo_across_processes_on_sqlite(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    result = subprocess.run(
        [sys.executable, "-m", "layers", "demo", "--url", url, "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 worker process(es)" in result.stdout
    assert "duplicates: 0" in result.stdout
    assert "result              OK" in result.stdout
