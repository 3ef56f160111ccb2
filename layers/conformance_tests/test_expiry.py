"""Expiry: unread messages are dropped after ``expiry``; memberships after ``group_expiry``."""

from __future__ import annotations

import asyncio

from layers.conformance_tests.helpers import expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability
from layers.core.errors import ChannelFull


@async_test
async def test_message_expires_unread(layer_factory: LayerFactory) -> None:
    """A message unread after ``expiry`` seconds is never delivered."""
    channel = unique()
    async with layer_factory(expiry=0.4) as layer:
        await layer.send(channel, {"old": True})
        await asyncio.sleep(0.7)
        await expect_nothing(layer, channel)
        await layer.send(channel, {"new": True})
        assert await receive_within(layer, channel) == {"new": True}


@async_test
async def test_message_received_before_expiry(layer_factory: LayerFactory) -> None:
    """A message read well within ``expiry`` is delivered."""
    channel = unique()
    async with layer_factory(expiry=5) as layer:
        await layer.send(channel, {"fresh": True})
        await asyncio.sleep(0.2)
        assert await receive_within(layer, channel) == {"fresh": True}


@async_test
async def test_expired_messages_free_capacity(layer_factory: LayerFactory) -> None:
    """Capacity counts unexpired messages only: a full channel accepts again once they expire."""
    channel = unique()
    async with layer_factory(expiry=0.4, capacity=2) as layer:
        await layer.send(channel, {"n": 1})
        await layer.send(channel, {"n": 2})
        await asyncio.sleep(0.7)
        await layer.send(channel, {"n": 3})
        assert await receive_within(layer, channel) == {"n": 3}


@async_test
async def test_reply_channel_message_expires(layer_factory: LayerFactory) -> None:
    """A message on a reply channel also expires unread."""
    async with layer_factory(expiry=0.4) as layer:
        reply = await layer.new_channel()
        await layer.send(reply, {"old": True})
        await asyncio.sleep(0.7)
        await expect_nothing(layer, reply)


@async_test
async def test_reply_message_expires_even_when_buffered_locally(
    layer_factory: LayerFactory,
) -> None:
    """A reply message taken into the local buffer by the inbox reader still expires on time."""
    async with layer_factory(expiry=0.6) as layer:
        first, second = await layer.new_channel(), await layer.new_channel()
        await layer.send(first, {"old": True})
        await asyncio.sleep(0.4)
        # Reading the second channel makes the inbox reader take the first's message too.
        await layer.send(second, {"wake": True})
        assert await receive_within(layer, second) == {"wake": True}
        await asyncio.sleep(0.5)
        await expect_nothing(layer, first)


@requires(Capability.GROUPS)
@async_test
async def test_group_membership_expires(layer_factory: LayerFactory) -> None:
    """Membership ends ``group_expiry`` seconds after the latest ``group_add``."""
    group, channel = unique("grp"), unique()
    async with layer_factory(group_expiry=0.4) as layer:
        await layer.group_add(group, channel)
        await asyncio.sleep(0.7)
        await layer.group_send(group, {"late": True})
        await expect_nothing(layer, channel)


@requires(Capability.GROUPS)
@async_test
async def test_group_add_refreshes_expiry(layer_factory: LayerFactory) -> None:
    """Adding a member again moves its membership expiry to ``group_expiry`` from now."""
    group, channel = unique("grp"), unique()
    async with layer_factory(group_expiry=1.5) as layer:
        await layer.group_add(group, channel)
        await asyncio.sleep(0.9)
        await layer.group_add(group, channel)
        await asyncio.sleep(0.9)
        await layer.group_send(group, {"still": "member"})
        assert await receive_within(layer, channel) == {"still": "member"}


@async_test
async def test_expiry_counts_from_send_not_from_receive(layer_factory: LayerFactory) -> None:
    """Waiting past expiry with a full channel: the old messages are gone, not queued behind."""
    channel = unique()
    async with layer_factory(expiry=0.4, capacity=3) as layer:
        for i in range(3):
            await layer.send(channel, {"i": i})
        try:
            await layer.send(channel, {"i": 99})
        except ChannelFull:
            pass
        else:
            raise AssertionError("a fourth message fitted in a channel of capacity 3")
        await asyncio.sleep(0.7)
        for i in range(3, 6):
            await layer.send(channel, {"i": i})
        got = [(await receive_within(layer, channel))["i"] for _ in range(3)]
        assert got == [3, 4, 5]
        await expect_nothing(layer, channel)
