"""Statistics: pending messages, oldest age, capacity and group sizes, read without side effects."""

from __future__ import annotations

import asyncio

from layers.conformance_tests.helpers import receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability

pytestmark = requires(Capability.STATISTICS)


@async_test
async def test_statistics_count_pending_messages_and_their_age(
    layer_factory: LayerFactory,
) -> None:
    """Each channel's pending count and oldest age are reported; reading takes nothing."""
    async with layer_factory(expiry=30) as layer:
        busy, quiet = unique("busy"), unique("quiet")
        for n in range(4):
            await layer.send(busy, {"n": n})
        await asyncio.sleep(0.3)
        await layer.send(quiet, {"n": 0})
        stats = await layer.statistics()
        by_name = {c.name: c for c in stats.channels}
        assert by_name[busy].pending == 4
        assert by_name[quiet].pending == 1
        age = by_name[busy].oldest_age
        assert age is not None
        assert 0.2 <= age < 10, age
        quiet_age = by_name[quiet].oldest_age
        assert quiet_age is not None
        assert quiet_age < age
        names = [c.name for c in stats.channels]
        assert names.index(busy) < names.index(quiet)  # busiest first
        # reading changed nothing
        assert [(await receive_within(layer, busy))["n"] for _ in range(4)] == [0, 1, 2, 3]
        assert await receive_within(layer, quiet) == {"n": 0}
        after = {c.name for c in (await layer.statistics()).channels}
        assert busy not in after
        assert quiet not in after


@async_test
async def test_statistics_report_full_channels(layer_factory: LayerFactory) -> None:
    """A channel holding its capacity is reported full, with that capacity."""
    async with layer_factory(capacity=3) as layer:
        full, roomy = unique("full"), unique("roomy")
        for n in range(3):
            await layer.send(full, {"n": n})
        await layer.send(roomy, {"n": 0})
        stats = await layer.statistics()
        by_name = {c.name: c for c in stats.channels}
        assert (by_name[full].capacity, by_name[full].full) == (3, True)
        assert by_name[roomy].full is False
        assert stats.full_channels >= 1
        for n in range(3):
            assert await receive_within(layer, full) == {"n": n}
        await receive_within(layer, roomy)


@async_test
async def test_statistics_report_group_sizes(layer_factory: LayerFactory) -> None:
    """Each group's number of members, after adds and a discard."""
    async with layer_factory() as layer:
        big, small = unique("big"), unique("small")
        for n in range(3):
            await layer.group_add(big, f"{big}.member{n}")
        await layer.group_add(small, f"{small}.member")
        await layer.group_add(small, f"{small}.other")
        await layer.group_discard(small, f"{small}.other")
        sizes = {g.name: g.size for g in (await layer.statistics()).groups}
        assert sizes[big] == 3
        assert sizes[small] == 1
        for n in range(3):
            await layer.group_discard(big, f"{big}.member{n}")
        await layer.group_discard(small, f"{small}.member")
        sizes = {g.name: g.size for g in (await layer.statistics()).groups}
        assert big not in sizes
        assert small not in sizes


@async_test
async def test_statistics_never_count_expired_messages(layer_factory: LayerFactory) -> None:
    """A message past its expiry is not pending."""
    async with layer_factory(expiry=0.3) as layer:
        channel = unique("gone")
        await layer.send(channel, {"n": 1})
        await asyncio.sleep(0.5)
        names = {c.name for c in (await layer.statistics()).channels}
        assert channel not in names
