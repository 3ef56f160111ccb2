"""Tier tests' fixtures: a layer URL per cross-process backend, and worker processes.

``cross_url`` is parametrized over SQLite (a temporary file), Redis
(``LAYERS_TEST_REDIS_URL``, a fresh prefix) and PostgreSQL (``LAYERS_TEST_POSTGRES_URL``, a
fresh schema). A missing server skips the test with the reason, or fails it when
``LAYERS_TEST_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REQUIRE = os.environ.get("LAYERS_TEST_REQUIRE_SERVICES") == "1"
HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(reason)
    pytest.skip(reason)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ).close()
    except OSError:
        return False
    return True


def redis_url() -> str:
    base = os.environ.get("LAYERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not _reachable(base, 6379):
        unavailable(f"no Redis server at {base}")
    parts = urlsplit(base)
    return parts._replace(path="/3", query=f"prefix=tier{uuid.uuid4().hex[:8]}").geturl()


def postgres_url() -> Iterator[str]:
    base = os.environ.get("LAYERS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if not _reachable(base, 5432):
        unavailable(f"no PostgreSQL server at {base}")
    import psycopg

    schema = f"layers_tier_{uuid.uuid4().hex[:8]}"
    yield f"{base}?schema={schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'tiers.db'}"
    elif kind == "redis":
        yield redis_url()
    else:
        yield from postgres_url()


@pytest.fixture(params=["sqlite", "redis"])
def cross_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A layer URL that several processes share: SQLite, Redis."""
    yield from _url(request.param, tmp_path)


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def any_cross_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A layer URL that several processes share: SQLite, Redis, PostgreSQL."""
    yield from _url(request.param, tmp_path)


def child_env() -> dict[str, str]:
    """Environment for child processes: the test apps importable, warnings shown."""
    path = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


class Proc:
    """A child process whose output is collected in a file (no pipe to fill up)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(
            args, stdout=self._file, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from {self.popen.args}:\n{self.output()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        finally:
            self._file.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._file.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start child processes (``spawn(*args)``); every one is killed at the end."""
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        proc = Proc([sys.executable, *args], tmp_path / f"proc{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


@pytest.fixture
def start_worker(spawn: Callable[..., Proc]) -> Callable[..., Proc]:
    """Start ``layers worker`` on a routing table; returns once its status line is out."""

    def start(url: str, routing: str = "tiers_app:channel_routing", *args: str) -> Proc:
        proc = spawn("-m", "layers", "worker", routing, "--url", url, *args)
        proc.wait_for_output("layers worker: layer")
        return proc

    return start
