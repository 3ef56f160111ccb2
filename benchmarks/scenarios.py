"""The scenarios: the same workloads for every layer, each counting what went wrong.

Every scenario returns a result dict with its speed *and* its correctness counters:
``lost`` (sent, never received before the idle timeout), ``duplicated`` (received
more than once) and ``reordered`` (received after a later message of the same
producer). Before the clock starts, a warm-up message is sent to every consumer
until it arrives, so subscriptions and reader tasks exist for every layer alike.

A layer here is anything with the Channels layer API (``send``, ``receive``,
``new_channel``, ``group_add``, ``group_send``); a baseline may add ``send_batch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SCENARIOS", "Params", "Tally", "run_scenario"]

WARM = "bench.warm"


@dataclass
class Params:
    """Sizes for one scenario run (quick and full modes pick different values)."""

    messages: int = 200
    """At most this many messages (deliveries for ``group``, a tenth for round trips)."""
    budget: float = 2.0
    """Producers stop sending after this many seconds, even below ``messages``."""
    concurrency: int = 32
    group_size: int = 100
    idle_timeout: float = 2.0
    cell_timeout: float = 20.0
    payload: int = 16


@dataclass
class Tally:
    """Correctness counters for messages tagged with (stream, sequence number)."""

    expected: int
    seen: dict[Any, set[int]] = field(default_factory=dict)
    last: dict[Any, int] = field(default_factory=dict)
    duplicated: int = 0
    reordered: int = 0
    received: int = 0
    last_at: float = 0.0

    def record(self, stream: Any, seq: int) -> None:
        seen = self.seen.setdefault(stream, set())
        self.received += 1
        self.last_at = time.perf_counter()
        if seq in seen:
            self.duplicated += 1
            return
        seen.add(seq)
        if seq < self.last.get(stream, -1):
            self.reordered += 1
        self.last[stream] = max(seq, self.last.get(stream, -1))

    @property
    def unique(self) -> int:
        return sum(len(s) for s in self.seen.values())

    def counters(self) -> dict[str, int]:
        return {
            "delivered": self.unique,
            "lost": max(self.expected - self.unique, 0),
            "duplicated": self.duplicated,
            "reordered": self.reordered,
        }


class _Cell:
    """Shared state of one running scenario: tally, warm-up events and tasks."""

    def __init__(self, layer: Any, params: Params) -> None:
        self.layer = layer
        self.params = params
        self.tally = Tally(0)
        self.warm: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.targets: dict[Any, int] = {}
        self.started = 0.0

    @property
    def deadline(self) -> float:
        """When producers stop sending (the clock's start plus the budget)."""
        return self.started + self.params.budget

    async def consume(self, channel: str, stream: Any, target: int) -> None:
        """Receive bench messages on ``channel`` until the stream's target (or cancellation).

        A bare ``receive`` loop: no timer per message, so the harness adds as little
        as possible to what it measures. :meth:`drain` gives up on a stalled consumer,
        and :meth:`cancel` ends the rest.
        """
        layer, tally, event = self.layer, self.tally, self.warm.setdefault(channel, asyncio.Event())
        seen = tally.seen.setdefault(stream, set())
        self.targets[stream] = target
        # Stop on distinct messages, so a duplicate never hides a later one as "lost".
        while len(seen) < self.targets[stream]:
            message = await layer.receive(channel)
            if message.get("type") == WARM:
                event.set()
                continue
            tally.record(message.get("s", stream), message["i"])

    async def warm_up(self, send: Callable[[], Awaitable[None]], channels: list[str]) -> None:
        """Call ``send`` until every consumer on ``channels`` saw a warm-up message."""
        events = [self.warm.setdefault(ch, asyncio.Event()) for ch in channels]
        for _ in range(100):
            await send()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 0.2)
            if all(e.is_set() for e in events):
                return
        raise RuntimeError("the consumers never received a warm-up message")

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    def start_clock(self) -> None:
        self.started = time.perf_counter()

    async def drain(self, consumers: list[asyncio.Task[Any]], sent: dict[Any, int]) -> None:
        """Tell consumers how many messages each stream really got, then wait for them.

        A consumer that already has them all may be blocked in ``receive``: it is
        cancelled (the run is over); the others stop at their target, or are cancelled
        once no consumer at all got a message for ``idle_timeout`` (the rest is lost).
        """
        self.targets.update(sent)
        self.tally.expected = sum(sent.values())
        for task, stream in zip(consumers, sent, strict=True):
            if len(self.tally.seen.get(stream, ())) >= sent[stream]:
                task.cancel()
        pending = {task for task in consumers if not task.done()}
        received = -1
        while pending:
            _, pending = await asyncio.wait(pending, timeout=self.params.idle_timeout)
            if pending and self.tally.received == received:  # stalled: give up
                for task in pending:
                    task.cancel()
                break
            received = self.tally.received
        await asyncio.gather(*consumers, return_exceptions=True)

    def result(self, **extra: Any) -> dict[str, Any]:
        elapsed = max(self.tally.last_at - self.started, 1e-9) if self.tally.received else 0.0
        return {
            "seconds": elapsed,
            "messages": self.tally.expected,
            **self.tally.counters(),
            **extra,
        }

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _message(stream: int, seq: int, body: str) -> dict[str, Any]:
    return {"type": "bench.msg", "s": stream, "i": seq, "body": body}


async def _produce(
    layer: Any, channel: str, stream: int, count: int, body: str, deadline: float
) -> int:
    """Send up to ``count`` messages, stopping at ``deadline``; return how many were sent."""
    batch = getattr(layer, "bench_batch", 0)
    sent = 0
    while sent < count and time.perf_counter() < deadline:
        if batch:
            stop = min(sent + batch, count)
            await layer.send_batch(channel, [_message(stream, i, body) for i in range(sent, stop)])
            sent = stop
        else:
            await layer.send(channel, _message(stream, sent, body))
            sent += 1
    return sent


async def _streams(cell: _Cell, channels: list[str], per_channel: int) -> dict[str, Any]:
    """N producers, N consumers, one channel each; the clock runs until the last delivery."""
    layer, body = cell.layer, "x" * cell.params.payload
    consumers = [cell.spawn(cell.consume(ch, k, per_channel)) for k, ch in enumerate(channels)]

    async def warm_all() -> None:
        for ch in channels:
            if not cell.warm[ch].is_set():
                await layer.send(ch, {"type": WARM})

    await cell.warm_up(warm_all, channels)
    cell.start_clock()
    counts = await asyncio.gather(
        *(_produce(layer, ch, k, per_channel, body, cell.deadline) for k, ch in enumerate(channels))
    )
    await cell.drain(consumers, dict(enumerate(counts)))
    payload_bytes = cell.tally.unique * cell.params.payload
    return cell.result(bytes=payload_bytes)


def _channel(tag: str) -> str:
    return f"bench.{tag}.{os.getpid()}.{time.monotonic_ns() % 10**9}"


async def sequential(layer: Any, params: Params) -> dict[str, Any]:
    """One producer and one consumer on one channel."""
    cell = _Cell(layer, params)
    try:
        return await _streams(cell, [_channel("seq")], params.messages)
    finally:
        await cell.cancel()


async def concurrent(layer: Any, params: Params) -> dict[str, Any]:
    """``concurrency`` producers and consumers on as many channels."""
    per = max(params.messages // params.concurrency, 1)
    cell = _Cell(layer, params)
    base = _channel("conc")
    try:
        return await _streams(cell, [f"{base}.{k}" for k in range(params.concurrency)], per)
    finally:
        await cell.cancel()


async def serve_requests(
    layer: Any, channel: str, on_warm: Callable[[], None] = lambda: None
) -> None:
    """Answer every request on ``channel`` on its ``reply`` channel, until cancelled."""
    while True:
        message = await layer.receive(channel)
        if message.get("type") == WARM:
            on_warm()
            continue
        await layer.send(message["reply"], {"type": "bench.reply", "i": message["i"]})


async def _round_trip(layer: Any, server: str, i: int, timeout: float) -> tuple[float, Any]:
    """One request and its reply on a fresh reply channel: (seconds, reply's ``i``)."""
    reply = await layer.new_channel()
    sent = time.perf_counter()
    await layer.send(server, {"type": "bench.req", "i": i, "reply": reply})
    async with asyncio.timeout(timeout):
        message = await layer.receive(reply)
    return time.perf_counter() - sent, message.get("i")


async def _round_trips(cell: _Cell, server: str) -> dict[str, Any]:
    """The timed part of the request/reply scenarios: round trips until count or budget."""
    count = max(cell.params.messages // 10, 10)
    latencies: list[float] = []
    cell.start_clock()
    for i in range(count):
        if time.perf_counter() > cell.deadline:
            break
        cell.tally.expected += 1
        try:
            seconds, got = await _round_trip(cell.layer, server, i, cell.params.idle_timeout)
        except TimeoutError:
            continue
        latencies.append(seconds * 1e6)
        if got == i:
            cell.tally.record("rpc", i)
        else:  # a reply meant for another request: wrong, counted as reordered
            cell.tally.reordered += 1
    return cell.result(**_percentiles(latencies))


async def request_reply(layer: Any, params: Params) -> dict[str, Any]:
    """Round trips: a request to a server channel, the reply on a fresh ``new_channel()``."""
    cell = _Cell(layer, params)
    server = _channel("rpc")
    cell.warm[server] = asyncio.Event()
    cell.spawn(serve_requests(layer, server, cell.warm[server].set))
    try:
        await cell.warm_up(lambda: layer.send(server, {"type": WARM}), [server])
        return await _round_trips(cell, server)
    finally:
        await cell.cancel()


async def cross_process_request_reply(
    layer: Any, params: Params, spec_json: str = "", tmp: str = ""
) -> dict[str, Any]:
    """Request/reply with the server in another OS process."""
    cell = _Cell(layer, params)
    server = _channel("xrpc")
    proc = await _spawn("rpc-server", spec_json, tmp, {"channel": server})
    try:
        stdin, stdout = await _ready(proc)
        for attempt in range(100):  # warm-up: until one round trip succeeds (untimed)
            with contextlib.suppress(TimeoutError):
                await _round_trip(layer, server, -1 - attempt, 0.3)
                break
        else:
            raise RuntimeError("the server process never answered a warm-up request")
        result = await _round_trips(cell, server)
        stdin.write(b"stop\n")
        await stdin.drain()
        report = json.loads((await stdout.readline()) or b"{}")
        return {**result, "child_cpu_s": report.get("cpu_s", 0.0)}
    finally:
        await _reap(proc)
        await cell.cancel()


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_us": None, "p99_us": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_us": statistics.median(ordered), "p99_us": p99}


async def group_fanout(layer: Any, params: Params) -> dict[str, Any]:
    """``group_send`` to a group of ``group_size`` reply channels, each with a consumer."""
    sends = max(params.messages // params.group_size, 5)
    cell = _Cell(layer, params)
    group = _channel("grp").replace("bench.", "benchgrp", 1)
    members = [await layer.new_channel() for _ in range(params.group_size)]
    try:
        for member in members:
            await layer.group_add(group, member)
        for member in members:
            cell.spawn(cell.consume(member, member, sends))
        consumers = list(cell.tasks)
        await cell.warm_up(lambda: layer.group_send(group, {"type": WARM}), members)
        cell.start_clock()
        body = "x" * params.payload
        done = 0
        while done < sends and time.perf_counter() < cell.deadline:
            await layer.group_send(group, {"type": "bench.msg", "i": done, "body": body})
            done += 1
        await cell.drain(consumers, dict.fromkeys(members, done))
        return cell.result()
    finally:
        await cell.cancel()
        for member in members:
            with contextlib.suppress(Exception):
                await layer.group_discard(group, member)


async def payload_1k(layer: Any, params: Params) -> dict[str, Any]:
    """The sequential scenario with 1 KB message bodies."""
    return await sequential(layer, _with(params, payload=1024))


async def payload_64k(layer: Any, params: Params) -> dict[str, Any]:
    """The sequential scenario with 64 KB message bodies (a tenth of the messages)."""
    return await sequential(
        layer, _with(params, payload=64 * 1024, messages=max(params.messages // 10, 20))
    )


def _with(params: Params, **changes: Any) -> Params:
    return Params(**{**params.__dict__, **changes})


async def cross_process(
    layer: Any, params: Params, spec_json: str = "", tmp: str = ""
) -> dict[str, Any]:
    """One producer in another OS process, one consumer here, one channel."""
    cell = _Cell(layer, params)
    channel = _channel("xproc")
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
    cell = _Cell(layer, params)
    per = max(params.messages // 10 // STARTUP_CHANNELS, 5)
    base = _channel("start")
    channels = [f"{base}.{k}" for k in range(STARTUP_CHANNELS)]
    body = "x" * params.payload
    for k, channel in enumerate(channels):
        await _produce(layer, channel, k, per, body, float("inf"))
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
    cell = _Cell(layer, params)
    count = max(params.messages // 10, 20)
    channel = _channel("restart")
    await _produce(layer, channel, 0, count, "x" * params.payload, float("inf"))
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


SCENARIOS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "sequential": sequential,
    "concurrent": concurrent,
    "request_reply": request_reply,
    "group": group_fanout,
    "payload_1k": payload_1k,
    "payload_64k": payload_64k,
    "cross_process": cross_process,
    "cross_process_rr": cross_process_request_reply,
    "cross_process_startup": cross_process_startup,
    "cross_process_restart": cross_process_restart,
}


async def run_scenario(
    name: str, layer: Any, params: Params, *, spec_json: str = "", tmp: str = ""
) -> dict[str, Any]:
    """Run one scenario under the cell timeout; errors become the cell's status, never a crash."""
    func = SCENARIOS[name]
    kwargs = {"spec_json": spec_json, "tmp": tmp} if name.startswith("cross_process") else {}
    cpu = time.process_time()
    try:
        async with asyncio.timeout(params.cell_timeout):
            result = await func(layer, params, **kwargs)
        result["status"] = "ok"
    except TimeoutError:
        result = {"status": "timeout", "error": f"timeout after {params.cell_timeout:g} s"}
    except Exception as exc:
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["cpu_s"] = time.process_time() - cpu + result.get("child_cpu_s", 0.0)
    return result
