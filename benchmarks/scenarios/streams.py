"""Producers and consumers on channels: one, ``concurrency`` of them, large bodies."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.scenarios.cell import WARM, Cell, Params, channel_name, produce, with_changes

__all__ = ["concurrent", "payload_1k", "payload_64k", "sequential"]


async def _streams(cell: Cell, channels: list[str], per_channel: int) -> dict[str, Any]:
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
        *(produce(layer, ch, k, per_channel, body, cell.deadline) for k, ch in enumerate(channels))
    )
    await cell.drain(consumers, dict(enumerate(counts)))
    payload_bytes = cell.tally.unique * cell.params.payload
    return cell.result(bytes=payload_bytes)


async def sequential(layer: Any, params: Params) -> dict[str, Any]:
    """One producer and one consumer on one channel."""
    cell = Cell(layer, params)
    try:
        return await _streams(cell, [channel_name("seq")], params.messages)
    finally:
        await cell.cancel()


async def concurrent(layer: Any, params: Params) -> dict[str, Any]:
    """``concurrency`` producers and consumers on as many channels."""
    per = max(params.messages // params.concurrency, 1)
    cell = Cell(layer, params)
    base = channel_name("conc")
    try:
        return await _streams(cell, [f"{base}.{k}" for k in range(params.concurrency)], per)
    finally:
        await cell.cancel()


async def payload_1k(layer: Any, params: Params) -> dict[str, Any]:
    """The sequential scenario with 1 KB message bodies."""
    return await sequential(layer, with_changes(params, payload=1024))


#: What a round of the 64 KB scenario adds up (the rest of a result is the first round's).
_SUMMED = ("seconds", "messages", "delivered", "lost", "duplicated", "reordered", "bytes")


async def payload_64k(layer: Any, params: Params) -> dict[str, Any]:
    """The sequential scenario with 64 KB message bodies, in rounds of a tenth of the messages.

    A round stays a tenth of the messages, so a producer that outruns its consumer
    never queues more than that much (a full count would be 3 GB). A layer that
    delivers a whole round in less than ``min_seconds`` runs further rounds, each on
    a fresh channel, until the rounds' timed parts add up to that, and for no longer
    than the budget in wall time, set-up included: a cell of a few tens of
    milliseconds measures the machine's hiccups more than the layer. The counts and
    the times add up over the rounds, a round cut short by the budget included; a
    round that was wrong ends them.
    """
    one = with_changes(params, payload=64 * 1024, messages=max(params.messages // 10, 20))
    began = time.perf_counter()
    total = await sequential(layer, one)
    while (
        # Set-up and drains are not timed: the budget, in wall time, bounds them too.
        time.perf_counter() - began < params.budget
        and total["seconds"] < params.min_seconds
        and total["delivered"] == total["messages"]
        and not (total["lost"] or total["duplicated"] or total["reordered"])
    ):
        more = await sequential(layer, one)
        for key in _SUMMED:  # a round cut short counts too: its time, and its errors
            total[key] += more[key]
        if more["messages"] < one.messages:  # stopped by the budget: a slow round
            break
    return total
