"""Group bookkeeping: operations touch only the named membership, at any group size."""

from __future__ import annotations

import asyncio

from layers.conformance_tests.helpers import drain, expect_nothing, receive_within, sized, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability

pytestmark = requires(Capability.GROUPS)


@async_test
async def test_group_discard_touches_only_the_named_membership(
    layer_factory: LayerFactory,
) -> None:
    """Discarding a channel from one group leaves its other groups and the other members."""
    first, second = unique("grp"), unique("grp")
    shared, other = unique(), unique()
    async with layer_factory() as layer:
        await layer.group_add(first, shared)
        await layer.group_add(second, shared)
        await layer.group_add(first, other)
        await layer.group_discard(first, shared)
        await layer.group_send(first, {"group": 1})
        await layer.group_send(second, {"group": 2})
        assert await drain(layer, shared) == [{"group": 2}]
        assert await drain(layer, other) == [{"group": 1}]


async def _receive_all(layer: object, channels: list[str], expected: object) -> None:
    from layers.core.layer import ChannelLayer

    assert isinstance(layer, ChannelLayer)
    got = await asyncio.gather(*(receive_within(layer, c) for c in channels))
    missing = [c for c, m in zip(channels, got, strict=True) if m != expected]
    assert not missing, f"{len(missing)} members got {got[0]!r} instead"


@async_test
async def test_large_group_reaches_every_member_once(layer_factory: LayerFactory) -> None:
    """A group of 400 members (plain channels and the reply channels of two layers) gets
    one copy each, and after discarding half, only the rest does (4,000 in the thorough
    profile).

    Large enough to cross a page of ``SCAN``/``LIMIT`` results and a batch of statements.
    """
    group = unique("big")
    async with layer_factory() as one, layer_factory() as two:
        k = sized(1, 10)  # the thorough profile: 4,000 members
        plain = [unique("m") for _ in range(200 * k)]
        mine = [await one.new_channel() for _ in range(120 * k)]
        theirs = [await two.new_channel() for _ in range(80 * k)]
        for channel in plain + mine + theirs:
            await one.group_add(group, channel)
        await two.group_send(group, {"n": 1})
        await _receive_all(one, plain + mine, {"n": 1})
        await _receive_all(two, theirs, {"n": 1})
        for channel in plain[::2] + mine[::2] + theirs[::2]:
            await two.group_discard(group, channel)
        await one.group_send(group, {"n": 2})
        await _receive_all(one, plain[1::2] + mine[1::2], {"n": 2})
        await _receive_all(two, theirs[1::2], {"n": 2})
        for channel in (plain[0], mine[0]):
            await expect_nothing(one, channel, quiet=0.1)
        await expect_nothing(two, theirs[0], quiet=0.1)
