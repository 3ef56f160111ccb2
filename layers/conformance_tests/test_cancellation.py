"""Cancellation: a cancelled ``receive`` loses nothing; a cancelled ``send`` happened or not."""

from __future__ import annotations

import asyncio
import contextlib
import random

from layers.conformance_tests.helpers import drain, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test
from layers.conformance_tests.test_loss import restores
from layers.core.layer import ChannelLayer


async def _cancel_after(task: asyncio.Task[object], rng: random.Random) -> None:
    for _ in range(rng.randrange(0, 4)):
        await asyncio.sleep(0)
    if rng.random() < 0.3:
        await asyncio.sleep(rng.random() * 0.002)
    task.cancel()


@async_test
async def test_cancelled_receive_loses_nothing(layer_factory: LayerFactory) -> None:
    """A receive cancelled before a message arrives does not swallow the message."""
    channel = unique()
    async with layer_factory() as layer:
        waiting = asyncio.create_task(layer.receive(channel))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await layer.send(channel, {"kept": True})
        assert await receive_within(layer, channel) == {"kept": True}


async def _cancel_at_every_step(layer_factory: LayerFactory, reply: bool) -> None:
    total = 60
    async with layer_factory(capacity=total) as layer:
        channel = await layer.new_channel() if reply else unique("steps")
        for i in range(total):
            await layer.send(channel, {"i": i})
        got: list[int] = []
        # Cancel after 0, 1, 2, ... event-loop turns, then after growing pauses: every step of
        # the receive path (taking, decoding, handing over) is interrupted at least once.
        for step in range(total // 2):
            task: asyncio.Task[dict[str, object]] = asyncio.create_task(layer.receive(channel))
            if step < 24:
                for _ in range(step):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.0005 * (step - 23))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                got.append((await task)["i"])  # type: ignore[arg-type]
        got.extend(m["i"] for m in await drain(layer, channel))
        assert len(got) == len(set(got)), "a message was delivered twice"
        assert got == list(range(total)), (
            f"lost {sorted(set(range(total)) - set(got))[:10]}" if len(got) < total else "reordered"
        )


@async_test
async def test_receive_cancelled_at_every_step_loses_nothing(layer_factory: LayerFactory) -> None:
    """With messages waiting, a receive cancelled at any step returns one or leaves it queued.

    The step is the number of event-loop turns (then a short pause) before ``cancel()``; unlike
    the random storms this visits each step on every run, so a backend that yields between
    taking a message and returning it fails here every time.
    """
    await _cancel_at_every_step(layer_factory, reply=False)


@async_test
async def test_reply_receive_cancelled_at_every_step_loses_nothing(
    layer_factory: LayerFactory,
) -> None:
    """The same steps on a reply channel, served through the process's shared inbox."""
    await _cancel_at_every_step(layer_factory, reply=True)


async def _cancel_together(
    consumers: list[ChannelLayer], sender: ChannelLayer, reader: ChannelLayer, *, ordered: bool
) -> None:
    channel = unique("together")
    per_round = len(consumers)
    for round_ in range(12):
        first = round_ * per_round
        sent = list(range(first, first + per_round))
        waiting = [asyncio.create_task(layer.receive(channel)) for layer in consumers]
        await asyncio.sleep(0.02)  # every receive waits
        for i in sent:
            await sender.send(channel, {"i": i})
        for _ in range(round_ % 3):  # cancel at once, or after a turn or two
            await asyncio.sleep(0)
        for task in reversed(waiting) if round_ % 2 else waiting:
            task.cancel()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        returned = [r["i"] for r in results if isinstance(r, dict)]
        assert len(returned) == len(set(returned)), f"a message was delivered twice: {returned}"
        # What the cancelled receives did not return is next (in send order, when one
        # process gave it all back).
        rest = [(await receive_within(reader, channel))["i"] for _ in sent[len(returned) :]]
        if ordered:
            assert rest == sorted(rest), f"round {round_}: given back out of order: {rest}"
        assert sorted(returned + rest) == sent, (
            f"round {round_}: sent {sent}, returned {returned}, then received {rest}"
        )
    assert await drain(reader, channel) == [], "a message was delivered twice"


@async_test
async def test_receives_cancelled_together_keep_send_order(layer_factory: LayerFactory) -> None:
    """Receives cancelled together after the sends: what they did not return comes next.

    Several receives wait on one channel and are all cancelled just after the sends that
    could satisfy them: what they did not return is received next, once, and in send
    order. The receives are those of one layer: the messages its consumers had been
    handed go back in the order they were handed, whatever order the cancellations run
    in. Then those of two layers of one deployment in one event loop (as two processes),
    when the backend gives messages back (``Backend.restore``; without it, a message a
    cancelled receive brought stays in its own layer): nothing is lost or received
    twice, but two processes that each give messages back put them at the head of the
    queue one after the other, so their order is not kept across them (one writer and
    one reader see perfect order; several readers do not).
    """
    async with layer_factory(capacity=100) as a, layer_factory(capacity=100) as b:
        await _cancel_together([a, a, a], a, a, ordered=True)
        if restores(a):
            await _cancel_together([a, b, a, b], a, b, ordered=False)


async def _storm(layer_factory: LayerFactory, channel_of: object, total: int, seed: int) -> None:
    rng = random.Random(seed)
    async with layer_factory(capacity=total) as layer:
        channel = await layer.new_channel() if channel_of == "reply" else unique("storm")
        got: list[int] = []

        async def produce() -> None:
            for i in range(total):
                await layer.send(channel, {"i": i})
                if rng.random() < 0.2:
                    await asyncio.sleep(0)

        producer = asyncio.create_task(produce())
        while not producer.done() or len(got) < total:
            task: asyncio.Task[object] = asyncio.create_task(layer.receive(channel))
            await _cancel_after(task, rng)
            try:
                message = await task
            except asyncio.CancelledError:
                if producer.done():
                    break
                continue
            got.append(message["i"])  # type: ignore[index]
        await producer
        got.extend(m["i"] for m in await drain(layer, channel))
        assert len(got) == len(set(got)), "a message was delivered twice"
        assert got == sorted(got), "order changed"
        assert got == list(range(total)), f"lost {sorted(set(range(total)) - set(got))[:10]}"


@async_test
async def test_cancellation_storm_plain_channel(layer_factory: LayerFactory) -> None:
    """Receives cancelled at random moments while messages flow lose and duplicate nothing."""
    await _storm(layer_factory, "plain", 600, seed=1)


@async_test
async def test_cancellation_storm_reply_channel(layer_factory: LayerFactory) -> None:
    """The same storm on a reply channel (served through the shared inbox)."""
    await _storm(layer_factory, "reply", 600, seed=2)


@async_test
async def test_cancelled_send_happened_or_not(layer_factory: LayerFactory) -> None:
    """A send cancelled at a random moment is stored once or not at all; completed sends arrive."""
    rng = random.Random(3)
    channel = unique()
    async with layer_factory(capacity=500) as layer:
        completed: list[int] = []
        for i in range(200):
            task = asyncio.create_task(layer.send(channel, {"i": i}))
            await _cancel_after(task, rng)
            try:
                await task
            except asyncio.CancelledError:
                continue
            completed.append(i)
        got = [m["i"] for m in await drain(layer, channel)]
        assert len(got) == len(set(got)), "a cancelled send was stored twice"
        assert got == sorted(got)
        assert set(completed) <= set(got), "a completed send was lost"
