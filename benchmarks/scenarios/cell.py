"""What every scenario shares: sizes, the correctness tally and the running cell."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WARM", "Cell", "Params", "Tally", "channel_name", "message", "produce", "with_changes"]

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
    min_seconds: float = 0.0
    """A 64 KB or request/reply cell that finished sooner goes on until this long."""
    backlog: int = 500
    """Messages the start-up and restart scenarios queue before their consumers start."""


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


class Cell:
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


def message(stream: int, seq: int, body: str) -> dict[str, Any]:
    """A bench message: stream, sequence number and body."""
    return {"type": "bench.msg", "s": stream, "i": seq, "body": body}


async def produce(
    layer: Any, channel: str, stream: int, count: int, body: str, deadline: float
) -> int:
    """Send up to ``count`` messages, stopping at ``deadline``; return how many were sent."""
    batch = getattr(layer, "bench_batch", 0)
    sent = 0
    while sent < count and time.perf_counter() < deadline:
        if batch:
            stop = min(sent + batch, count)
            await layer.send_batch(channel, [message(stream, i, body) for i in range(sent, stop)])
            sent = stop
        else:
            await layer.send(channel, message(stream, sent, body))
            sent += 1
    return sent


def channel_name(tag: str) -> str:
    """A channel name of this process and moment, tagged with ``tag``."""
    return f"bench.{tag}.{os.getpid()}.{time.monotonic_ns() % 10**9}"


def with_changes(params: Params, **changes: Any) -> Params:
    """A copy of ``params`` with ``changes``."""
    return Params(**{**params.__dict__, **changes})
