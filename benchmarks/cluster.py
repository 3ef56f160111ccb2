"""The cluster family: our layer on a three-primary Redis Cluster beside one Redis server.

Run ``python -m benchmarks.cluster`` (``--repeat N``, ``--messages N``). Both layers
run the same two workloads in one interleaved run (single, cluster, single,
cluster...): ``concurrent`` (32 producers and consumers on 32 channels) and
``group_spread`` (``group_send`` to 100 normal channels, which a cluster spreads
over its slots, each with a consumer). Each cell counts lost, duplicated and
reordered messages, the client's CPU time, and every server's CPU time (``INFO
cpu``), from which the table estimates what one more primary adds.

The cluster is six loopback ``redis-server --cluster-enabled yes`` nodes started
here (ports 7100-7999, stopped at the end), or ``LAYERS_BENCH_CLUSTER_URL``
(``redis+cluster://host:port``). The single server is ``LAYERS_BENCH_REDIS_URL``
(default ``redis://127.0.0.1:6379/8``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import layers
from benchmarks.scenarios.cell import Cell, Params, channel_name
from benchmarks.scenarios.groups import fan_out
from benchmarks.scenarios.streams import concurrent
from benchmarks.servers import RedisCluster, ServerUnavailable, cluster_ports, redis_cli
from benchmarks.specs import BENCH_CAPACITY, redis_url

__all__ = ["group_spread", "main"]


async def group_spread(layer: Any, params: Params) -> dict[str, Any]:
    """``group_send`` to ``group_size`` normal channels (spread over a cluster's slots)."""
    base = channel_name("spread")
    members = [f"{base}.m{k}" for k in range(params.group_size)]
    group = base.replace("bench.", "benchspread", 1)
    return await fan_out(Cell(layer, params), group, members)


SCENARIOS: dict[str, Callable[[Any, Params], Any]] = {
    "concurrent": concurrent,
    "group_spread": group_spread,
}


# -- servers ----------------------------------------------------------------------------


@contextlib.contextmanager
def local_cluster() -> Iterator[str]:
    """Start six cluster nodes on loopback (three primaries); yield the cluster URL."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} is needed to start a benchmark cluster")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cluster = RedisCluster(Path(tmp), cluster_ports(6, set()))
            cluster.start()
        except ServerUnavailable as exc:
            sys.exit(f"the benchmark cluster did not start: {exc}")
        try:
            yield cluster.url
        finally:
            cluster.stop()


def _primaries(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` of the servers that store data for ``url``."""
    parts = urlsplit(url)
    if not parts.scheme.endswith("+cluster"):
        return [(parts.hostname or "127.0.0.1", parts.port or 6379)]
    host, _, port = parts.netloc.rpartition("@")[2].split(",")[0].rpartition(":")
    out = []
    for line in redis_cli(int(port), "-h", host, "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if "master" in fields[2] and len(fields) > 8:
            address = fields[1].split("@")[0]
            h, _, p = address.rpartition(":")
            out.append((h, int(p)))
    return sorted(out)


def _cpu(host: str, port: int) -> float:
    """The server's CPU seconds so far (user + system, main thread and children)."""
    info = subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), "INFO", "cpu"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    values = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(values["used_cpu_user"]) + float(values["used_cpu_sys"])


# -- the run ----------------------------------------------------------------------------


async def _cell(url: str, scenario: str, params: Params) -> dict[str, Any]:
    nodes = _primaries(url)
    before = [_cpu(h, p) for h, p in nodes]
    cpu = time.process_time()
    layer = layers.from_url(url)
    try:
        result: dict[str, Any] = await asyncio.wait_for(
            SCENARIOS[scenario](layer, params), params.cell_timeout
        )
    finally:
        with contextlib.suppress(Exception):
            await layer.flush()
        await layer.aclose()
    result["client_cpu_s"] = time.process_time() - cpu
    result["server_cpu_s"] = [_cpu(h, p) - b for (h, p), b in zip(nodes, before, strict=True)]
    return result


def _row(name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["delivered"] / r["seconds"] for r in results if r["seconds"] > 0]
    delivered = sum(r["delivered"] for r in results)
    per_node = [sum(col) for col in zip(*(r["server_cpu_s"] for r in results), strict=True)]
    return {
        "name": name,
        "rate": statistics.median(rates) if rates else 0.0,
        "lost": sum(r["lost"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results),
        "reordered": sum(r["reordered"] for r in results),
        "client_us": 1e6 * sum(r["client_cpu_s"] for r in results) / max(delivered, 1),
        "server_us": [1e6 * c / max(delivered, 1) for c in per_node],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the cluster family and print its table (markdown)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (3)")
    parser.add_argument("--messages", type=int, default=5000, help="messages per cell (5000)")
    args = parser.parse_args(argv)
    params = Params(messages=args.messages, budget=2.0, idle_timeout=5.0, cell_timeout=60.0)
    single = f"{redis_url()}?prefix=benchsingle&capacity={BENCH_CAPACITY}"
    given = os.environ.get("LAYERS_BENCH_CLUSTER_URL")
    with contextlib.nullcontext(given) if given else local_cluster() as cluster_url:
        assert cluster_url is not None
        cluster = f"{cluster_url}?prefix=benchcluster&capacity={BENCH_CAPACITY}"
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(args.repeat):
            for scenario in SCENARIOS:
                for label, url in (("single", single), ("cluster", cluster)):
                    result = asyncio.run(_cell(url, scenario, params))
                    runs.setdefault((scenario, label), []).append(result)
    print(f"cluster family: {args.repeat} interleaved runs, {args.messages} messages per cell")
    print()
    print("| scenario | single msg/s | cluster msg/s | cluster/single | lost/dup/reord "
          "| client CPU µs/msg (single, cluster) | server CPU µs/msg per node (single; cluster) "
          "| est. msg/s added per primary |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for scenario in SCENARIOS:
        one = _row("single", runs[(scenario, "single")])
        many = _row("cluster", runs[(scenario, "cluster")])
        bad = "/".join(str(one[k] + many[k]) for k in ("lost", "duplicated", "reordered"))
        nodes = ", ".join(f"{us:.1f}" for us in many["server_us"])
        # A primary saturates at one core: with the load spread evenly, each
        # primary adds about 1 / (server CPU per message, summed over primaries).
        added = 1e6 / max(sum(many["server_us"]), 1e-9)
        print(
            f"| {scenario} | {one['rate']:.0f} | {many['rate']:.0f} "
            f"| {many['rate'] / max(one['rate'], 1e-9):.2f}x | {bad} "
            f"| {one['client_us']:.0f}, {many['client_us']:.0f} "
            f"| {one['server_us'][0]:.1f}; {nodes} | {added:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
