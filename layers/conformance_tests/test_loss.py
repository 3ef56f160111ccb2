"""Nothing is hoarded or stranded: demand follows the live waiters, from any loop or process.

A consumer that polls with a timeout (``asyncio.wait_for(layer.receive(c), t)``),
is cancelled, or exits must leave nothing behind: no demand that keeps its process
popping for nobody, no message stuck in its process while others wait, and no
message stuck in an event loop that has closed (``async_to_sync`` runs each call in
a new loop). These rules run the API the way applications call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import threading
import time
from typing import Any

from layers.conformance_tests.helpers import drain, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires, settings
from layers.conformance_tests.test_processes import _need_url, _result, _spawn
from layers.core.backend import Backend, Capability
from layers.core.layer import ChannelLayer


def restores(layer: ChannelLayer) -> bool:
    """Whether the backend implements :meth:`Backend.restore` (gives messages back).

    Without it, a message that a cancelled consumer's pop brought stays in that
    process (receivable there until it expires) and is lost if the process exits:
    the rules then allow one such message per polling consumer.
    """
    return layer.backend_class.restore is not Backend.restore


async def _poll(layer: ChannelLayer, channel: str, stop: asyncio.Event, got: list[int]) -> None:
    """Receive with a 5 ms timeout around every call until ``stop`` is set."""
    while not stop.is_set():
        try:
            message = await asyncio.wait_for(layer.receive(channel), 0.005)
        except TimeoutError:
            continue
        got.append(message["i"])


@async_test
async def test_timed_out_receive_leaves_no_demand(layer_factory: LayerFactory) -> None:
    """After one receive timed out on A, everything sent goes to B, who waits.

    At ``prefetch=1`` (the default), whatever the layer under test was configured with:
    a layer with ``prefetch=N`` may hold N messages by design (see ``test_prefetch``).
    """
    channel = unique("timeout")
    async with layer_factory(prefetch=1) as a, layer_factory(prefetch=1) as b:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(a.receive(channel), 0.05)
        await asyncio.sleep(0.05)
        got: list[int] = []

        async def consume() -> None:
            while True:
                got.append((await b.receive(channel))["i"])

        consumer = asyncio.create_task(consume())
        for i in range(20):
            await a.send(channel, {"i": i})
            await asyncio.sleep(0.01)
        await asyncio.sleep(settings.quiet)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        got += [m["i"] for m in await drain(b, channel)]
        # The pop A had in flight may bring one message after its receive timed out: it
        # goes back to the store (Backend.restore), else it stays in A.
        allowed = 0 if restores(a) else 1
        assert len(set(range(20)) - set(got)) <= allowed, (
            f"a layer kept receiving for a receive that timed out (B got {got})"
        )
        assert len(got) == len(set(got))


@async_test
async def test_polling_consumers_hoard_nothing(layer_factory: LayerFactory) -> None:
    """Three polling consumers on A, then none: B receives all that is sent afterwards.

    While A polls, what A and B receive together is exactly what was sent; once A
    stops polling (still open), A takes nothing more; when A closes, whatever it
    still held is receivable by B.
    """
    channel = unique("poll")
    async with layer_factory(capacity=1000) as a, layer_factory(capacity=1000) as b:
        stop = asyncio.Event()
        got_a: list[int] = []
        pollers = [asyncio.create_task(_poll(a, channel, stop, got_a)) for _ in range(3)]
        got_b: list[int] = []

        async def steady() -> None:
            while True:
                got_b.append((await b.receive(channel))["i"])

        consumer = asyncio.create_task(steady())
        for i in range(200):
            await b.send(channel, {"i": i})
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*pollers)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        # A has stopped polling but stays open: nothing more may go to it.
        held_by_a = len(got_a)
        for i in range(200, 250):
            await b.send(channel, {"i": i})
        late = [m["i"] for m in await drain(b, channel)]
        assert len(got_a) == held_by_a
        await a.aclose()
        late += [m["i"] for m in await drain(b, channel)]
        everything = got_a + got_b + late
        assert len(everything) == len(set(everything)), "a message was delivered twice"
        allowed = 0 if restores(a) else len(pollers)
        missing = sorted(set(range(250)) - set(everything))
        assert len(missing) <= allowed, f"lost {len(missing)} message(s), e.g. {missing[:10]}"
        # A pop A had in flight when its pollers stopped may bring one back late (given
        # back to the head of the store): every message arrives, not necessarily in order.
        late_ones = sorted(i for i in late if i >= 200)
        assert len(set(range(200, 250)) - set(late_ones)) <= allowed, (
            "messages sent after the pollers stopped did not all reach the waiting layer"
        )


def _in_new_loop(fn: Any) -> Any:
    """Run ``fn()`` (a coroutine function) in a new event loop, as ``async_to_sync`` does."""
    return asyncio.run(fn())


@async_test
async def test_reply_messages_survive_the_event_loop_that_took_them(
    layer_factory: LayerFactory,
) -> None:
    """Successive loops: a loop that received one reply message does not strand the other."""
    async with layer_factory() as layer:
        first, second = await layer.new_channel(), await layer.new_channel()

        async def send_both() -> None:
            await layer.send(first, {"n": 1})
            await layer.send(second, {"n": 2})

        async def receive(channel: str) -> dict[str, Any]:
            async with asyncio.timeout(settings.wait):
                return await layer.receive(channel)

        await asyncio.to_thread(_in_new_loop, send_both)
        assert await asyncio.to_thread(_in_new_loop, lambda: receive(second)) == {"n": 2}
        assert await asyncio.to_thread(_in_new_loop, lambda: receive(first)) == {"n": 1}


@async_test
async def test_normal_messages_survive_the_event_loop_that_took_them(
    layer_factory: LayerFactory,
) -> None:
    """Successive loops receive a normal channel's messages one each, in order.

    Then a loop that received one message stays open, idle: it holds none of the
    others (``prefetch`` is 1), so this loop receives them at once.
    """
    channel = unique("loops")
    async with layer_factory() as layer:
        for i in range(3):
            await layer.send(channel, {"i": i})

        async def receive() -> dict[str, Any]:
            async with asyncio.timeout(settings.wait):
                return await layer.receive(channel)

        got = [(await asyncio.to_thread(_in_new_loop, receive))["i"] for _ in range(3)]
        assert got == [0, 1, 2]

        for i in range(3, 6):
            await layer.send(channel, {"i": i})
        received, finish = threading.Event(), threading.Event()

        async def receive_and_stay() -> dict[str, Any]:
            message = await receive()
            received.set()
            await asyncio.to_thread(finish.wait, settings.wait * 2)
            return message

        other = asyncio.create_task(asyncio.to_thread(_in_new_loop, receive_and_stay))
        try:
            assert await asyncio.to_thread(received.wait, settings.wait)
            here = [(await receive_within(layer, channel, timeout=1.0))["i"] for _ in range(2)]
        finally:
            finish.set()
            there = (await other)["i"]
        assert [there, *here] == [3, 4, 5], "an idle event loop held messages of a normal channel"


@async_test
async def test_reply_channels_received_from_concurrent_event_loops(
    layer_factory: LayerFactory,
) -> None:
    """Two loops wait on two reply channels of one layer at once: each gets all of its own.

    Both loops' readers pop the one inbox, so each takes messages meant for the other
    loop's consumer and must hand them over. (Both loops stay open until both are
    served: a loop that ends while its reader's pop is in flight is the backend's
    cancellation case, see the contract.)
    """
    total = 20
    async with layer_factory(capacity=4 * total) as layer:
        mine, theirs = await layer.new_channel(), await layer.new_channel()
        started, finish = threading.Event(), threading.Event()

        async def other_loop() -> list[int]:
            got = []
            started.set()
            async with asyncio.timeout(settings.wait * 2):
                for _ in range(total):
                    got.append((await layer.receive(theirs))["i"])
            await asyncio.to_thread(finish.wait, settings.wait * 2)
            return got

        other = asyncio.create_task(asyncio.to_thread(_in_new_loop, other_loop))
        await asyncio.to_thread(started.wait)
        got: list[int] = []

        async def here() -> None:
            for _ in range(total):
                got.append((await receive_within(layer, mine))["i"])

        receiving = asyncio.create_task(here())
        for i in range(total):
            await layer.send(theirs, {"i": i})
            await layer.send(mine, {"i": i})
            await asyncio.sleep(0.002)
        try:
            await receiving
        finally:
            finish.set()
        assert got == list(range(total))
        assert await other == list(range(total))


#: Loops and messages per loop of the order rules across event loops.
ORDER_LOOPS, ORDER_TOTAL = 3, 500


async def _stream(
    layer: ChannelLayer, channels: list[str], total: int, *, burst: int, yielding: bool
) -> None:
    """Send ``total`` numbered messages to each of ``channels``.

    The sender pauses a millisecond after every ``burst`` messages; ``yielding`` lets
    the readers run between any two (one-message pops), else a burst waits whole.
    """
    for i in range(total):
        for channel in channels:
            await layer.send(channel, {"i": i})
        if i % burst == burst - 1:
            await asyncio.sleep(0.001)
        elif yielding:
            await asyncio.sleep(0)


def _in_loops(count: int, consume: Any) -> list[threading.Thread]:
    """Start ``count`` threads, each running ``consume(k)`` in a new event loop."""
    threads = [
        threading.Thread(target=_in_new_loop, args=(lambda k=k: consume(k),), daemon=True)
        for k in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


@async_test
async def test_reply_order_holds_across_concurrent_event_loops(
    layer_factory: LayerFactory,
) -> None:
    """Three loops each receive their own reply channel while messages stream in: in order.

    The loops' readers share the process's inbox. Two readers that pop at once take
    messages in the store's order but may deliver them in the other order, each in its
    own thread: a layer lets one loop at a time pop (and deliver) a queue.
    """
    total = ORDER_TOTAL
    # The reply channels share one inbox, whose capacity bounds all of them at once.
    async with layer_factory(capacity=ORDER_LOOPS * total) as layer:
        channels = [await layer.new_channel() for _ in range(ORDER_LOOPS)]
        got: list[list[int]] = [[] for _ in channels]
        ready = threading.Barrier(len(channels) + 1)

        async def consume(k: int) -> None:
            await asyncio.to_thread(ready.wait, settings.wait)
            with contextlib.suppress(TimeoutError):  # what is missing fails below
                async with asyncio.timeout(settings.wait * 2):
                    for _ in range(total):
                        got[k].append((await layer.receive(channels[k]))["i"])

        threads = _in_loops(len(channels), consume)
        await asyncio.to_thread(ready.wait, settings.wait)
        await _stream(layer, channels, total, burst=10, yielding=True)
        for thread in threads:
            await asyncio.to_thread(thread.join, settings.wait * 3)
    for mine in got:
        assert mine == list(range(total))


@async_test
async def test_competing_event_loops_each_receive_in_order(layer_factory: LayerFactory) -> None:
    """Consumers in three loops share one normal channel: each sees its messages in order.

    Together they get every message exactly once; no consumer gets a message older
    than one it already has, whichever loop's reader popped it.
    """
    channel, total = unique("loops-compete"), ORDER_LOOPS * ORDER_TOTAL
    async with layer_factory(capacity=total) as layer:
        got: list[list[int]] = [[] for _ in range(ORDER_LOOPS)]
        ready = threading.Barrier(ORDER_LOOPS + 1)
        received = threading.Semaphore(0)
        done = threading.Event()

        async def consume(k: int) -> None:
            await asyncio.to_thread(ready.wait, settings.wait)
            deadline = asyncio.get_running_loop().time() + settings.wait * 2
            while not done.is_set() and asyncio.get_running_loop().time() < deadline:
                with contextlib.suppress(TimeoutError):
                    got[k].append((await asyncio.wait_for(layer.receive(channel), 0.1))["i"])
                    received.release()

        threads = _in_loops(ORDER_LOOPS, consume)
        await asyncio.to_thread(ready.wait, settings.wait)
        await _stream(layer, [channel], total, burst=30, yielding=False)
        for _ in range(total):
            if not await asyncio.to_thread(received.acquire, True, settings.wait):
                break
        done.set()
        for thread in threads:
            await asyncio.to_thread(thread.join, settings.wait * 3)
        late = await drain(layer, channel)
    everything = [i for mine in got for i in mine]
    assert len(everything) == len(set(everything)), "a message reached two consumers"
    assert not late, f"{len(late)} message(s) left behind while consumers polled"
    assert sorted(everything) == list(range(total)), "messages lost"
    for mine in got:
        assert mine == sorted(mine), "a consumer received an older message after a newer one"


@async_test
async def test_sync_threads_receiving_reply_channels_lose_nothing(
    layer_factory: LayerFactory,
) -> None:
    """Four threads receive their reply channels, a new event loop per call: all, in order.

    This is how sync code calls a layer (``async_to_sync`` in a view or a management
    command). Each loop ends as soon as its call returns, cancelling its tasks; had its
    reader been popping the shared inbox for another thread's consumer just then, a
    networked store would drop what that pop took. Loops take turns popping a queue,
    so a loop whose consumer was served has no pop in flight.
    """
    # 150 each: with fewer, loops popping the inbox at once (no turns) reorder a
    # thread's messages in fewer than half of the runs.
    threads, total = 4, 150
    async with layer_factory(capacity=threads * total) as layer:  # one inbox for all
        channels = [await layer.new_channel() for _ in range(threads)]
        got: list[list[int]] = [[] for _ in channels]

        async def receive(channel: str) -> int:
            async with asyncio.timeout(settings.wait):
                return int((await layer.receive(channel))["i"])

        def consume(k: int) -> None:
            with contextlib.suppress(TimeoutError):  # what is missing fails below
                for _ in range(total):
                    got[k].append(asyncio.run(receive(channels[k])))

        workers = [threading.Thread(target=consume, args=(k,), daemon=True) for k in range(threads)]
        for worker in workers:
            worker.start()
        await _stream(layer, channels, total, burst=5, yielding=True)
        for worker in workers:
            await asyncio.to_thread(worker.join, settings.wait * 2)
    for k, mine in enumerate(got):
        missing = sorted(set(range(total)) - set(mine))
        assert not missing, f"thread {k} never received {missing}"
        assert mine == list(range(total)), f"thread {k} received them out of order"


@requires(Capability.CROSS_PROCESS)
@async_test
async def test_polling_process_exits_and_loses_nothing(
    layer_factory: LayerFactory, layer_url: str | None
) -> None:
    """A process polls with 5 ms timeouts, then exits cleanly; a steady consumer gets the rest."""
    url, channel, total = _need_url(layer_url), unique("pollproc"), 300
    poller = await _spawn(
        {"mode": "poll", "url": url, "channel": channel, "seconds": 1.5, "timeout": 0.005}
    )
    assert poller.stdout is not None
    assert (await poller.stdout.readline()).strip() == b"ready"
    async with layer_factory(capacity=total) as layer:
        got: list[int] = []

        async def steady() -> None:
            while True:
                got.append((await layer.receive(channel))["i"])

        consumer = asyncio.create_task(steady())
        for i in range(total):
            await layer.send(channel, {"i": i})
            await asyncio.sleep(0.004)
        polled: list[int] = await _result(poller)  # type: ignore[assignment]
        await asyncio.sleep(settings.quiet)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        got += [m["i"] for m in await drain(layer, channel)]
        allowed = 0 if restores(layer) else 1
    everything = polled + got
    assert len(everything) == len(set(everything)), "a message reached two consumers"
    missing = sorted(set(range(total)) - set(everything))
    assert len(missing) <= allowed, f"lost {len(missing)} of {total}, e.g. {missing[:10]}"
    # The poller's own messages stay in order. A message it gave back on exit may
    # reach the steady consumer after later ones (as a requeue does in AMQP).
    assert polled == sorted(polled), "order changed"


async def _loops_end_while_receiving(layer_factory: LayerFactory, *, reply: bool) -> None:
    """Short event loops each start a receive and end wherever it is; nothing is lost.

    The way ``async_to_sync`` callers poll: ``asyncio.run`` per call, around a receive
    with a short timeout or one left pending. When a loop ends, ``asyncio.run`` cancels
    every task it still has, including the receive and a pop it may have in flight:
    waiting in the store, connecting, or with payloads just taken. The delays spread
    from well under a millisecond to 20 ms, so the end lands in every one of those
    moments on a local store. Every message must then be received exactly once, in
    the order sent, by a later loop or by the final drain.
    """
    total, rounds = 60, 150
    rng = random.Random(7)
    delays = [10 ** rng.uniform(-4.0, math.log10(0.02)) for _ in range(rounds)]
    async with layer_factory() as layer:
        channel = await layer.new_channel("ending.") if reply else unique("ending")
        for i in range(total):
            await layer.send(channel, {"i": i})

        async def timed(delay: float) -> list[int]:
            with contextlib.suppress(TimeoutError):
                return [(await asyncio.wait_for(layer.receive(channel), delay))["i"]]
            return []

        async def left_pending(delay: float) -> list[int]:
            got: list[int] = []

            async def take() -> None:
                got.append((await layer.receive(channel))["i"])

            asyncio.get_running_loop().create_task(take())
            await asyncio.sleep(delay)
            return got  # asyncio.run now cancels ``take`` wherever it is

        received: list[int] = []
        for k, delay in enumerate(delays):
            round_ = timed if k % 2 else left_pending
            received += await asyncio.to_thread(_in_new_loop, functools.partial(round_, delay))
        received += [m["i"] for m in await drain(layer, channel)]
    _each_once_in_order(received, total, "when event loops ended mid-receive")


def _each_once_in_order(received: list[int], total: int, when: str) -> None:
    """Messages ``0 .. total - 1`` were each received once, in order (``when``: the loss's)."""
    assert len(received) == len(set(received)), "a message was received twice"
    missing = sorted(set(range(total)) - set(received))
    assert not missing, f"lost {len(missing)} of {total} message(s) {when}: {missing[:10]}"
    assert received == list(range(total)), "messages were received out of order"


@async_test
async def test_event_loops_ending_mid_receive_lose_nothing(layer_factory: LayerFactory) -> None:
    """A normal channel polled by short-lived event loops loses and reorders nothing."""
    await _loops_end_while_receiving(layer_factory, reply=False)


@async_test
async def test_event_loops_ending_mid_reply_receive_lose_nothing(
    layer_factory: LayerFactory,
) -> None:
    """A reply channel polled by short-lived event loops loses and reorders nothing."""
    await _loops_end_while_receiving(layer_factory, reply=True)


@async_test
async def test_event_loops_ending_mid_give_back_lose_nothing(layer_factory: LayerFactory) -> None:
    """A loop ending while its reader gives a timed-out consumer's message back loses nothing.

    A thread polls as ``async_to_sync`` callers do, each poll a new event loop that
    waits for a message for 2 to 15 ms. A poll that times out sends the next message
    itself, so the pop its reader has waiting in the store returns it with no consumer
    left, and the reader puts it back at the head of the store (``Backend.restore``);
    the loop ends 0 to 2 ms later, at any moment of that restore (before it reached the
    store, while the store works, after). Every message must be received exactly once,
    in the order sent.
    """
    most, budget = 100, 2.5
    rng = random.Random(11)
    async with layer_factory(capacity=most) as layer:
        channel = unique("giveback")
        received: list[int] = []
        sent = 0

        async def poll(wait: float, after: float) -> None:
            nonlocal sent
            try:
                received.append((await asyncio.wait_for(layer.receive(channel), wait))["i"])
            except TimeoutError:
                await layer.send(channel, {"i": sent})
                sent += 1
                await asyncio.sleep(after)  # asyncio.run then cancels the reader

        def poller() -> None:
            ends = time.monotonic() + budget
            while sent < most and time.monotonic() < ends:
                wait, after = rng.uniform(0.002, 0.015), rng.uniform(0.0, 0.002)
                _in_new_loop(functools.partial(poll, wait, after))

        thread = threading.Thread(target=poller, daemon=True)
        thread.start()
        await asyncio.to_thread(thread.join, budget + settings.wait * 2)
        assert not thread.is_alive(), "a poll never ended"
        received += [m["i"] for m in await drain(layer, channel)]
    assert sent >= 10, f"only {sent} polls timed out in {budget} s"
    _each_once_in_order(received, sent, "when event loops ended mid-give-back")
