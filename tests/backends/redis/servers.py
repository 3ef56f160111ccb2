"""Redis test fixtures: the shared server, and throwaway servers, a Sentinel and a cluster.

Loaded for the whole test run (``pytest_plugins`` in ``tests/conftest.py``), so the
conformance run uses the same servers. Throwaway ``redis-server`` processes
(:mod:`benchmarks.servers`) listen on spare loopback ports in 16380-16420, keep no
data on disk, and are stopped at the end of the test (or session). A missing server
or binary skips the test with the reason, or fails it when
``LAYERS_TEST_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from benchmarks.servers import (
    RedisCluster,
    RedisProcess,
    ServerUnavailable,
    cluster_ports,
    port_free,
    redis_cli,
)

from ..helpers import unavailable

__all__ = ["RedisCluster", "RedisProcess", "SentinelSetup", "redis_cli", "spare_port"]

PORTS = range(16380, 16421)
_taken: set[int] = set()


def spare_port() -> int:
    """Return a free loopback port in 16380-16420 not handed out before in this run."""
    for port in PORTS:
        if port not in _taken and port_free(port):
            _taken.add(port)
            return port
    unavailable("no free loopback port in 16380-16420")


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[list[RedisProcess]]:
    """The throwaway servers started by ``spawn`` in this test; stopped afterwards."""
    servers: list[RedisProcess] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def spawn(redis_servers: list[RedisProcess], tmp_path: Path) -> Callable[..., RedisProcess]:
    """``spawn(*args)`` starts a throwaway redis-server and returns it."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")

    def start(*args: str, sentinel: bool = False) -> RedisProcess:
        server = RedisProcess(tmp_path, spare_port(), *args, sentinel=sentinel)
        redis_servers.append(server)
        try:
            server.start()
        except ServerUnavailable as exc:
            unavailable(str(exc))
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
def sentinel_setup(spawn: Callable[..., RedisProcess]) -> SentinelSetup:
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


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The shared Redis server's URL (``LAYERS_TEST_REDIS_URL``), once it answers."""
    base = os.environ.get("LAYERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(base)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1).close()
    except OSError:
        unavailable(f"no Redis server at {base}")
    return base


@pytest.fixture
def shared_url(redis_server: str) -> str:
    """The shared Redis on database 2, with a fresh prefix."""
    parts = urlsplit(redis_server)
    return parts._replace(path="/2", query=f"prefix=t{uuid.uuid4().hex[:10]}").geturl()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real six-node Redis Cluster on loopback, shared by the session's cluster tests."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            unavailable(f"{binary} is not installed (needed for the Redis Cluster tests)")
    try:
        cluster = RedisCluster(tmp_path_factory.mktemp("cluster"), cluster_ports(6, _taken))
        cluster.start()
    except ServerUnavailable as exc:
        unavailable(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()
