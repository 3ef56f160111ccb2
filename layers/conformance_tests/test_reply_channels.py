"""Reply channels: ``new_channel()`` names, ownership and isolation between processes."""

from __future__ import annotations

import asyncio
import re

import pytest

from layers.conformance_tests.helpers import drain, expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test
from layers.core.errors import ChannelNotOwned


@async_test
async def test_reply_channel_round_trip(layer_factory: LayerFactory) -> None:
    """A message sent to a reply channel is received by the layer that made it."""
    async with layer_factory() as layer:
        reply = await layer.new_channel()
        await layer.send(reply, {"answer": 42})
        assert await receive_within(layer, reply) == {"answer": 42}


@async_test
async def test_new_channel_names(layer_factory: LayerFactory) -> None:
    """``new_channel(prefix)`` returns ``prefix + id + "!" + random``: valid, unique."""
    async with layer_factory() as layer:
        names = {await layer.new_channel() for _ in range(200)}
        assert len(names) == 200
        for name in names:
            assert re.fullmatch(r"specific\.[A-Za-z0-9._-]+![A-Za-z0-9._-]+", name), name
            assert len(name) <= 100
        custom = await layer.new_channel("worker.")
        assert custom.startswith("worker.")
        assert custom.count("!") == 1


@async_test
async def test_reply_channels_are_separate(layer_factory: LayerFactory) -> None:
    """Reply channels of one layer share an inbox yet each gets only its own messages, in order."""
    async with layer_factory(capacity=300) as layer:
        channels = [await layer.new_channel() for _ in range(5)]
        for i in range(100):
            await layer.send(channels[i % 5], {"i": i})
        for k, channel in enumerate(channels):
            got = [m["i"] for m in await drain(layer, channel)]
            assert got == list(range(k, 100, 5))


@async_test
async def test_receive_on_another_layers_reply_channel_raises(
    layer_factory: LayerFactory,
) -> None:
    """Receiving on another layer's reply channel raises ChannelNotOwned; nothing is lost."""
    async with layer_factory() as owner, layer_factory() as other:
        reply = await owner.new_channel()
        await owner.send(reply, {"for": "owner"})
        with pytest.raises(ChannelNotOwned):
            async with asyncio.timeout(2):
                await other.receive(reply)
        assert await receive_within(owner, reply) == {"for": "owner"}


@async_test
async def test_other_layer_never_reads_my_reply_messages(layer_factory: LayerFactory) -> None:
    """A second layer busy on its own reply channels never takes the first layer's messages."""
    async with layer_factory(capacity=200) as owner, layer_factory(capacity=200) as other:
        mine, theirs = await owner.new_channel(), await other.new_channel()
        listening = asyncio.create_task(drain(other, theirs, quiet=1.0))
        await asyncio.sleep(0.05)
        for i in range(50):
            await owner.send(mine, {"i": i})
            await other.send(theirs, {"j": i})
        got = [m["i"] for m in await drain(owner, mine)]
        assert got == list(range(50))
        assert [m["j"] for m in await listening] == list(range(50))


@async_test
async def test_reply_channel_of_unknown_layer_accepts_sends(layer_factory: LayerFactory) -> None:
    """Sending to a well-formed reply channel of no live layer is allowed (it just expires)."""
    async with layer_factory(expiry=1) as layer:
        await layer.send("specific.nobody123!abc", {"lost": True})
        await layer.send(unique(), {"unrelated": True})
        await expect_nothing(layer, await layer.new_channel())
