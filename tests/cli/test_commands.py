"""The ``layers`` command run for real, in a subprocess: help, pipes, ``backends``, ``demo``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import layers


def _layers(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "layers", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        **kwargs,
    )


@pytest.mark.parametrize("args", [["--help"], ["backends"], ["demo", "--help"]])
def test_a_closed_pipe_ends_the_command_quietly(args: list[str]) -> None:
    """``layers --help | head``: the reader leaves; no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes anything
    try:
        done = subprocess.run(
            [sys.executable, "-m", "layers", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr, done.stderr
    assert "BrokenPipeError" not in done.stderr, done.stderr
    assert done.stderr == ""
    # 141 (128 + SIGPIPE) when the command noticed; argparse's own help printer
    # ignores the error and exits 0.
    assert done.returncode in (0, 141)


def test_every_demo_option_is_described() -> None:
    done = _layers("demo", "--help")
    assert done.returncode == 0
    options = done.stdout.split("options:")[1]
    lines = [line for line in options.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.lstrip().startswith("--"):
            described = len(line.split()) > 2 or (
                index + 1 < len(lines) and not lines[index + 1].lstrip().startswith("-")
            )
            assert described, f"option without a description: {line.strip()}"
    assert "round trips" in options


def test_backends_lists_only_what_can_build_a_layer() -> None:
    """A scheme whose backend refuses every URL of it is listed as unavailable, with why."""
    done = _layers("backends")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "layers.backends.memory.MemoryBackend" in rows["memory"]
    assert "unavailable" not in rows["redis+sentinel"]
    assert "unavailable" not in rows["sqlite"]
    problem = None
    try:
        layers.from_url("redis+cluster://127.0.0.1:7000")
    except layers.ConfigurationError as exc:
        problem = exc.problem
    if problem is None:  # the scheme is supported: it must be listed as such
        assert "unavailable" not in rows["redis+cluster"]
    else:
        assert "unavailable: " + problem in rows["redis+cluster"]


async def _seed(url: str) -> None:
    """Store a message and a group membership that belong to someone else."""
    async with layers.from_url(url) as layer:
        await layer.send("someone.else.jobs", {"keep": "me"})
        await layer.group_add("someone.else.group", "someone.else.member")


async def _check_and_clean(url: str) -> None:
    async with layers.from_url(url) as layer:
        async with asyncio.timeout(5):
            assert await layer.receive("someone.else.jobs") == {"keep": "me"}
        await layer.group_send("someone.else.group", {"still": "a member"})
        async with asyncio.timeout(5):
            assert await layer.receive("someone.else.member") == {"still": "a member"}
        await layer.flush()


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    base = os.environ.get("LAYERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    # A prefix of its own, so this test's checks (and its final flush) touch nothing else.
    return f"{base}{'&' if '?' in base else '?'}prefix=demo-test-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("processes", [0, 2])
def test_demo_leaves_other_data_alone(shared_url: str, processes: int) -> None:
    """``layers demo`` on a store in use: other channels' messages and groups survive."""
    asyncio.run(_seed(shared_url))
    args = ["demo", "--url", shared_url, "--requests", "20"]
    if processes:
        args += ["--processes", str(processes)]
    done = _layers(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result              OK" in done.stdout
    asyncio.run(_check_and_clean(shared_url))
