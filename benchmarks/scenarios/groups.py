"""``group_send`` to many members, each with a consumer."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from benchmarks.scenarios.cell import WARM, Cell, Params, channel_name

__all__ = ["fan_out", "group_fanout"]


async def fan_out(cell: Cell, group: str, members: list[str]) -> dict[str, Any]:
    """``group_send`` to ``members`` of ``group``, each with a consumer, for the cell's sizes.

    The members join ``group`` here and leave it at the end, whatever happens.
    """
    layer, params = cell.layer, cell.params
    sends = max(params.messages // params.group_size, 5)
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


async def group_fanout(layer: Any, params: Params) -> dict[str, Any]:
    """``group_send`` to a group of ``group_size`` reply channels, each with a consumer."""
    cell = Cell(layer, params)
    group = channel_name("grp").replace("bench.", "benchgrp", 1)
    members = [await layer.new_channel() for _ in range(params.group_size)]
    return await fan_out(cell, group, members)
