"""Groups: fan-out to members, idempotent add, no-op discard, one copy per member."""

from __future__ import annotations

import pytest

from layers.conformance_tests.helpers import drain, expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability

pytestmark = requires(Capability.GROUPS)


@async_test
async def test_group_send_reaches_every_member(layer_factory: LayerFactory) -> None:
    """``group_send`` puts one copy on each member: plain and reply channels alike."""
    group = unique("grp")
    async with layer_factory() as layer:
        plain = [unique() for _ in range(3)]
        replies = [await layer.new_channel() for _ in range(3)]
        for channel in plain + replies:
            await layer.group_add(group, channel)
        await layer.group_send(group, {"hello": "all"})
        for channel in plain + replies:
            assert await receive_within(layer, channel) == {"hello": "all"}
        for channel in plain + replies:
            await expect_nothing(layer, channel, quiet=0.05)


@async_test
async def test_group_send_reaches_members_of_other_layers(layer_factory: LayerFactory) -> None:
    """Members' reply channels made by different layers (processes) each get one copy."""
    group = unique("grp")
    async with layer_factory() as one, layer_factory() as two:
        mine, theirs = await one.new_channel(), await two.new_channel()
        await one.group_add(group, mine)
        await one.group_add(group, theirs)
        await two.group_send(group, {"n": 1})
        assert await receive_within(one, mine) == {"n": 1}
        assert await receive_within(two, theirs) == {"n": 1}
        await expect_nothing(one, mine)
        await expect_nothing(two, theirs)


@async_test
async def test_group_add_is_idempotent(layer_factory: LayerFactory) -> None:
    """Adding a member twice delivers one copy per ``group_send`` (plain and reply channels)."""
    group, plain = unique("grp"), unique()
    async with layer_factory() as layer:
        reply = await layer.new_channel()
        for _ in range(3):
            await layer.group_add(group, plain)
            await layer.group_add(group, reply)
        await layer.group_send(group, {"once": True})
        assert await drain(layer, plain) == [{"once": True}]
        assert await drain(layer, reply) == [{"once": True}]


@async_test
async def test_group_discard_removes_member(layer_factory: LayerFactory) -> None:
    """A discarded member no longer receives; the others still do."""
    group, gone, kept = unique("grp"), unique(), unique()
    async with layer_factory() as layer:
        await layer.group_add(group, gone)
        await layer.group_add(group, kept)
        await layer.group_discard(group, gone)
        await layer.group_send(group, {"n": 1})
        assert await receive_within(layer, kept) == {"n": 1}
        await expect_nothing(layer, gone)


@async_test
async def test_group_discard_of_non_member_is_a_no_op(layer_factory: LayerFactory) -> None:
    """Discarding a non-member (or from an unknown group) does nothing and raises nothing."""
    group, member = unique("grp"), unique()
    async with layer_factory() as layer:
        await layer.group_discard(unique("nogroup"), unique())
        await layer.group_add(group, member)
        await layer.group_discard(group, unique())
        await layer.group_discard(group, member)
        await layer.group_discard(group, member)
        await layer.group_add(group, member)
        await layer.group_send(group, {"back": True})
        assert await receive_within(layer, member) == {"back": True}


@async_test
async def test_group_send_to_empty_group(layer_factory: LayerFactory) -> None:
    """``group_send`` to a group with no members does nothing and raises nothing."""
    async with layer_factory() as layer:
        await layer.group_send(unique("grp"), {"nobody": True})


@async_test
async def test_groups_are_independent(layer_factory: LayerFactory) -> None:
    """A channel in two groups gets one copy per ``group_send``, from the named group only."""
    first, second, channel, other = unique("grp"), unique("grp"), unique(), unique()
    async with layer_factory() as layer:
        await layer.group_add(first, channel)
        await layer.group_add(second, channel)
        await layer.group_add(second, other)
        await layer.group_send(first, {"from": "first"})
        assert await drain(layer, channel) == [{"from": "first"}]
        await expect_nothing(layer, other)


@async_test
async def test_group_send_keeps_order(layer_factory: LayerFactory) -> None:
    """Successive ``group_send`` calls arrive in order at each member."""
    group, channel = unique("grp"), unique()
    async with layer_factory(capacity=200) as layer:
        reply = await layer.new_channel()
        await layer.group_add(group, channel)
        await layer.group_add(group, reply)
        for i in range(100):
            await layer.group_send(group, {"i": i})
        assert [m["i"] for m in await drain(layer, channel)] == list(range(100))
        assert [m["i"] for m in await drain(layer, reply)] == list(range(100))


@async_test
async def test_group_names_are_checked(layer_factory: LayerFactory) -> None:
    """Invalid group names raise TypeError; 100 characters are accepted, 101 rejected."""
    async with layer_factory() as layer:
        channel = unique()
        for bad in ("", "bad name", "has!bang", "é", "x" * 101):
            with pytest.raises(TypeError):
                await layer.group_add(bad, channel)
            with pytest.raises(TypeError):
                await layer.group_send(bad, {})
        long_name = "g" * 100
        await layer.group_add(long_name, channel)
        await layer.group_send(long_name, {"long": True})
        assert await receive_within(layer, channel) == {"long": True}
        await layer.group_discard(long_name, channel)
