"""PostgreSQL test fixtures: the shared server and a private cluster.

Loaded for the whole test run (``pytest_plugins`` in ``tests/conftest.py``), so the
conformance run uses the same server.

``pg_url`` points at ``$LAYERS_TEST_POSTGRES_URL`` (default the local ``test``
database) with this suite's own schema. ``private_cluster`` runs ``initdb`` and
``pg_ctl`` on a spare port so a test can restart the server; ``pgbouncer`` puts a
PgBouncer in transaction mode in front of the shared server. Missing servers skip,
or fail when ``LAYERS_TEST_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import urlencode, urlsplit

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


def _free_port(ports: range = range(15433, 15441)) -> int | None:
    for port in ports:
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


def _pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer",) if os.access(path, os.X_OK)), None
    )


@pytest.fixture(scope="session")
def pgbouncer(pg_server: str) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of the shared server: its URL.

    Started on a spare port in 16433-16440 from a configuration of its own, as the
    ``postgres`` OS user (PgBouncer refuses to run as root), and stopped by its PID.
    """
    binary = _pgbouncer_binary()
    if binary is None:
        unavailable("no pgbouncer binary (apt-get install pgbouncer)")
    parts = urlsplit(pg_server)
    port = _free_port(range(16433, 16441))
    if port is None:
        unavailable("no free port in 16433-16440 for PgBouncer")
    tmp = tempfile.mkdtemp(prefix="layers-pgbouncer-")
    os.chmod(tmp, 0o777)
    database = parts.path.lstrip("/") or "postgres"
    config = f"{tmp}/pgbouncer.ini"
    with open(config, "w", encoding="utf-8") as out:
        out.write(
            "[databases]\n"
            f"{database} = host={parts.hostname} port={parts.port or 5432}"
            f" dbname={database} user={parts.username or 'postgres'}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            "auth_type = any\npool_mode = transaction\n"
            "max_client_conn = 1000\ndefault_pool_size = 40\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {tmp}/pgbouncer.log\n"
        )
    os.chmod(config, 0o644)
    log = f"{tmp}/pgbouncer.log"
    # Dropped to the postgres user by this process itself (not runuser), so the PID
    # is PgBouncer's own: stopped and reaped by it.
    user = (
        {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
    )
    process = subprocess.Popen(
        [binary, config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **user,  # type: ignore[arg-type]
    )
    url = f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{port}/{database}"
    try:
        for _ in range(100):
            if process.poll() is not None:
                said = ""
                if os.path.exists(log):
                    with open(log, encoding="utf-8", errors="replace") as out:
                        said = out.read()[-500:].strip()
                unavailable(f"PgBouncer did not start (exit {process.returncode}): {said}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            unavailable("PgBouncer did not listen within 5 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(tmp, ignore_errors=True)
