"""Scale and completeness: no pop takes more than is handed out, nothing is cut at a page.

A store is read in pages, batches and scans; these rules make sure every page is
read, expired backlog never hides a live message, a receive takes no more than its
consumers want (the rest stays for other processes), and stale channels do not keep
this process's memory growing.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import Any

from layers.conformance_tests.helpers import drain, receive_within, sized, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability


@async_test
async def test_receive_takes_no_more_than_it_hands_out(layer_factory: LayerFactory) -> None:
    """One ``receive`` on a deep channel takes one message; the rest stays for other readers.

    At ``prefetch=1`` (the default), whatever the layer under test was configured with:
    a layer with ``prefetch=N`` may take N at once by design (see ``test_prefetch``).
    """
    channel = unique()
    async with (
        layer_factory(capacity=100, prefetch=1) as one,
        layer_factory(capacity=100, prefetch=1) as two,
    ):
        for i in range(30):
            await one.send(channel, {"i": i})
        assert await receive_within(one, channel) == {"i": 0}
        got = [m["i"] for m in await drain(two, channel)]
        assert got == list(range(1, 30)), f"the first reader took {30 - 1 - len(got)} extra"


@async_test
async def test_live_message_behind_an_expired_backlog(layer_factory: LayerFactory) -> None:
    """A fresh message queued behind 300 expired ones (5,000 thorough) is received at once."""
    channel, backlog = unique(), sized(300, 5000)
    async with layer_factory(expiry=0.3, capacity=backlog + 1) as layer:
        for i in range(backlog):
            await layer.send(channel, {"old": i})
        await asyncio.sleep(0.5)
        await layer.send(channel, {"fresh": True})
        assert await receive_within(layer, channel) == {"fresh": True}


@requires(Capability.FLUSH)
@async_test
async def test_flush_empties_hundreds_of_channels_and_groups(layer_factory: LayerFactory) -> None:
    """``flush`` deletes every channel and group, not the first page of them."""
    channels = [unique("fl") for _ in range(300)]
    groups = (
        [unique("flg") for _ in range(150)] if Capability.GROUPS in _caps(layer_factory) else []
    )
    async with layer_factory() as layer:
        for channel in channels:
            await layer.send(channel, {"old": True})
        for group, channel in zip(groups, channels, strict=False):
            await layer.group_add(group, channel)
        await layer.flush()
        for group in groups:
            await layer.group_send(group, {"group": "after flush"})
        for channel in channels:
            await layer.send(channel, {"new": True})
        got = await asyncio.gather(*(receive_within(layer, c) for c in channels))
        left = [c for c, m in zip(channels, got, strict=True) if m != {"new": True}]
        assert not left, f"{len(left)} of {len(channels)} channels kept data after flush"


def _caps(layer_factory: LayerFactory) -> frozenset[Capability]:
    return layer_factory().capabilities


async def _settle(step: Any, seconds: float) -> None:
    """Keep a trickle of traffic for ``seconds`` (lazy sweeps run on writes)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await step()
        await asyncio.sleep(0.05)


async def _growth(burst: Any, step: Any, rounds: int) -> int:
    """Bytes this process holds after ``rounds`` bursts of expiring writes and a settling
    period, compared with before them."""
    await burst()  # warm up connections and caches
    await _settle(step, 0.2)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(rounds):
            await burst()
            await asyncio.sleep(0.03)
        await _settle(step, 1.5)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@async_test
async def test_unread_distinct_channels_do_not_grow_memory(layer_factory: LayerFactory) -> None:
    """Messages to 2,000 distinct channels (6,000 thorough) nobody reads, all expired a
    second and a half later, leave this process's memory where it was: what an expired
    channel held is released, not kept forever.

    A cache bounded by a fixed number of names is allowed (the rule tolerates 1,000 bytes
    per channel, each message carrying 1 kB); for a server-side store this checks the
    client side only.
    """
    body = {"pad": b"x" * 1000}
    rounds, per_round = sized(20, 60), 100
    async with layer_factory(expiry=0.1, capacity=5) as layer:

        async def burst() -> None:
            for _ in range(per_round):
                await layer.send(unique("churn"), body)

        async def step() -> None:
            await layer.send(unique("trickle"), body)

        grown = await _growth(burst, step, rounds)
    sent = rounds * per_round
    assert grown < 1000 * sent, f"memory grew by {grown} bytes over {sent} expired messages"


@requires(Capability.GROUPS)
@async_test
async def test_expired_memberships_of_distinct_groups_do_not_grow_memory(
    layer_factory: LayerFactory,
) -> None:
    """Eight members in each of 600 distinct groups (2,500 thorough), all expired a second
    and a half later, leave this process's memory where it was: an expired group is
    released, not kept forever.

    A cache bounded by a fixed number of names is allowed (the rule tolerates 500 bytes
    per group); for a server-side store this checks the client side only.
    """
    members = [unique("member") for _ in range(8)]
    rounds, per_round = sized(12, 50), 50
    async with layer_factory(group_expiry=0.1) as layer:

        async def burst() -> None:
            for _ in range(per_round):
                group = unique("g")
                for member in members:
                    await layer.group_add(group, member)

        async def step() -> None:
            await layer.group_add(unique("trickle"), members[0])

        grown = await _growth(burst, step, rounds)
    added = rounds * per_round
    assert grown < 500 * added, f"memory grew by {grown} bytes over {added} expired groups"
