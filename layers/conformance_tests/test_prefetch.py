"""``prefetch=N``: a process may hold up to N messages of a normal channel, and the contract holds.

A layer with ``prefetch`` above 1 takes several messages of a normal channel per pop
and holds them for its own consumers (AMQP's ``prefetch_count``). What it holds is
still the channel's: each message reaches one consumer, once, in the channel's order;
a held message expires on time; a consumer cancelled while messages are held loses
none of them; and what a closing process still holds goes back to the head of the
channel, in order, for the other processes (when the backend implements
:meth:`~layers.Backend.restore`; without it, held messages leave with the process,
which the contract allows as loss, never as duplication or reordering).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from layers.conformance_tests.helpers import drain, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, settings
from layers.conformance_tests.test_loss import restores
from layers.core.layer import ChannelLayer

#: How many messages a prefetching layer of these rules may hold.
PREFETCH = 10


@async_test
async def test_prefetching_processes_receive_each_message_once_in_order(
    layer_factory: LayerFactory,
) -> None:
    """Two prefetching processes consume one channel: every message once, each in order."""
    channel, total = unique("prefetch-compete"), 200
    async with (
        layer_factory(capacity=total) as sender,
        layer_factory(prefetch=PREFETCH) as a,
        layer_factory(prefetch=PREFETCH) as b,
    ):
        got: dict[str, list[int]] = {"a": [], "b": []}
        everything: list[int] = []
        done = asyncio.Event()

        async def consume(name: str, layer: ChannelLayer) -> None:
            while not done.is_set():
                try:
                    message = await asyncio.wait_for(layer.receive(channel), 0.2)
                except TimeoutError:
                    continue
                got[name].append(message["i"])
                everything.append(message["i"])
                if len(everything) >= total:
                    done.set()

        consumers = [asyncio.create_task(consume("a", a)), asyncio.create_task(consume("b", b))]
        for i in range(total):
            await sender.send(channel, {"i": i})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.wait * 2):
                await done.wait()
        done.set()
        await asyncio.gather(*consumers)
    assert len(everything) == len(set(everything)), "a message reached two consumers"
    assert sorted(everything) == list(range(total)), "messages lost"
    for name, mine in got.items():
        assert mine == sorted(mine), f"consumer {name} got an older message after a newer one"


@async_test
async def test_held_messages_go_back_in_order_when_a_prefetching_layer_closes(
    layer_factory: LayerFactory,
) -> None:
    """A closes holding 1..5 of one channel (6 and 7 were sent meanwhile) and 1..2 of another.

    B receives 1..7 of the first, in order, and 1..2 of the second, whose queue the
    store held nothing else of.
    """
    channel, alone = unique("prefetch-close"), unique("prefetch-alone")
    async with layer_factory() as b:
        a = layer_factory(prefetch=PREFETCH)
        async with a:
            for i in range(6):
                await b.send(channel, {"i": i})
            for i in range(3):
                await b.send(alone, {"i": i})
            assert (await receive_within(a, channel))["i"] == 0  # a now holds up to 1..5
            assert (await receive_within(a, alone))["i"] == 0  # and 1..2: the store has none
            await b.send(channel, {"i": 6})
            await b.send(channel, {"i": 7})
        rest = [m["i"] for m in await drain(b, channel)]
        rest_alone = [m["i"] for m in await drain(b, alone, quiet=0.3)]
    if restores(a):
        assert rest == list(range(1, 8)), "held messages did not go back to the head, in order"
        assert rest_alone == [1, 2], "held messages of an emptied queue did not go back"
    else:  # held messages left with the closing process: lost, never out of order
        assert rest == sorted(rest), "given-back messages out of order"
        assert set(rest) <= set(range(1, 8)), "a message delivered twice"
        assert {6, 7} <= set(rest), "messages sent after the prefetch lost"


@async_test
async def test_held_messages_expire_on_time(layer_factory: LayerFactory) -> None:
    """Messages a prefetching layer holds past their expiry reach no consumer, here or elsewhere."""
    channel = unique("prefetch-expiry")
    expiry = 1.0
    async with (
        layer_factory(expiry=expiry) as sender,
        layer_factory(prefetch=PREFETCH) as a,
        layer_factory() as b,
    ):
        for i in range(5):
            await sender.send(channel, {"i": i})
        assert (await receive_within(a, channel))["i"] == 0  # a now holds up to 1..4
        await asyncio.sleep(expiry + 0.3)
        await b.send(channel, {"i": 99})  # the default expiry: alive
        assert (await receive_within(a, channel))["i"] == 99, "a held message outlived its expiry"
        late = [m["i"] for m in await drain(b, channel, quiet=0.3)]
        assert late == [], f"expired messages delivered elsewhere: {late}"


@async_test
async def test_cancelled_receives_lose_no_held_message(layer_factory: LayerFactory) -> None:
    """Receives on a prefetching layer time out at random moments: nothing is lost or reordered.

    What A's consumer got, followed by what B drains after A closes, is the channel's
    whole sequence: a message held when a receive was cancelled goes to A's next
    receive or, on close, back to the head of the channel.
    """
    channel, total = unique("prefetch-cancel"), 60
    rng = random.Random(7)
    async with layer_factory(capacity=total) as b:
        a = layer_factory(prefetch=PREFETCH)
        got: list[int] = []
        async with a:
            for i in range(total):
                await b.send(channel, {"i": i})
            deadline = asyncio.get_running_loop().time() + settings.wait
            # Stop at a count that is no multiple of PREFETCH, so A holds some when it closes.
            while len(got) < total // 2 - 3 and asyncio.get_running_loop().time() < deadline:
                try:
                    message = await asyncio.wait_for(a.receive(channel), rng.uniform(0, 0.004))
                except TimeoutError:
                    continue
                got.append(message["i"])
        rest = [m["i"] for m in await drain(b, channel)]
    assert got == sorted(got), "a consumer received an older message after a newer one"
    assert len(got) >= total // 2 - 3, f"only {len(got)} received in {settings.wait} s"
    if restores(a):
        assert got + rest == list(range(total)), "held messages lost, repeated or reordered"
    else:
        both = got + rest
        assert len(both) == len(set(both)), "a message was delivered twice"
        assert rest == sorted(rest)
