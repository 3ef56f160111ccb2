"""``layers inspect URL``: the real command in a subprocess, on a store shared with it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import layers


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layers", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _fill(url: str) -> None:
    async def fill() -> None:
        layer = layers.from_url(url, channel_capacity={"full.*": 2})
        for n in range(5):
            await layer.send("chat.busy", {"n": n})
        await layer.send("chat.quiet", {"n": 0})
        for n in range(2):
            await layer.send("full.one", {"n": n})
        for n in range(3):
            await layer.group_add("room.big", f"member{n}")
        await layer.group_add("room.small", "member0")
        await layer.aclose()

    asyncio.run(fill())


def test_inspect_prints_busiest_channels_and_groups(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/inspect.db"
    _fill(url)
    done = _inspect(url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "channels: 3 with messages, 8 pending, 0 full"
    rows = [line.split() for line in lines[2:5]]
    assert [row[0] for row in rows] == ["chat.busy", "full.one", "chat.quiet"]
    assert rows[0][1:3] == ["5", "100"]
    assert "groups: 2" in lines
    assert any(line.split() == ["room.big", "3"] for line in lines)
    # read-only: a second look sees the same
    assert _inspect(url).stdout.splitlines()[0] == lines[0]


def test_inspect_json_and_full_channels(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/inspect.db"
    _fill(url)
    done = _inspect(url, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["pending"] == 8
    by_name = {c["name"]: c for c in data["channels"]}
    assert by_name["chat.busy"]["pending"] == 5
    assert by_name["chat.busy"]["oldest_age"] >= 0
    assert {g["name"]: g["size"] for g in data["groups"]} == {"room.big": 3, "room.small": 1}
    # capacities come from the layer's options: the inspecting layer's, given in the URL
    done = _inspect(f"{url}?capacity=5", "--json")
    assert json.loads(done.stdout)["full_channels"] == 1


def test_inspect_watch_refreshes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/inspect.db"
    _fill(url)
    done = _inspect(url, "--watch", "0.1", "--count", "3", "--json")
    assert done.returncode == 0, done.stderr
    frames = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(frames) == 3
    assert all(frame["pending"] == 8 for frame in frames)


def test_inspect_bad_url_and_memory_note() -> None:
    done = _inspect("memory://?capcity=1")
    assert done.returncode == 2
    assert "Did you mean 'capacity'?" in done.stderr
    assert "Traceback" not in done.stderr
    done = _inspect("memory://")
    assert done.returncode == 0
    assert "keeps messages inside one process" in done.stderr
