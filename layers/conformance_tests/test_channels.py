"""Channels: send and receive, FIFO order, at-most-once delivery within one host."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from layers.conformance_tests.helpers import drain, expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, scaled


@async_test
async def test_send_then_receive(layer_factory: LayerFactory) -> None:
    """A message sent to a channel is received once, unchanged."""
    channel = unique()
    async with layer_factory() as layer:
        await layer.send(channel, {"type": "test.message", "n": 1})
        assert await receive_within(layer, channel) == {"type": "test.message", "n": 1}
        await expect_nothing(layer, channel)


@async_test
async def test_receive_waits_for_a_later_send(layer_factory: LayerFactory) -> None:
    """A receive that starts before the send gets the message."""
    channel = unique()
    async with layer_factory() as layer:
        waiting = asyncio.create_task(receive_within(layer, channel))
        await asyncio.sleep(0.05)
        await layer.send(channel, {"late": True})
        assert await waiting == {"late": True}


@async_test
async def test_fifo_one_writer_one_reader(layer_factory: LayerFactory) -> None:
    """One writer and one reader see perfect order."""
    channel = unique()
    async with layer_factory(capacity=500) as layer:
        for i in range(200):
            await layer.send(channel, {"i": i})
        got = [(await receive_within(layer, channel))["i"] for _ in range(200)]
        assert got == list(range(200))
        await expect_nothing(layer, channel)


@async_test
async def test_fifo_under_load_with_other_traffic(layer_factory: LayerFactory) -> None:
    """FIFO holds for 3,000 messages (100,000 when thorough) read while written, amid noise."""
    channel, others = unique("fifo"), [unique("noise") for _ in range(3)]
    total = scaled(3_000, 100_000)
    async with layer_factory(capacity=total) as layer:

        async def write() -> None:
            for i in range(total):
                await layer.send(channel, {"i": i})
                if i % 7 == 0:
                    await layer.send(others[i % 3], {"noise": i})

        async def noise_reader(name: str) -> int:
            return len(await drain(layer, name))

        async def read() -> list[int]:
            return [(await receive_within(layer, channel))["i"] for _ in range(total)]

        writer = asyncio.create_task(write())
        got = await read()
        await writer
        counts = await asyncio.gather(*(noise_reader(name) for name in others))
        assert got == list(range(total))
        assert sum(counts) == len(range(0, total, 7))


@async_test
async def test_fifo_per_channel_when_interleaved(layer_factory: LayerFactory) -> None:
    """Order is per channel: interleaved sends to several channels keep each channel's order."""
    channels = [unique() for _ in range(4)]
    rng = random.Random(7)
    sent: dict[str, list[int]] = {c: [] for c in channels}
    async with layer_factory(capacity=1000) as layer:
        for i in range(400):
            channel = rng.choice(channels)
            sent[channel].append(i)
            await layer.send(channel, {"i": i})
        for channel in channels:
            got = [m["i"] for m in await drain(layer, channel)]
            assert got == sent[channel]


@async_test
async def test_fifo_across_writers_to_a_waiting_reader(layer_factory: LayerFactory) -> None:
    """Sends from two layers, each made after the last returned, reach a waiting reader in order.

    Half the sends come from the reader's own layer: a layer that gives its own send
    straight to its waiting receive must still deliver first what the other layer
    stored before.
    """
    channel, total = unique("writers"), 200
    async with layer_factory(capacity=total) as near, layer_factory(capacity=total) as far:
        got: list[int] = []

        async def read() -> None:
            for _ in range(total):
                got.append((await receive_within(near, channel))["i"])

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)  # the reader waits before the first send
        for i in range(total):
            await (near if i % 2 else far).send(channel, {"i": i})
        await reader
        assert got == list(range(total))
        await expect_nothing(near, channel)


async def _many_readers(
    layers: list[Any], channel: str, readers_per_layer: int, total: int
) -> list[list[int]]:
    results: list[list[int]] = [[] for _ in range(len(layers) * readers_per_layer)]
    done = asyncio.Event()
    seen = 0

    async def reader(index: int, layer: Any) -> None:
        nonlocal seen
        while not done.is_set():
            try:
                async with asyncio.timeout(0.5):
                    message = await layer.receive(channel)
            except TimeoutError:
                continue
            results[index].append(message["i"])
            seen += 1
            if seen >= total:
                done.set()

    tasks = [
        asyncio.create_task(reader(i * readers_per_layer + j, layer))
        for i, layer in enumerate(layers)
        for j in range(readers_per_layer)
    ]
    # Let every reader wait first, then yield after each send so that readers of
    # different layers race for each message.
    await asyncio.sleep(0.1)
    for i in range(total):
        await layer_send(layers[i % 2], channel, i)
        await asyncio.sleep(0)
    try:
        async with asyncio.timeout(20):
            await done.wait()
    except TimeoutError:
        pass
    done.set()
    await asyncio.gather(*tasks)
    # Let anything wrongly delivered twice surface.
    for layer in layers:
        results.append([m["i"] for m in await drain(layer, channel)])
    return results


async def layer_send(layer: Any, channel: str, i: int) -> None:
    """Send ``{"i": i}``, retrying while the channel is full (readers are draining it)."""
    from layers.core.errors import ChannelFull

    while True:
        try:
            await layer.send(channel, {"i": i})
            return
        except ChannelFull:
            await asyncio.sleep(0.01)


@async_test
async def test_at_most_once_many_readers_one_channel(layer_factory: LayerFactory) -> None:
    """Many concurrent readers on one channel, three layers: disjoint sets, union is all sent."""
    channel, total = unique("amo"), 2500
    layers = [layer_factory(capacity=total) for _ in range(3)]
    try:
        results = await _many_readers(layers, channel, readers_per_layer=4, total=total)
    finally:
        for layer in layers:
            await layer.aclose()
    flat = [i for part in results for i in part]
    assert len(flat) == len(set(flat)), "a message was delivered twice"
    assert sorted(flat) == list(range(total))
