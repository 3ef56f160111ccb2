"""Concurrency and isolation: atomic capacity, one store for every loop, one arrival order.

Capacity is checked and the message stored in one atomic step, however many tasks,
event loops or processes send at once. Every event loop (``async_to_sync`` makes one
per call) sees the same store. Order is the store's arrival order, whoever sent and
whatever their expiry: not a per-writer sequence, a timestamp or an expiry time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from layers.conformance_tests.helpers import drain, expect_nothing, receive_within, sized, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires, settings
from layers.core.backend import Capability
from layers.core.errors import ChannelFull
from layers.core.layer import ChannelLayer


async def _try_send(layer: ChannelLayer, channel: str, i: int) -> int | None:
    try:
        await layer.send(channel, {"i": i})
    except ChannelFull:
        return None
    return i


@async_test
async def test_capacity_holds_under_concurrent_senders(layer_factory: LayerFactory) -> None:
    """60 concurrent sends (600 thorough) from three layers to a channel of capacity 5:
    exactly 5 stored."""
    channel, senders = unique(), sized(60, 600)
    layers = [layer_factory(capacity=5) for _ in range(3)]
    try:
        sent = await asyncio.gather(*(_try_send(layers[i % 3], channel, i) for i in range(senders)))
        stored = [i for i in sent if i is not None]
        assert len(stored) == 5, f"{len(stored)} sends fitted in a channel of capacity 5"
        got = [m["i"] for m in await drain(layers[0], channel)]
        assert sorted(got) == sorted(stored)
    finally:
        for layer in layers:
            await layer.aclose()


def test_capacity_holds_across_event_loops(layer_factory: LayerFactory) -> None:
    """Four threads, each with its own event loop, send at once: capacity is never exceeded."""
    channel = unique()
    layer = layer_factory(capacity=6)
    barrier = threading.Barrier(4)
    stored: list[int] = []
    errors: list[BaseException] = []

    async def burst(k: int) -> None:
        barrier.wait(settings.wait)
        sent = await asyncio.gather(*(_try_send(layer, channel, k * 100 + i) for i in range(20)))
        stored.extend(i for i in sent if i is not None)
        await layer.aclose()

    def run(k: int) -> None:
        try:
            asyncio.run(burst(k))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(settings.test_timeout)
    assert not errors, errors
    assert len(stored) == 6, f"{len(stored)} sends fitted in a channel of capacity 6"

    async def read() -> list[int]:
        async with layer:
            return [m["i"] for m in await drain(layer, channel)]

    assert sorted(asyncio.run(read())) == sorted(stored)


@requires(Capability.CROSS_PROCESS)
@async_test
async def test_capacity_holds_across_processes(
    layer_factory: LayerFactory, layer_url: str | None
) -> None:
    """Four processes send 25 messages each at once to a channel of capacity 10: 10 stored."""
    if layer_url is None:
        pytest.skip("multi-process tests need --layer-url (other processes build the layer)")
    channel = unique("cap")
    job = {"mode": "send", "url": layer_url, "channel": channel, "count": 25, "capacity": 10}
    procs = []
    for k in range(4):
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "layers.conformance_tests._worker",
                json.dumps({**job, "first": k * 100}),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
    outs = await asyncio.gather(*(proc.communicate(b"go\n") for proc in procs))
    stored: list[int] = []
    for proc, (out, _) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out
        stored += json.loads(out.decode().splitlines()[-1])
    assert len(stored) == 10, f"{len(stored)} sends fitted in a channel of capacity 10"
    async with layer_factory(capacity=10) as layer:
        assert sorted(m["i"] for m in await drain(layer, channel)) == sorted(stored)


def test_every_event_loop_sees_one_store(layer_factory: LayerFactory) -> None:
    """What one event loop stores, the next one (``asyncio.run``, ``async_to_sync``) reads.

    Messages left in the store when a loop closes stay there for the next loop, and
    groups made in one loop fan out in another.
    """
    layer = layer_factory()
    channel, group, member = unique(), unique("grp"), unique()
    groups = Capability.GROUPS in layer.capabilities

    async def write() -> None:
        for n in range(3):
            await layer.send(channel, {"n": n})
        if groups:
            await layer.group_add(group, member)

    async def read_one() -> dict[str, Any]:
        return await receive_within(layer, channel)

    async def fan_out() -> None:
        await layer.group_send(group, {"group": True})

    async def read_member() -> dict[str, Any]:
        return await receive_within(layer, member)

    async def nothing_left() -> None:
        await expect_nothing(layer, channel)
        await layer.aclose()

    asyncio.run(write())
    assert asyncio.run(read_one()) == {"n": 0}
    assert async_to_sync(read_one)() == {"n": 1}
    assert asyncio.run(read_one()) == {"n": 2}
    if groups:
        async_to_sync(fan_out)()
        assert asyncio.run(read_member()) == {"group": True}
    asyncio.run(nothing_left())


@async_test
async def test_order_is_arrival_order_across_writers_and_expiries(
    layer_factory: LayerFactory,
) -> None:
    """Writers with different expiries take turns on one channel: the reader sees send order.

    Order comes from the store's arrival order, not from an expiry time, a timestamp or
    a sequence kept per writer.
    """
    channel = unique()
    async with (
        layer_factory(expiry=60, capacity=100) as slow,
        layer_factory(expiry=20, capacity=100) as fast,
    ):
        order: list[int] = []
        for turn, size in enumerate((3, 1, 4, 2, 5)):
            writer = (slow, fast)[turn % 2]
            for _ in range(size):
                order.append(len(order))
                await writer.send(channel, {"n": order[-1]})
        assert [m["n"] for m in await drain(fast, channel)] == order


async def _round_trips(
    senders: list[ChannelLayer], readers: list[ChannelLayer], channel: str, rounds: int
) -> float:
    """Seconds ``rounds`` sends to ``channel`` take to reach receives already waiting on
    it in ``readers`` (one each), not counting the pauses that let them wait."""
    group = unique("grp")
    sender = senders[0]
    if senders[1:]:
        await sender.group_add(group, channel)
    waiting = {asyncio.create_task(receive_within(r, channel)): r for r in readers}
    got: list[int] = []
    start = time.monotonic()
    try:
        for i in range(rounds):
            await asyncio.sleep(0.01)  # every receive is waiting now
            if senders[1:]:
                await sender.group_send(group, {"i": i})
            else:
                await sender.send(channel, {"i": i})
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                got.append(task.result()["i"])
                reader = waiting.pop(task)
                waiting[asyncio.create_task(receive_within(reader, channel))] = reader
        elapsed = time.monotonic() - start - rounds * 0.01
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    assert got == list(range(rounds))
    return elapsed


@async_test
async def test_a_waiting_receive_is_woken_by_a_send(layer_factory: LayerFactory) -> None:
    """A receive already waiting returns as soon as a message is sent to its channel, by
    ``send`` or ``group_send``, and with readers in two layers waiting on one channel:
    the send wakes it; it is not left to find the message on its next poll. Each series
    of fifteen round trips takes under 1.5 s (a missed wake-up costs a poll interval)."""
    async with layer_factory() as one, layer_factory() as two:
        await one.send(unique("warm"), {"warm": True})
        await two.send(unique("warm"), {"warm": True})
        series = {
            "send": await _round_trips([one], [one], unique(), 15),
            "two readers": await _round_trips([one], [one, two], unique(), 15),
        }
        if Capability.GROUPS in one.capabilities:
            series["group_send"] = await _round_trips([one, one], [two], unique(), 15)
        slow = {name: round(t, 2) for name, t in series.items() if t >= 1.5}
        assert not slow, f"15 woken receives took these seconds (missed wake-ups?): {slow}"
