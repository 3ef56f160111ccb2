"""An idle SQLite receiver sleeps on file events (Linux): a commit by another process wakes it.

The figures (idle CPU, wake-up latency) are measured by ``python -m benchmarks.idle``;
this test checks the behaviour that makes them: with polling set to every 5 seconds,
a message sent by another process still arrives within a second.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layers.backends.sqlite import SqliteChannelLayer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="file events (inotify) are Linux-only"
)

_SEND = """
import asyncio, sys
from layers.backends.sqlite import SqliteChannelLayer
async def main():
    async with SqliteChannelLayer(path=sys.argv[1]) as layer:
        await layer.send("idle.wake", {"n": int(sys.argv[2])})
asyncio.run(main())
"""


def test_a_commit_by_another_process_wakes_an_idle_receiver_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "idle.db")

    async def scenario() -> list[float]:
        delays = []
        async with SqliteChannelLayer(path=path, poll_interval=5.0) as layer:
            for n in range(5):
                waiting = asyncio.ensure_future(layer.receive("idle.wake"))
                await asyncio.sleep(0.37)  # idle, at a different phase each time
                sender = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", _SEND, path, str(n)
                )
                assert await sender.wait() == 0
                sent = time.monotonic()
                assert await asyncio.wait_for(waiting, 10) == {"n": n}
                delays.append(time.monotonic() - sent)
        return delays

    delays = sorted(asyncio.run(scenario()))
    # Polling (every 5 s here, or the reader's periodic retry) would take hundreds
    # of milliseconds on most of these; a file event takes a few.
    assert delays[2] < 0.2, f"wake-up delays {delays}: it polled instead of sleeping on events"


def test_the_idle_benchmark_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.idle",
            "--seconds",
            "0.5",
            "--pings",
            "3",
            "--pause",
            "0.05",
            "--json",
            f"sqlite:///{tmp_path}/bench.db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[3],
    )
    assert done.returncode == 0, done.stderr
    assert '"idle_cpu_percent"' in done.stdout
    assert '"wakeup_median_ms"' in done.stdout
