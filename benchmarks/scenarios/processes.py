"""Scenarios with another OS process (``python -m benchmarks.worker``) on the other side."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from benchmarks.scenarios.cell import WARM, Cell, Params, Tally, channel_name, produce
from benchmarks.scenarios.requests import round_trip, round_trips

__all__ = [
    "consume_fresh",
    "cross_process",
    "cross_process_request_reply",
    "cross_process_restart",
    "cross_process_startup",
]


async def cross_process_request_reply(
    layer: Any, params: Params, spec_json: str = "", tmp: str = ""
) -> dict[str, Any]:
    """Request/reply with the server in another OS process."""
    cell = Cell(layer, params)
    server = channel_name("xrpc")
    proc = await _spawn("rpc-server", spec_json, tmp, {"channel": server})
    try:
        stdin, stdout = await _ready(proc)
        for attempt in range(100):  # warm-up: until one round trip succeeds (untimed)
            with contextlib.suppress(TimeoutError):
                await round_trip(layer, server, -1 - attempt, 0.3)
                break
        else:
            raise RuntimeError("the server process never answered a warm-up request")
        result = await round_trips(cell, server)
        stdin.write(b"stop\n")
        await stdin.drain()
        report = json.loads((await stdout.readline()) or b"{}")
        return {**result, "child_cpu_s": report.get("cpu_s", 0.0)}
    finally:
        await _reap(proc)
        await cell.cancel()


async def cross_process(
    layer: Any, params: Params, spec_json: str = "", tmp: str = ""
) -> dict[str, Any]:
    """One producer in another OS process, one consumer here, one channel."""
    cell = Cell(layer, params)
    channel = channel_name("xproc")
    consumer = cell.spawn(cell.consume(channel, 0, params.messages))
    args = {
        "channel": channel,
        "messages": params.messages,
        "payload": params.payload,
        "budget": params.budget,
    }
    proc = await _spawn("produce", spec_json, tmp, args)
    try:
        stdin, stdout = await _ready(proc)
        await cell.warm_up(lambda: layer.send(channel, {"type": WARM}), [channel])
        cell.start_clock()
        stdin.write(b"go\n")
        await stdin.drain()
        report = json.loads((await stdout.readline()) or b"{}")
        if "error" in report:
            raise RuntimeError(f"producer process: {report['error']}")
        await cell.drain([consumer], {0: report.get("sent", 0)})
        return cell.result(
            child_cpu_s=report.get("cpu_s", 0.0), bytes=cell.tally.unique * params.payload
        )
    finally:
        await _reap(proc)
        await cell.cancel()


#: Channels of the start-up scenario (channels_postgres's start-up defect shows with 20).
STARTUP_CHANNELS = 20


async def cross_process_startup(
    layer: Any, params: Params, spec_json: str = "", tmp: str = ""
) -> dict[str, Any]:
    """A backlog on 20 channels; a fresh process starts 20 consumers at once.

    The consumers' first receives come in one burst, before any of the new layer's
    machinery exists: what a process restart under load looks like. Counts every
    message the burst duplicates or loses; the rate is the child's, from its first
    receive to its last delivery.
    """
    cell = Cell(layer, params)
    per = max(params.backlog // STARTUP_CHANNELS, 5)
    base = channel_name("start")
    channels = [f"{base}.{k}" for k in range(STARTUP_CHANNELS)]
    body = "x" * params.payload
    for k, channel in enumerate(channels):
        await produce(layer, channel, k, per, body, float("inf"))
    cell.tally.expected = per * STARTUP_CHANNELS
    report = await _child_consume(spec_json, tmp, channels, per, None, params)
    _record(cell.tally, report)
    return {"seconds": report["seconds"], "messages": cell.tally.expected, **cell.tally.counters()}


async def cross_process_restart(
    layer: Any, params: Params, spec_json: str = "", tmp: str = ""
) -> dict[str, Any]:
    """A consumer process takes half of a backlog and exits; a new one takes the rest.

    A message the second process gets again is a re-delivery (counted duplicated).
    """
    cell = Cell(layer, params)
    count = max(params.backlog, 20)
    channel = channel_name("restart")
    await produce(layer, channel, 0, count, "x" * params.payload, float("inf"))
    cell.tally.expected = count
    first = await _child_consume(spec_json, tmp, [channel], count, count // 2, params)
    second = await _child_consume(spec_json, tmp, [channel], count, None, params)
    _record(cell.tally, first)
    _record(cell.tally, second)
    seconds = first["seconds"] + second["seconds"]
    return {"seconds": seconds, "messages": count, **cell.tally.counters()}


async def _child_consume(
    spec_json: str,
    tmp: str,
    channels: list[str],
    target: int,
    stop_after: int | None,
    params: Params,
) -> dict[str, Any]:
    """Run ``python -m benchmarks.worker consume`` to completion and return its report."""
    args = {
        "channels": channels, "target": target, "stop_after": stop_after,
        "idle": params.idle_timeout,
    }  # fmt: skip
    proc = await _spawn("consume", spec_json, tmp, args)
    try:
        if proc.stdout is None:
            raise RuntimeError("no pipe to the child process")
        report: dict[str, Any] = json.loads((await proc.stdout.readline()) or b"{}")
    finally:
        await _reap(proc)
    if "error" in report or "got" not in report:
        raise RuntimeError(f"consumer process: {report.get('error', 'no report')}")
    return report


def _record(tally: Tally, report: dict[str, Any]) -> None:
    """Add a child's deliveries (per channel, in arrival order) to ``tally``."""
    for deliveries in report["got"]:
        for stream, seq in deliveries:
            tally.record(stream, seq)


async def consume_fresh(
    layer: Any, channels: list[str], target: int, stop_after: int | None, idle: float
) -> dict[str, Any]:
    """The child's side: one consumer per channel, all started at once on ``layer``.

    Each stops at ``target`` distinct messages, after ``idle`` seconds without one,
    or (all together) once ``stop_after`` messages arrived.
    """
    got: list[list[tuple[Any, int]]] = [[] for _ in channels]
    total = 0
    start = last = time.perf_counter()

    async def one(k: int, channel: str) -> None:
        nonlocal total, last
        seen: set[tuple[Any, int]] = set()
        while len(seen) < target and (stop_after is None or total < stop_after):
            try:
                async with asyncio.timeout(idle):
                    message = await layer.receive(channel)
            except TimeoutError:
                return
            tag = (message.get("s", k), message["i"])
            seen.add(tag)
            got[k].append(tag)
            total += 1
            last = time.perf_counter()

    await asyncio.gather(*(one(k, ch) for k, ch in enumerate(channels)))
    return {"got": got, "seconds": max(last - start, 1e-9)}


async def _spawn(
    role: str, spec_json: str, tmp: str, args: dict[str, Any]
) -> asyncio.subprocess.Process:
    """Start ``python -m benchmarks.worker ROLE`` with pipes on stdin and stdout."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.worker", role, spec_json, tmp, json.dumps(args),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _ready(
    proc: asyncio.subprocess.Process,
) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
    """Wait for the child's ``ready`` line; raise with its message if it failed."""
    if proc.stdout is None or proc.stdin is None:
        raise RuntimeError("no pipe to the child process")
    ready = await proc.stdout.readline()
    if not ready.startswith(b"ready"):
        raise RuntimeError(f"the child process failed to start: {ready.decode()[-300:]}")
    return proc.stdin, proc.stdout


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()
