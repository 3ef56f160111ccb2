"""Request and reply: a server channel, the reply on a fresh ``new_channel()``."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.scenarios.cell import WARM, Cell, Params, channel_name

__all__ = ["request_reply", "round_trip", "round_trips", "serve_requests"]


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


async def round_trip(layer: Any, server: str, i: int, timeout: float) -> tuple[float, Any]:
    """One request and its reply on a fresh reply channel: (seconds, reply's ``i``)."""
    reply = await layer.new_channel()
    sent = time.perf_counter()
    await layer.send(server, {"type": "bench.req", "i": i, "reply": reply})
    async with asyncio.timeout(timeout):
        message = await layer.receive(reply)
    return time.perf_counter() - sent, message.get("i")


async def round_trips(cell: Cell, server: str) -> dict[str, Any]:
    """The timed part of the request/reply scenarios: round trips until count or budget.

    A layer that finishes the count in less than ``min_seconds`` goes on until then
    (within the budget): its percentiles then come from enough time that one hiccup
    of the machine is one of many samples, not a whole percent of them.
    """
    count = max(cell.params.messages // 10, 10)
    latencies: list[float] = []
    cell.start_clock()
    tally = cell.tally
    for i in itertools.count():
        now = time.perf_counter()
        if now > cell.deadline:
            break
        # The reported time ends at the last reply (``Cell.result``): compare that.
        if i >= count and (tally.last_at if tally.received else now) - cell.started >= (
            cell.params.min_seconds
        ):
            break
        tally.expected += 1
        try:
            seconds, got = await round_trip(cell.layer, server, i, cell.params.idle_timeout)
        except TimeoutError:
            continue
        latencies.append(seconds * 1e6)
        if got == i:
            tally.record("rpc", i)
        else:  # a reply meant for another request: wrong, counted as reordered
            tally.reordered += 1
    return cell.result(**percentiles(latencies))


async def request_reply(layer: Any, params: Params) -> dict[str, Any]:
    """Round trips: a request to a server channel, the reply on a fresh ``new_channel()``."""
    cell = Cell(layer, params)
    server = channel_name("rpc")
    cell.warm[server] = asyncio.Event()
    cell.spawn(serve_requests(layer, server, cell.warm[server].set))
    try:
        await cell.warm_up(lambda: layer.send(server, {"type": WARM}), [server])
        return await round_trips(cell, server)
    finally:
        await cell.cancel()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_us": None, "p99_us": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_us": statistics.median(ordered), "p99_us": p99}
