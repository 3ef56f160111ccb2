"""Expiry semantics: each message and each membership has its own expiry, to the millisecond.

The core drops a message whose sender-side deadline has passed before handing it to a
consumer, so a store that keeps expired payloads is seen through what they still
occupy: capacity. These rules therefore check expiry through ``ChannelFull`` as well
as through delivery.
"""

from __future__ import annotations

import asyncio

from layers.conformance_tests.helpers import drain, expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability


@async_test
async def test_expiry_is_per_message_on_a_busy_channel(layer_factory: LayerFactory) -> None:
    """A later send neither extends nor shortens the life of the messages already queued."""
    channel = unique()
    async with layer_factory(expiry=0.8, capacity=2) as layer:
        await layer.send(channel, {"n": 0})
        await asyncio.sleep(0.5)
        await layer.send(channel, {"n": 1})
        await asyncio.sleep(0.5)
        # n=0 is 1.0 s old (expired, so it frees its place); n=1 is 0.5 s old (alive).
        await layer.send(channel, {"n": 2})
        assert [m["n"] for m in await drain(layer, channel)] == [1, 2]


@async_test
async def test_an_expired_message_behind_a_live_one_frees_its_place(
    layer_factory: LayerFactory,
) -> None:
    """Senders with different expiries share a channel: an expired message frees its place.

    The short-lived message is queued behind a long-lived one. A store that drops
    expired messages only from the head of a queue still counts it, and refuses a
    send that the capacity allows; a store that judges a queue expired by its last
    message drops the live one with it.
    """
    channel, other = unique(), unique()
    async with (
        layer_factory(expiry=60, capacity=2) as lasting,
        layer_factory(expiry=0.3, capacity=2) as brief,
        layer_factory(capacity=100) as busy,
    ):
        await lasting.send(channel, {"n": 0})
        await brief.send(channel, {"n": 1})
        await asyncio.sleep(0.6)
        # Writes elsewhere, which make a store clean up expired queues: the channel's
        # last message expired, its first did not, so the channel must stay.
        for i in range(100):
            await busy.send(other, {"n": i})
        await lasting.send(channel, {"n": 2})  # one live message queued: room for this one
        assert [m["n"] for m in await drain(lasting, channel)] == [0, 2]


@async_test
async def test_fractional_expiry_is_kept(layer_factory: LayerFactory) -> None:
    """An expiry of 1.5 s means 1.5 s: neither truncated to 1 s nor rounded up to 2 s."""
    kept, freed = unique(), unique()
    async with layer_factory(expiry=1.5, capacity=1) as layer:
        await layer.send(kept, {"n": "kept"})
        await layer.send(freed, {"n": "old"})
        await asyncio.sleep(1.15)
        assert await receive_within(layer, kept) == {"n": "kept"}, "1.5 s became 1 s"
        await asyncio.sleep(1.85 - 1.15)
        # The old message expired at 1.5 s: its place is free (not still taken until 2 s).
        await layer.send(freed, {"n": "new"})
        assert await receive_within(layer, freed) == {"n": "new"}


@async_test
async def test_reply_channel_messages_expire_and_free_capacity(
    layer_factory: LayerFactory,
) -> None:
    """Unread messages of a reply channel (its process's inbox) expire and free its capacity."""
    async with layer_factory(expiry=0.4, capacity=2) as layer:
        reply = await layer.new_channel()
        await layer.send(reply, {"i": 0})
        await layer.send(reply, {"i": 1})
        await asyncio.sleep(0.7)
        await layer.send(reply, {"i": 2})
        await layer.send(reply, {"i": 3})
        assert [m["i"] for m in await drain(layer, reply)] == [2, 3]


@requires(Capability.GROUPS)
@async_test
async def test_group_membership_expires_per_member(layer_factory: LayerFactory) -> None:
    """Each membership expires ``group_expiry`` after its own latest add.

    Adding another member to the group, or the same channel to another group,
    refreshes nothing else; adding a member late does not make it expire early.
    """
    first, second = unique("grp"), unique("grp")
    early, late, shared = unique(), unique(), unique()
    async with layer_factory(group_expiry=1.2) as layer:
        await layer.group_add(first, early)
        await layer.group_add(first, shared)
        await asyncio.sleep(0.7)
        await layer.group_add(first, late)
        await layer.group_add(second, shared)
        await asyncio.sleep(0.7)
        # early and shared-in-first: 1.4 s old (gone); late and shared-in-second: 0.7 s.
        await layer.group_send(first, {"group": 1})
        await layer.group_send(second, {"group": 2})
        assert await receive_within(layer, late) == {"group": 1}
        assert await drain(layer, shared) == [{"group": 2}]
        await expect_nothing(layer, early)
