"""Capacity: ``ChannelFull`` at capacity, per-channel patterns, group_send skips full members."""

from __future__ import annotations

import asyncio
import re

import pytest

from layers.conformance_tests.helpers import drain, expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability
from layers.core.errors import ChannelFull


@async_test
async def test_send_raises_channel_full_at_capacity(layer_factory: LayerFactory) -> None:
    """``send`` raises ChannelFull when the channel holds ``capacity`` messages (nothing stored)."""
    channel = unique()
    async with layer_factory(capacity=3) as layer:
        for i in range(3):
            await layer.send(channel, {"i": i})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"i": 3})
        assert [m["i"] for m in await drain(layer, channel)] == [0, 1, 2]
        await layer.send(channel, {"i": 4})
        assert await receive_within(layer, channel) == {"i": 4}


@async_test
async def test_receiving_frees_capacity(layer_factory: LayerFactory) -> None:
    """A received message no longer counts against capacity."""
    channel = unique()
    async with layer_factory(capacity=2) as layer:
        await layer.send(channel, {"i": 0})
        await layer.send(channel, {"i": 1})
        assert await receive_within(layer, channel) == {"i": 0}
        await layer.send(channel, {"i": 2})
        assert [m["i"] for m in await drain(layer, channel)] == [1, 2]


@async_test
async def test_channel_capacity_glob_first_match_wins(layer_factory: LayerFactory) -> None:
    """``channel_capacity`` glob patterns apply, and the first matching pattern wins."""
    small, other = f"{unique('small')}.x", unique("plain")
    patterns = {"conf.small.*": 2, "conf.*": 5}
    async with layer_factory(capacity=4, channel_capacity=patterns) as layer:
        assert layer.get_capacity(small) == 2
        assert layer.get_capacity(other) == 5
        assert layer.get_capacity("elsewhere") == 4
        for i in range(2):
            await layer.send(small, {"i": i})
        with pytest.raises(ChannelFull):
            await layer.send(small, {"i": 2})
        for i in range(5):
            await layer.send(other, {"i": i})
        with pytest.raises(ChannelFull):
            await layer.send(other, {"i": 5})


@async_test
async def test_channel_capacity_regex(layer_factory: LayerFactory) -> None:
    """``channel_capacity`` accepts compiled regexes, first match wins."""
    channel = f"conf.rx{unique('n')[5:]}"
    patterns = [(re.compile(r"^conf\.rx"), 1), (re.compile(r"^conf\."), 3)]
    async with layer_factory(channel_capacity=patterns) as layer:
        assert layer.get_capacity(channel) == 1
        await layer.send(channel, {"i": 0})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"i": 1})


@async_test
async def test_reply_channels_of_one_inbox_share_capacity(layer_factory: LayerFactory) -> None:
    """Reply channels of one layer share their inbox's capacity (the non-local name's)."""
    async with layer_factory(capacity=3) as layer:
        first, second = await layer.new_channel(), await layer.new_channel()
        await layer.send(first, {"i": 0})
        await layer.send(first, {"i": 1})
        await layer.send(second, {"i": 2})
        with pytest.raises(ChannelFull):
            await layer.send(second, {"i": 3})
        with pytest.raises(ChannelFull):
            await layer.send(first, {"i": 4})
        assert [m["i"] for m in await drain(layer, first)] == [0, 1]
        assert [m["i"] for m in await drain(layer, second)] == [2]


@requires(Capability.GROUPS)
@async_test
async def test_group_send_skips_full_members(layer_factory: LayerFactory) -> None:
    """``group_send`` never raises ChannelFull; a full member misses the message, others get it."""
    group, full, free = unique("grp"), unique("full"), unique("free")
    async with layer_factory(capacity=2) as layer:
        await layer.group_add(group, full)
        await layer.group_add(group, free)
        await layer.send(full, {"i": 0})
        await layer.send(full, {"i": 1})
        await layer.group_send(group, {"i": "group"})
        assert await receive_within(layer, free) == {"i": "group"}
        assert [m["i"] for m in await drain(layer, full)] == [0, 1]


@requires(Capability.GROUPS)
@async_test
async def test_group_send_honours_channel_capacity(layer_factory: LayerFactory) -> None:
    """``group_send`` checks each member against its own ``channel_capacity`` pattern."""
    group, tight, roomy = unique("grp"), unique("tight"), unique("roomy")
    async with layer_factory(capacity=1, channel_capacity={"*roomy*": 3}) as layer:
        await layer.group_add(group, tight)
        await layer.group_add(group, roomy)
        await layer.send(tight, {"i": 0})
        await layer.send(roomy, {"i": 0})
        await layer.group_send(group, {"i": "group"})  # tight is full, roomy is not
        assert [m["i"] for m in await drain(layer, tight)] == [0]
        assert [m["i"] for m in await drain(layer, roomy)] == [0, "group"]


@requires(Capability.GROUPS)
@async_test
async def test_group_send_to_a_full_reply_inbox(layer_factory: LayerFactory) -> None:
    """A full reply inbox is skipped by ``group_send`` without an error."""
    group = unique("grp")
    async with layer_factory(capacity=1) as layer:
        reply, plain = await layer.new_channel(), unique()
        await layer.group_add(group, reply)
        await layer.group_add(group, plain)
        await layer.send(reply, {"first": True})
        await layer.group_send(group, {"group": True})
        assert await receive_within(layer, plain) == {"group": True}
        assert await receive_within(layer, reply) == {"first": True}
        await expect_nothing(layer, reply)


@async_test
async def test_unread_reply_channels_stay_bounded(layer_factory: LayerFactory) -> None:
    """Ten times capacity sent to an unread reply channel stays bounded by its capacity."""
    capacity = 20
    async with layer_factory(capacity=capacity) as layer:
        unread, busy = await layer.new_channel(), await layer.new_channel()
        # A consumer waiting on a sibling channel keeps the inbox reader moving every
        # message of the unread channel into its local buffer, which must stay bounded.
        listener = asyncio.create_task(layer.receive(busy))
        stored = 0
        for i in range(capacity * 10):
            try:
                await layer.send(unread, {"i": i})
                stored += 1
            except ChannelFull:
                pass
            await asyncio.sleep(0.001 if i % 10 == 0 else 0)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        assert stored > capacity, "the reader never drained the inbox"
        got = await drain(layer, unread)
        # At most a full local buffer plus a full inbox in the store.
        assert capacity // 2 <= len(got) <= 2 * capacity
        numbers = [m["i"] for m in got]
        assert numbers == sorted(numbers)
