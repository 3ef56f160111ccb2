"""Flush: ``flush()`` empties every channel and group of the layer."""

from __future__ import annotations

from layers.conformance_tests.helpers import expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability

pytestmark = requires(Capability.FLUSH)


@async_test
async def test_flush_empties_channels(layer_factory: LayerFactory) -> None:
    """After ``flush`` no message sent before it is delivered, on plain or reply channels."""
    channel = unique()
    async with layer_factory() as layer:
        reply = await layer.new_channel()
        await layer.send(channel, {"old": True})
        await layer.send(reply, {"old": True})
        await layer.flush()
        await expect_nothing(layer, channel)
        await expect_nothing(layer, reply)
        await layer.send(channel, {"new": True})
        assert await receive_within(layer, channel) == {"new": True}


@requires(Capability.GROUPS)
@async_test
async def test_flush_empties_groups(layer_factory: LayerFactory) -> None:
    """After ``flush`` a group has no members."""
    group, channel = unique("grp"), unique()
    async with layer_factory() as layer:
        await layer.group_add(group, channel)
        await layer.flush()
        await layer.group_send(group, {"after": "flush"})
        await expect_nothing(layer, channel)


@async_test
async def test_flush_frees_capacity(layer_factory: LayerFactory) -> None:
    """A full channel accepts messages again after ``flush``."""
    channel = unique()
    async with layer_factory(capacity=2) as layer:
        await layer.send(channel, {"i": 0})
        await layer.send(channel, {"i": 1})
        await layer.flush()
        await layer.send(channel, {"i": 2})
        await layer.send(channel, {"i": 3})
        assert await receive_within(layer, channel) == {"i": 2}


@async_test
async def test_flush_seen_by_other_layers(layer_factory: LayerFactory) -> None:
    """A flush by one layer empties the store for the other layers of the deployment."""
    channel = unique()
    async with layer_factory() as one, layer_factory() as two:
        await one.send(channel, {"old": True})
        await two.flush()
        await expect_nothing(one, channel)
