"""HTTP and WebSocket through the three tiers against the same handler served directly.

``python -m benchmarks.tiers [--url URL ...] [--requests N] [--concurrency C]``

For each layer URL it starts, as separate processes: the handler as a plain ASGI app under
uvicorn (*direct*), and the same handler behind the tiers: ``layers serve`` plus two
``layers worker`` processes (or, for ``memory://``, one process running both tiers). A
keep-alive HTTP/1.1 load generator (raw asyncio, C connections on loopback) measures
requests/s and per-request p50/p99; a WebSocket client measures sequential echo round
trips. Rounds alternate direct and tiers, and the median round is reported with the
ratios. No timing is asserted anywhere: this prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUTING = "benchmarks.tiers_app:channel_routing"


def _port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    """Processes serving the handler on one port."""

    def __init__(self, commands: list[list[str]], port: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.port = port
        self.procs = [
            subprocess.Popen(
                [sys.executable, *cmd],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for cmd in commands
        ]

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                await _requests(self.port, 1, 1)
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"nothing answered on port {self.port}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def direct() -> Stack:
    port = _port()
    cmd = ["-m", "uvicorn", "benchmarks.tiers_app:handler", "--port", str(port)]
    return Stack([[*cmd, "--log-level", "warning"]], port)


def tiers(url: str, workers: int) -> Stack:
    port = _port()
    serve = ["-m", "layers", "serve", "--url", url, "--port", str(port)]
    if url.startswith("memory:"):
        return Stack([[*serve, "--routing", ROUTING, "--concurrency", "64"]], port)
    worker = ["-m", "layers", "worker", ROUTING, "--url", url, "--concurrency", "64"]
    return Stack([serve, *[worker] * workers], port)


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _connection(port: int, count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            begun = time.perf_counter()
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            chunked = False
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding" and b"chunked" in value:
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response {head[:40]!r}")
            latencies.append(time.perf_counter() - begun)
    finally:
        writer.close()


async def _requests(port: int, total: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    begun = time.perf_counter()
    share = [total // concurrency + (n < total % concurrency) for n in range(concurrency)]
    await asyncio.gather(*(_connection(port, n, latencies) for n in share if n))
    return latencies, time.perf_counter() - begun


async def _ws_echo(port: int, count: int) -> list[float]:
    from websockets.asyncio.client import connect

    latencies = []
    async with connect(f"ws://127.0.0.1:{port}/echo") as ws:
        for n in range(count):
            begun = time.perf_counter()
            await ws.send(f"m{n}")
            await ws.recv()
            latencies.append(time.perf_counter() - begun)
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, float]:
    await _requests(stack.port, args.requests // 5, args.concurrency)  # warm-up
    latencies, seconds = await _requests(stack.port, args.requests, args.concurrency)
    single, _ = await _requests(stack.port, args.requests // 4, 1)
    ws = await _ws_echo(stack.port, args.requests // 4)
    return {
        "rps": len(latencies) / seconds,
        "p50": _pct(latencies, 0.5),
        "p99": _pct(latencies, 0.99),
        "p50_1": _pct(single, 0.5),
        "ws_p50": _pct(ws, 0.5),
    }


async def bench(url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    rounds: dict[str, list[dict[str, float]]] = {"direct": [], "tiers": []}
    stacks = {"direct": direct(), "tiers": tiers(url, args.workers)}
    try:
        for stack in stacks.values():
            await stack.ready()
        for _ in range(args.rounds):
            for name, stack in stacks.items():
                rounds[name].append(await measure(stack, args))
    finally:
        for stack in stacks.values():
            stack.stop()
    return {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in rounds.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tiers", description=__doc__)
    parser.add_argument("--url", action="append", help="layer URL (repeat); default memory://")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=16, help="connections")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)
    print(
        f"{args.requests} requests/round, {args.concurrency} connections, "
        f"{args.workers} workers, {args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    header = "| layer | path | req/s | p50 ms (C) | p99 ms (C) | p50 ms (1 conn) | ws echo p50 ms |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    ratios = []
    for url in args.url or ["memory://"]:
        result = asyncio.run(bench(url, args))
        scheme = url.split(":")[0]
        for name in ("direct", "tiers"):
            r = result[name]
            lines.append(
                f"| {scheme} | {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} "
                f"| {r['p50_1']:.2f} | {r['ws_p50']:.2f} |"
            )
        d, t = result["direct"], result["tiers"]
        ratios.append(
            f"{scheme}: throughput {t['rps'] / d['rps']:.0%} of direct; added p50 "
            f"{t['p50_1'] - d['p50_1']:+.2f} ms (one connection), "
            f"{t['p50'] - d['p50']:+.2f} ms (at {args.concurrency}); "
            f"ws echo {t['ws_p50'] - d['ws_p50']:+.2f} ms"
        )
    print("\n".join(lines))
    print("\n".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
