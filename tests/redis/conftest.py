"""Redis test fixtures: the shared server, and throwaway servers and a Sentinel.

Throwaway ``redis-server`` processes listen on spare loopback ports in 16380-16420,
keep no data on disk, and are stopped at the end of the test (or session). A missing
server or binary skips the test with the reason, or fails it when
``LAYERS_TEST_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

PORTS = range(16380, 16421)
REQUIRE = os.environ.get("LAYERS_TEST_REQUIRE_SERVICES") == "1"
_taken: set[int] = set()


def unavailable(reason: str) -> None:
    """Skip (or fail, in CI) a test whose service is missing."""
    if REQUIRE:
        pytest.fail(reason)
    pytest.skip(reason)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def spare_port() -> int:
    """Return a free loopback port in 16380-16420 not handed out before in this run."""
    for port in PORTS:
        if port not in _taken and _port_free(port):
            _taken.add(port)
            return port
    unavailable("no free loopback port in 16380-16420")
    raise AssertionError("unreachable")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_cli(port: int, *args: str) -> str:
    """Run one command with redis-cli against a loopback port; return its output."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    )
    return out.stdout.strip()


class RedisProcess:
    """A redis-server (or sentinel) we started, which tests may stop and restart."""

    def __init__(self, workdir: Path, port: int, *args: str, sentinel: bool = False) -> None:
        self.workdir = workdir
        self.port = port
        self.args = args
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.sentinel:
            conf = self.workdir / f"sentinel-{self.port}.conf"
            conf.write_text("\n".join(self.args) + "\n")
            cmd = ["redis-server", str(conf), "--sentinel", "--port", str(self.port)]
        else:
            cmd = ["redis-server", "--port", str(self.port), *self.args]
        cmd += ["--bind", "127.0.0.1", "--dir", str(self.workdir)]
        if not self.sentinel:
            cmd += ["--save", "", "--appendonly", "no"]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                unavailable(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[list[RedisProcess]]:
    """The throwaway servers started by ``spawn`` in this test; stopped afterwards."""
    servers: list[RedisProcess] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def spawn(redis_servers: list[RedisProcess], tmp_path: Path):  # type: ignore[no-untyped-def]
    """``spawn(*args)`` starts a throwaway redis-server and returns it."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")

    def start(*args: str, sentinel: bool = False) -> RedisProcess:
        server = RedisProcess(tmp_path, spare_port(), *args, sentinel=sentinel)
        redis_servers.append(server)
        server.start()
        return server

    return start


class SentinelSetup:
    """A master, one replica and one sentinel monitoring them as ``mymaster``."""

    def __init__(self, master: RedisProcess, replica: RedisProcess, sentinel: RedisProcess):
        self.master = master
        self.replica = replica
        self.sentinel = sentinel

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/mymaster/0"

    def master_port(self) -> int:
        out = redis_cli(self.sentinel.port, "SENTINEL", "get-master-addr-by-name", "mymaster")
        return int(out.split()[1])


@pytest.fixture
def sentinel_setup(spawn) -> SentinelSetup:  # type: ignore[no-untyped-def]
    master = spawn()
    replica = spawn("--replicaof", "127.0.0.1", str(master.port))
    sentinel = spawn(
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1",
        "sentinel down-after-milliseconds mymaster 2000",
        "sentinel failover-timeout mymaster 10000",
        sentinel=True,
    )
    deadline = time.monotonic() + 20
    while True:
        replicas = redis_cli(sentinel.port, "SENTINEL", "replicas", "mymaster")
        synced = "master_link_status:up" in redis_cli(replica.port, "INFO", "replication")
        if synced and str(replica.port) in replicas:
            break
        if time.monotonic() > deadline:
            unavailable("the sentinel did not discover the replica in time")
        time.sleep(0.2)
    return SentinelSetup(master, replica, sentinel)


@pytest.fixture
def shared_url() -> str:
    """The shared Redis (``LAYERS_TEST_REDIS_URL``) on database 2, with a fresh prefix."""
    base = os.environ.get("LAYERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(base)
    port = parts.port or 6379
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(1)
        if sock.connect_ex((parts.hostname or "127.0.0.1", port)) != 0:
            unavailable(f"no Redis server at {base}")
    return parts._replace(path="/2", query=f"prefix=t{uuid.uuid4().hex[:10]}").geturl()


CLUSTER_PORTS = range(7100, 7990)


def _cluster_ports(count: int) -> list[int]:
    """``count`` free loopback ports in 7100-7989 whose bus ports (+10000) are free too."""
    start = 7100 + (os.getpid() * 7) % 800
    found: list[int] = []
    for offset in range(len(CLUSTER_PORTS)):
        port = CLUSTER_PORTS[(start - 7100 + offset) % len(CLUSTER_PORTS)]
        if port in _taken or not (_port_free(port) and _port_free(port + 10000)):
            continue
        _taken.add(port)
        found.append(port)
        if len(found) == count:
            return found
    unavailable("no free loopback ports for a Redis Cluster in 7100-7989")
    raise AssertionError("unreachable")


class RedisCluster:
    """Six ``redis-server --cluster-enabled yes`` nodes: three primaries, three replicas."""

    NODE_TIMEOUT_MS = 1000

    def __init__(self, workdir: Path, ports: list[int]) -> None:
        self.workdir = workdir
        self.nodes = [
            RedisProcess(
                workdir,
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(self.NODE_TIMEOUT_MS),
                "--cluster-replica-validity-factor",
                "0",
            )
            for port in ports
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL with two seeds."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"

    def node(self, port: int) -> RedisProcess:
        return next(node for node in self.nodes if node.port == port)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        out = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            self.stop()
            unavailable(f"redis-cli --cluster create failed: {out.stdout[-2000:]}{out.stderr}")
        self.wait_agreement()

    def running(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_agreement(self, timeout: float = 60) -> None:
        """Wait until every running node says ``cluster_state:ok`` and has the same slot map."""
        deadline = time.monotonic() + timeout
        while True:
            states = [redis_cli(n.port, "CLUSTER", "INFO") for n in self.running()]
            maps = {self.slot_map(n.port) for n in self.running()}
            replicas_synced = all(
                "master_link_status:up" in redis_cli(n.port, "INFO", "replication")
                for n in self.running()
                if "role:slave" in redis_cli(n.port, "INFO", "replication")
            )
            if all("cluster_state:ok" in s for s in states) and len(maps) == 1 and replicas_synced:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not agree in {timeout}s: {states}")
            time.sleep(0.2)

    def slot_map(self, port: int) -> tuple[tuple[str, ...], ...]:
        """Each primary's ``host:port`` and slot ranges, as one node sees them."""
        rows = []
        for line in redis_cli(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) >= 8 and "master" in fields[2] and "fail" not in fields[2]:
                rows.append((fields[1].split("@")[0], *sorted(fields[8:])))
        return tuple(sorted(rows))

    def primaries(self) -> list[int]:
        """Ports of the primaries that own slots, as the first running node sees them."""
        out = []
        for row in self.slot_map(self.running()[0].port):
            if len(row) > 1:
                out.append(int(row[0].rpartition(":")[2]))
        return out

    def cli(self, port: int, *args: str) -> str:
        """Run one redis-cli command on the node at ``port``."""
        return redis_cli(port, *args)

    def node_id(self, port: int) -> str:
        return redis_cli(port, "CLUSTER", "MYID")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real six-node Redis Cluster on loopback, shared by the session's cluster tests."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            unavailable(f"{binary} is not installed (needed for the Redis Cluster tests)")
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"), _cluster_ports(6))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
