"""Idle cost and wake-up latency of a waiting receiver, per backend.

``python -m benchmarks.idle [--seconds S] [--pings N] URL...``

For each URL, in interleaved rounds:

- *idle CPU*: a separate process waits in ``receive`` on an empty channel; the
  share of one core it uses over ``--seconds`` (``time.process_time``) is reported;
- *wake-up latency*: a separate process waits in ``receive``; this process sends
  a message stamped with ``time.monotonic()`` (one clock for all processes on
  Linux) after a pause long enough for the receiver to be idle; the receiver
  reports when it got it. Median and 90th percentile over ``--pings`` messages.

A noisy machine inflates both; compare figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import layers


async def _idle(url: str, seconds: float) -> float:
    layer = layers.from_url(url)
    waiting = asyncio.ensure_future(layer.receive("bench.idle"))
    await asyncio.sleep(1.0)  # past start-up
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    share = (time.process_time() - cpu) / (time.monotonic() - wall)
    waiting.cancel()
    await layer.aclose()
    return share


async def _echo(url: str, count: int) -> None:
    layer = layers.from_url(url)
    await layer.send("bench.ready", {"ready": True})
    for _ in range(count):
        message = await layer.receive("bench.ping")
        got = time.monotonic()
        await layer.send("bench.pong", {"latency": got - message["t"]})
    await layer.aclose()


def _child(role: str, url: str, arg: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.idle", "--role", role, "--arg", str(arg), url],
        stdout=subprocess.PIPE,
        text=True,
    )


async def _latencies(url: str, pings: int, pause: float) -> list[float]:
    layer = layers.from_url(url)
    await layer.flush()
    child = _child("echo", url, pings)
    try:
        await asyncio.wait_for(layer.receive("bench.ready"), 30)
        out = []
        for _ in range(pings):
            await asyncio.sleep(pause)  # the receiver goes idle
            await layer.send("bench.ping", {"t": time.monotonic()})
            out.append((await asyncio.wait_for(layer.receive("bench.pong"), 30))["latency"])
        return out
    finally:
        child.wait(30)
        await layer.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per URL (``--json`` for a dict)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__)
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pings", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--role", choices=["idle", "echo"], help=argparse.SUPPRESS)
    parser.add_argument("--arg", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "idle":
        print(asyncio.run(_idle(args.urls[0], args.arg)))
        return 0
    if args.role == "echo":
        asyncio.run(_echo(args.urls[0], int(args.arg)))
        return 0
    results: dict[str, dict[str, list[float]]] = {
        url: {"idle": [], "latency": []} for url in args.urls
    }
    for _ in range(args.rounds):
        for url in args.urls:  # interleaved: every URL in every round
            idle = _child("idle", url, args.seconds)
            out, _ = idle.communicate(timeout=args.seconds + 60)
            results[url]["idle"].append(float(out.strip()))
            results[url]["latency"] += asyncio.run(_latencies(url, args.pings, args.pause))
    summary = {}
    for url, found in results.items():
        lat = sorted(found["latency"])
        summary[url] = {
            "idle_cpu_percent": round(100 * statistics.median(found["idle"]), 2),
            "wakeup_median_ms": round(1000 * statistics.median(lat), 2),
            "wakeup_p90_ms": round(1000 * lat[int(0.9 * (len(lat) - 1))], 2),
        }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for url, row in summary.items():
            print(
                f"{url}: idle {row['idle_cpu_percent']:.2f}% of a core; wake-up "
                f"median {row['wakeup_median_ms']:.2f} ms, p90 {row['wakeup_p90_ms']:.2f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
