"""Memory-backend specifics the shared suite cannot see: sweeping, waiters, threads."""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Coroutine
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from layers.backends import memory
from layers.backends.memory import MemoryBackend, MemoryChannelLayer, MemoryStore
from layers.conformance_tests.plugin import async_test
from layers.core.backend import Put


@async_test
async def test_dropping_an_empty_queue_never_strands_a_waiter() -> None:
    backend = MemoryBackend(MemoryStore())
    first = asyncio.create_task(backend.receive("q", timeout=5))
    second = asyncio.create_task(backend.receive("q", timeout=5))
    await asyncio.sleep(0.01)
    assert await backend.send("q", b"one", expiry=10, capacity=10)
    await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    # The queue is now empty and dropped from the store; the other waiter still waits
    # on it and must get the next message.
    assert "q" not in backend._store.queues
    assert await backend.send("q", b"two", expiry=10, capacity=10)
    results = sorted([(await first)[0], (await second)[0]])
    assert results == [b"one", b"two"]


@async_test
async def test_expired_queues_go_as_fast_as_writes_make_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The backend's clock stands still between the steps below, so a slow machine
    # cannot let queues expire while they are being written; the store counts as
    # watched, so the idle sweeper (a thread on a one-second timer) stays away.
    clock = [1000.0]
    monkeypatch.setattr(
        memory, "time", types.SimpleNamespace(monotonic=lambda: clock[0], sleep=time.sleep)
    )
    store = MemoryStore()
    store.watched = True
    backend = MemoryBackend(store)
    for i in range(1000):
        await backend.send(f"stale{i}", b"x", expiry=0.01, capacity=10)
    clock[0] += 1
    before = len(store.queues)
    assert before == 1000
    for _ in range(memory._SWEEP_EVERY):
        await backend.send("fresh", b"y", expiry=10, capacity=10)
    # A batch of writes removes a bounded number of expired queues: the cost of a
    # write never grows with the number of channels.
    assert len(store.queues) == before + 1 - memory._SWEEP_EVERY * memory._SWEEP_PER_WRITE
    # Writes remove more expired queues than they make new ones.
    for i in range(1000):
        await backend.send(f"next{i}", b"y", expiry=0.01, capacity=10)
    assert len(store.queues) <= before + 1


def test_a_sweep_keeps_a_queue_whose_last_message_expired_before_its_first() -> None:
    """Senders with different expiries: the queue goes only when every message expired."""
    store = MemoryStore()
    assert store.put("q", b"lasting", 60, 10, now=0.0)
    assert store.put("q", b"brief", 0.3, 10, now=0.0)
    store.sweep(now=1.0, budget=10)
    assert store.take("q", 10, now=1.0) == [b"lasting"]
    assert store.put("q", b"brief", 0.3, 10, now=1.0)
    store.sweep(now=2.0, budget=10)
    assert "q" not in store.queues


@async_test
async def test_idle_time_reclaims_every_expired_queue() -> None:
    """A million sends to fresh names, then silence: the store ends empty (issue: it kept 880k)."""
    store = MemoryStore()
    backend = MemoryBackend(store)
    for i in range(20_000):
        await backend.send(f"fresh{i}", b"x", expiry=0.05, capacity=10)
    assert len(store.queues) > 1000
    for _ in range(50):  # up to five sweeper rounds
        if not store.queues:
            break
        await asyncio.sleep(memory._IDLE_SWEEP_INTERVAL / 10)
    assert len(store.queues) == 0


@async_test
async def test_expired_groups_are_swept() -> None:
    store = MemoryStore()
    backend = MemoryBackend(store)
    for i in range(100):
        await backend.group_add(f"g{i}", "c", expiry=0.01)
    await asyncio.sleep(0.06)
    for _ in range(50):  # up to five sweeper rounds
        if not store.groups:
            break
        await asyncio.sleep(memory._IDLE_SWEEP_INTERVAL / 10)
    await backend.group_add("live", "c", expiry=10)
    assert set(store.groups) == {"live"}


def test_wake_up_across_threads_and_event_loops() -> None:
    layer = MemoryChannelLayer()
    received: list[dict[str, object]] = []

    def consumer() -> None:
        received.append(async_to_sync(layer.receive)("cross.thread"))

    thread = threading.Thread(target=consumer)
    thread.start()
    time.sleep(0.1)  # the consumer is now waiting in its own loop and thread
    async_to_sync(layer.send)("cross.thread", {"n": 1})
    thread.join(timeout=5)
    assert received == [{"n": 1}]


def test_many_sync_calls_leave_no_loop_state_behind() -> None:
    layer = MemoryChannelLayer()
    for i in range(50):
        async_to_sync(layer.send)("sync.many", {"i": i})
        assert async_to_sync(layer.receive)("sync.many") == {"i": i}
    # Each async_to_sync loop closed, and its per-loop state went with it.
    assert layer._states == {}


@async_test
async def test_waits_time_out_in_time_with_one_timer_for_all() -> None:
    """Receives with different timeouts each end at theirs, whichever started first."""
    backend = MemoryBackend(MemoryStore())
    started = time.monotonic()

    async def timed(timeout: float) -> float:
        assert await backend.receive("t", timeout=timeout) == []
        return time.monotonic() - started

    # The later-started, shorter wait must re-arm the timer earlier.
    long = asyncio.create_task(timed(0.6))
    await asyncio.sleep(0.01)
    short = asyncio.create_task(timed(0.1))
    assert 0.09 <= await short < 0.4
    assert 0.59 <= await long < 1.0
    deadlines = backend._deadlines
    assert deadlines is not None
    assert deadlines.waiting == {}
    assert not backend._store.waiters  # no waiter left registered


@async_test
async def test_a_cancelled_or_woken_wait_leaves_no_deadline_or_waiter() -> None:
    backend = MemoryBackend(MemoryStore())
    cancelled = asyncio.create_task(backend.receive("c", timeout=5))
    woken = asyncio.create_task(backend.receive("w", timeout=5))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    assert await backend.send("w", b"x", expiry=10, capacity=10)
    assert await woken == [b"x"]
    assert (await asyncio.gather(cancelled, return_exceptions=True))[0].__class__ is (
        asyncio.CancelledError
    )
    deadlines = backend._deadlines
    assert deadlines is not None
    assert deadlines.waiting == {}
    assert not backend._store.waiters
    await backend.aclose()
    assert backend._deadlines is None


def _count_mailbox_waits(layer: MemoryChannelLayer) -> list[int]:
    """Count the layer's mailbox waits from now on: the one-item list's value."""
    waits = [0]
    hub = layer._hub
    original = hub.wait

    def counting(*args: object, **kwargs: object) -> object:
        waits[0] += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    hub.wait = counting  # type: ignore[method-assign]
    return waits


@async_test
async def test_a_consumer_with_nobody_ahead_pops_for_itself() -> None:
    """The inline path: no waiter is made, and another inbox channel's message is kept."""
    async with MemoryChannelLayer() as layer:
        await layer.send("inline.q", {"n": 1})
        waits = _count_mailbox_waits(layer)
        assert await layer.receive("inline.q") == {"n": 1}
        assert waits == [0]
        a, b = await layer.new_channel(), await layer.new_channel()
        await layer.send(b, {"to": "b"})
        await layer.send(a, {"to": "a"})
        assert await layer.receive(a) == {"to": "a"}  # b's message went to its mailbox
        assert await layer.receive(b) == {"to": "b"}


async def _waiting_receive(
    layer: MemoryChannelLayer, channel: str
) -> asyncio.Task[dict[str, object]]:
    """A receive on ``channel`` started once the layer is open, and waiting by now."""
    await layer.send("warm", {"n": 0})
    assert await layer.receive("warm") == {"n": 0}
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    return waiting


@async_test
async def test_a_lone_waiting_consumer_waits_in_the_backend_itself() -> None:
    """No mailbox waiter and no reader task for a consumer nobody is ahead of, even waiting."""
    async with MemoryChannelLayer() as layer:
        waits = _count_mailbox_waits(layer)
        waiting = await _waiting_receive(layer, "lone.q")
        state = layer._state()
        assert not state.readers
        assert "lone.q" in state.driving
        await layer.send("lone.q", {"n": 1})
        assert await asyncio.wait_for(waiting, 1) == {"n": 1}
        assert waits == [0]
        assert not state.driving


@async_test
async def test_consumers_behind_a_lone_waiter_are_served_in_turn() -> None:
    """A second consumer of the channel, and one of another inbox channel, lose nothing."""
    async with MemoryChannelLayer() as layer:
        first = await _waiting_receive(layer, "turn.q")
        second = asyncio.create_task(layer.receive("turn.q"))
        await asyncio.sleep(0.01)
        await layer.send("turn.q", {"n": 1})
        await layer.send("turn.q", {"n": 2})
        assert await asyncio.wait_for(first, 1) == {"n": 1}
        assert await asyncio.wait_for(second, 1) == {"n": 2}
        a, b = await layer.new_channel(), await layer.new_channel()
        on_a = asyncio.create_task(layer.receive(a))
        await asyncio.sleep(0.01)
        await layer.send(b, {"to": "b"})  # popped by a's wait, put in b's mailbox
        await asyncio.sleep(0.01)
        assert not on_a.done()
        await layer.send(a, {"to": "a"})
        assert await asyncio.wait_for(on_a, 1) == {"to": "a"}
        assert await asyncio.wait_for(layer.receive(b), 1) == {"to": "b"}


@async_test
async def test_a_cancelled_lone_waiter_holds_nothing() -> None:
    async with MemoryChannelLayer() as layer:
        waiting = await _waiting_receive(layer, "gone.q")
        waiting.cancel()
        await layer.send("gone.q", {"n": 1})  # lands after the cancel, before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await asyncio.wait_for(layer.receive("gone.q"), 1) == {"n": 1}
        assert not layer._state().driving


@async_test
async def test_closing_the_backend_ends_its_waits_at_once() -> None:
    """A closed backend's waits return nothing now, not at their deadline."""
    backend = MemoryBackend(MemoryStore())
    waiting = asyncio.create_task(backend.receive("closing", timeout=30))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await backend.aclose()
    assert await asyncio.wait_for(waiting, 1) == []
    assert time.monotonic() - started < 0.5
    assert not backend._store.waiters


async def _waiting(backend: MemoryBackend, queue: str) -> asyncio.Task[list[bytes]]:
    """A backend receive on ``queue``, waiting by now."""
    task = asyncio.create_task(backend.receive(queue, timeout=5))
    await asyncio.sleep(0.01)
    assert not task.done()
    return task


@async_test
async def test_a_send_hands_its_payload_to_a_waiting_receive_of_its_loop() -> None:
    """Nothing is stored: the first waiter gets the payload; the next send, made while it
    is in hand, is stored and wakes the other waiter."""
    backend = MemoryBackend(MemoryStore())
    first = await _waiting(backend, "hand")
    second = await _waiting(backend, "hand")
    assert await backend.send("hand", b"one", expiry=10, capacity=10)
    assert "hand" not in backend._store.queues
    assert await first == [b"one"]
    assert not any(backend._store.in_hand.values())  # its box is spent
    assert await backend.send("hand", b"two", expiry=10, capacity=10)
    assert "hand" not in backend._store.queues
    assert await second == [b"two"]
    assert not backend._store.waiters
    assert backend._deadlines is not None
    assert backend._deadlines.waiting == {}


@async_test
async def test_a_payload_handed_to_a_receive_cancelled_before_it_ran_goes_back_first() -> None:
    """Handed, then the receiving task is cancelled: the payload is stored ahead of later ones."""
    backend = MemoryBackend(MemoryStore())
    waiting = await _waiting(backend, "back")
    assert await backend.send("back", b"one", expiry=10, capacity=10)  # handed
    assert await backend.send("back", b"two", expiry=10, capacity=10)  # stored
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await backend.receive("back", timeout=0, limit=5) == [b"one", b"two"]


async def _handed(backend: MemoryBackend, queue: str) -> Coroutine[Any, Any, list[bytes]]:
    """A receive coroutine, run by hand to its wait, that a send then handed ``b"one"`` to."""
    await backend.send("warm", b"w", expiry=10, capacity=10)
    assert await backend.receive("warm", timeout=0) == [b"w"]  # the backend knows its loop
    receive = backend.receive(queue, timeout=5)
    receive.send(None)  # runs to its wait: a waiter of this loop
    assert await backend.send(queue, b"one", expiry=10, capacity=10)
    assert queue not in backend._store.queues  # handed
    return receive


@async_test
async def test_a_payload_handed_to_a_receive_whose_coroutine_is_closed_goes_back() -> None:
    """A receive that never resumes (its loop stopped, its coroutine collected) keeps nothing."""
    backend = MemoryBackend(MemoryStore())
    receive = await _handed(backend, "closed")
    receive.close()
    assert await backend.receive("closed", timeout=0) == [b"one"]


@async_test
async def test_spent_boxes_do_not_pile_up() -> None:
    """A round trip on a fresh reply queue leaves a spent box; the sweep removes them, so
    a process making many keeps a bounded map, and none of them counts for anything."""
    backend = MemoryBackend(MemoryStore())
    for i in range(300):
        waiting = await _waiting(backend, f"reply!{i}")
        assert await backend.send(f"reply!{i}", b"x", expiry=10, capacity=1)
        assert await waiting == [b"x"]
    in_hand = backend._store.in_hand
    assert 0 < len(in_hand) <= 2 * memory._SWEEP_EVERY
    assert not any(in_hand.values())
    # A spent box is no payload in hand: its queue's capacity is whole (a group send,
    # which stores without looking for a waiter, meets the box itself).
    last = next(reversed(in_hand))
    puts = [Put(last, b"y", 10, 1), Put(last, b"z", 10, 2), Put(last, b"over", 10, 2)]
    assert await backend.send_many(puts) == [True, True, False]
    assert await backend.receive(last, timeout=0, limit=5) == [b"y", b"z"]


@async_test
async def test_the_idle_sweeper_removes_the_spent_boxes_of_handed_sends() -> None:
    """A store that only handed sends have written to is visited by the idle sweeper."""
    store = MemoryStore()
    backend = MemoryBackend(store)
    waiting = [asyncio.create_task(backend.receive(f"q{i}", timeout=10)) for i in range(50)]
    await asyncio.sleep(0.01)
    for i in range(50):
        assert await backend.send(f"q{i}", b"x", expiry=60, capacity=10)
    assert await asyncio.gather(*waiting) == [[b"x"]] * 50
    assert store.in_hand
    assert not store.queues
    for _ in range(int((3 * memory._IDLE_SWEEP_INTERVAL + 1) / 0.05)):
        if not store.in_hand:
            break
        await asyncio.sleep(0.05)
    assert not store.in_hand


@async_test
async def test_a_payload_that_expires_in_hand_is_dropped() -> None:
    """A loop blocked past a handed payload's expiry: the receive drops it, as the store would."""
    backend = MemoryBackend(MemoryStore())
    waiting = asyncio.create_task(backend.receive("stale", timeout=0.2))
    await asyncio.sleep(0.01)
    assert await backend.send("stale", b"old", expiry=0.01, capacity=10)
    time.sleep(0.03)  # noqa: ASYNC251 - blocks the loop: the receive runs after the expiry
    assert await waiting == []


@async_test
async def test_a_waiter_of_another_loop_is_woken_not_handed() -> None:
    """The payload is stored for a receive in another thread's loop, which then takes it."""
    store = MemoryStore()
    backend = MemoryBackend(store)
    ready = threading.Event()
    got: list[list[bytes]] = []

    async def other() -> None:
        there = MemoryBackend(store)
        receive = asyncio.create_task(there.receive("far", timeout=5))
        await asyncio.sleep(0.01)
        ready.set()
        got.append(await receive)

    thread = threading.Thread(target=asyncio.run, args=(other(),))
    thread.start()
    assert await asyncio.to_thread(ready.wait, 5)
    sent = time.monotonic()
    assert await backend.send("far", b"one", expiry=10, capacity=10)
    await asyncio.to_thread(thread.join, 5)
    assert got == [[b"one"]]
    # Woken through its own loop at once, not found at its 5 s deadline (as a future
    # resolved from this thread would be, its loop asleep in select()).
    assert time.monotonic() - sent < 2


@async_test
async def test_one_payload_at_most_is_in_hand_per_queue() -> None:
    """A second send while one is in hand is stored behind it: cancellations keep the order."""
    backend = MemoryBackend(MemoryStore())
    first = await _waiting(backend, "order")
    second = await _waiting(backend, "order")
    assert await backend.send("order", b"one", expiry=10, capacity=10)  # handed to first
    assert await backend.send("order", b"two", expiry=10, capacity=10)  # stored, second woken
    assert "order" in backend._store.queues
    first.cancel()
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert await backend.receive("order", timeout=0, limit=5) == [b"one", b"two"]


@async_test
async def test_a_cancelled_first_waiter_lets_no_later_message_overtake() -> None:
    backend = MemoryBackend(MemoryStore())
    first = await _waiting(backend, "overtake")
    second = await _waiting(backend, "overtake")
    assert await backend.send("overtake", b"one", expiry=10, capacity=10)
    assert await backend.send("overtake", b"two", expiry=10, capacity=10)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    rest = await backend.receive("overtake", timeout=0, limit=5)
    assert [*await second, *rest] == [b"one", b"two"]


@async_test
async def test_a_flush_drops_a_payload_in_hand() -> None:
    """Whether its receive then resumes or is cancelled, the flushed payload is gone."""
    backend = MemoryBackend(MemoryStore())
    cancelled = await _waiting(backend, "flushed")
    assert await backend.send("flushed", b"old", expiry=10, capacity=10)
    await backend.flush()
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert await backend.receive("flushed", timeout=0) == []
    resumed = asyncio.create_task(backend.receive("flushed", timeout=0.3))
    await asyncio.sleep(0.01)
    assert await backend.send("flushed", b"old", expiry=10, capacity=10)
    await backend.flush()
    assert await backend.send("flushed", b"new", expiry=10, capacity=10)
    assert await resumed == [b"new"]


@async_test
async def test_a_payload_in_hand_counts_against_capacity() -> None:
    backend = MemoryBackend(MemoryStore())
    waiting = await _waiting(backend, "full")
    sent = [await backend.send("full", bytes([i]), expiry=10, capacity=2) for i in range(3)]
    assert sent == [True, True, False]
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert await backend.receive("full", timeout=0, limit=10) == [b"\x00", b"\x01"]
    lone = await _waiting(backend, "one")
    assert await backend.send("one", b"a", expiry=10, capacity=1)
    assert not await backend.send("one", b"b", expiry=10, capacity=1)
    assert await lone == [b"a"]


@async_test
async def test_a_restore_puts_a_payload_in_hand_behind_the_restored_ones() -> None:
    """Restored payloads were taken before the handed one was sent: they come first."""
    backend = MemoryBackend(MemoryStore())
    waiting = await _waiting(backend, "restored")
    assert await backend.send("restored", b"two", expiry=10, capacity=10)  # handed
    assert await backend.restore("restored", [(b"one", 10.0)])
    assert await backend.send("restored", b"three", expiry=10, capacity=10)
    assert await waiting == [b"one"]
    assert await backend.receive("restored", timeout=0, limit=5) == [b"two", b"three"]


@async_test
async def test_a_receive_closed_while_this_thread_holds_the_lock_puts_back_later() -> None:
    """The collector can close a coroutine inside a locked store call: no deadlock."""
    backend = MemoryBackend(MemoryStore())
    receive = await _handed(backend, "locked")
    store = backend._store
    with store.lock:
        receive.close()  # returns at once: a thread puts the payload back
    for _ in range(100):
        got = await backend.receive("locked", timeout=0)
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [b"one"]
