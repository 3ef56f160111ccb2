"""Throwaway ``redis-server`` processes on loopback, for the benchmarks and the tests.

A :class:`RedisProcess` is one server (or sentinel) keeping no data on disk; a
:class:`RedisCluster` is six of them made a Redis Cluster (three primaries, three
replicas) with ``redis-cli --cluster create``. A server that cannot start raises
:class:`ServerUnavailable`: the benchmarks stop with its message, the tests skip (or
fail, in CI). Nothing here is stopped for you: call ``stop()``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "RedisCluster",
    "RedisProcess",
    "ServerUnavailable",
    "cluster_ports",
    "port_free",
    "redis_cli",
]

#: Where cluster nodes listen; each node's bus port is its port + 10000.
CLUSTER_PORTS = range(7100, 7990)


class ServerUnavailable(RuntimeError):
    """A server could not be started (missing binary, no free port, no answer)."""


def port_free(port: int) -> bool:
    """Whether a loopback port can be bound now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` free ports in 7100-7989 whose bus ports are free too, added to ``taken``."""
    start = (os.getpid() * 7) % 800
    found: list[int] = []
    for offset in range(len(CLUSTER_PORTS)):
        port = CLUSTER_PORTS[(start + offset) % len(CLUSTER_PORTS)]
        if port in taken or not (port_free(port) and port_free(port + 10000)):
            continue
        taken.add(port)
        found.append(port)
        if len(found) == count:
            return found
    raise ServerUnavailable("no free loopback ports for a Redis Cluster in 7100-7989")


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
    """A redis-server (or sentinel) on a loopback port, which may be stopped and restarted."""

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
        """Start it and wait (10 s at most) until it answers ``PING``."""
        if self.sentinel:
            conf = self.workdir / f"sentinel-{self.port}.conf"
            conf.write_text("\n".join(self.args) + "\n")
            cmd = ["redis-server", str(conf), "--sentinel", "--port", str(self.port)]
        else:
            cmd = ["redis-server", "--port", str(self.port), *self.args]
        cmd += ["--bind", "127.0.0.1", "--dir", str(self.workdir)]
        if not self.sentinel:
            cmd += ["--save", "", "--appendonly", "no"]
        with open(self.workdir / f"redis-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerUnavailable(f"redis-server on port {self.port} did not start")
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


class RedisCluster:
    """Six ``redis-server --cluster-enabled yes`` nodes: three primaries, three replicas."""

    NODE_TIMEOUT_MS = 1000

    def __init__(self, workdir: Path, ports: Iterable[int]) -> None:
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
        """Start the nodes, create the cluster and wait until every node agrees."""
        try:
            for node in self.nodes:
                node.start()
        except ServerUnavailable:
            self.stop()
            raise
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
        out = subprocess.run(
            [*create, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            self.stop()
            raise ServerUnavailable(
                f"redis-cli --cluster create failed: {out.stdout[-2000:]}{out.stderr}"
            )
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
