"""Memory-backend specifics the shared suite cannot see: sweeping, waiters, threads."""

from __future__ import annotations

import asyncio
import threading
import time

from asgiref.sync import async_to_sync

from layers.backends import memory
from layers.backends.memory import MemoryBackend, MemoryChannelLayer, MemoryStore
from layers.conformance_tests.plugin import async_test


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
async def test_expired_queues_go_as_fast_as_writes_make_them() -> None:
    store = MemoryStore()
    backend = MemoryBackend(store)
    for i in range(1000):
        await backend.send(f"stale{i}", b"x", expiry=0.01, capacity=10)
    await asyncio.sleep(0.02)
    before = len(store.queues)
    for _ in range(memory._SWEEP_EVERY):
        await backend.send("fresh", b"y", expiry=10, capacity=10)
    # A batch of writes removes a bounded number of expired queues: the cost of a
    # write never grows with the number of channels.
    assert len(store.queues) == before + 1 - memory._SWEEP_EVERY * memory._SWEEP_PER_WRITE
    # Writes remove more expired queues than they make new ones.
    for i in range(1000):
        await backend.send(f"next{i}", b"y", expiry=0.01, capacity=10)
    assert len(store.queues) <= before + 1


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
