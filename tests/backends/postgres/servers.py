"""PostgreSQL test fixtures: the shared server and a private cluster.

Loaded for the whole test run (``pytest_plugins`` in ``tests/conftest.py``), so the
conformance run uses the same server.

``pg_url`` points at ``$LAYERS_TEST_POSTGRES_URL`` (default the local ``test``
database) with this suite's own schema. ``private_cluster`` runs ``initdb`` and
``pg_ctl`` on a spare port so a test can restart the server. Missing servers skip,
or fail when ``LAYERS_TEST_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import urlencode

import pytest

from ..helpers import unavailable

BASE_URL = os.environ.get("LAYERS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "layers_test_pg"


def _psycopg() -> ModuleType:
    """The driver, imported when a test needs it (a missing one skips that test)."""
    return pytest.importorskip("psycopg")


def with_params(url: str, **params: object) -> str:
    """Append query parameters to a URL."""
    sep = "&" if "?" in url else "?"
    return url + sep + urlencode({k: str(v) for k, v in params.items()})


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The shared server's URL (without a schema), or skip."""
    psycopg = _psycopg()
    try:
        with psycopg.connect(BASE_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at {BASE_URL} is not reachable: {exc}")
    return BASE_URL


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """URL of the shared server with this suite's schema."""
    return with_params(pg_server, schema=SCHEMA)


@pytest.fixture
def fresh_schema(pg_server: str) -> Iterator[str]:
    """A schema name that does not exist yet; dropped afterwards."""
    name = f"layers_test_pg_{uuid.uuid4().hex[:10]}"
    yield name
    with _psycopg().connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    """Run one statement on a fresh autocommit connection and return its rows."""
    with _psycopg().connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


@dataclass
class Cluster:
    """A private PostgreSQL cluster the test may restart."""

    bindir: str
    datadir: str
    port: int
    logfile: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` as the ``postgres`` OS user."""
        cmd = [f"{self.bindir}/pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", *args]
        subprocess.run(_as_postgres(cmd), check=True, capture_output=True, timeout=60)

    def restart(self) -> None:
        """Stop (fast mode: clients are disconnected) and start again on the same port."""
        self.ctl("-m", "fast", "-o", f"-p {self.port} -k {self.datadir}", "restart")


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _free_port() -> int | None:
    for port in range(15433, 15441):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return None


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[Cluster]:
    """initdb + pg_ctl start on a spare port in 15433-15440; stopped and removed after."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        unavailable("no initdb binary (/usr/lib/postgresql/*/bin)")
    port = _free_port()
    if port is None:
        unavailable("no free port in 15433-15440 for a private cluster")
    bindir = os.path.dirname(initdb)
    tmp = tempfile.mkdtemp(prefix="layers-pg-")
    os.chmod(tmp, 0o777)
    cluster = Cluster(bindir, f"{tmp}/data", port, f"{tmp}/log")
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", cluster.datadir, "-A", "trust", "-U", "postgres"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        cluster.ctl("-o", f"-p {port} -k {cluster.datadir}", "start")
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        unavailable(f"could not start a private PostgreSQL cluster: {exc}")
    try:
        yield cluster
    finally:
        try:
            cluster.ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
