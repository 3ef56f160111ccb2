"""A reader cancelled while its pop is in flight delivers what the pop took, then stops.

``Backend.receive`` returns what it took when it is cancelled after the store removed
payloads (its event loop ending, or the layer closing). The reader must deliver those
payloads and then end cancelled: a reader that swallowed the cancellation would pop
again in a loop that is ending, and hold up ``aclose`` until it lingered out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import pytest

import layers
from layers.backends.memory import MemoryBackend
from layers.conformance_tests.plugin import async_test

#: How long the pop's reply takes to come back, as over a network.
REPLY_DELAY = 0.05


class ReturnsWhenCancelled(MemoryBackend):
    """Its pop's reply takes :data:`REPLY_DELAY`; cancelled meanwhile, it still returns it."""

    instant_receive = False

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        out = await super().receive(queue, timeout=timeout, limit=limit)
        if out:
            try:
                await asyncio.sleep(REPLY_DELAY)
            except asyncio.CancelledError:
                await asyncio.sleep(REPLY_DELAY)  # the reply comes; the request stays
        return out


@async_test
async def test_a_reader_cancelled_mid_pop_delivers_then_stops() -> None:
    async with layers.ChannelLayer(backend=ReturnsWhenCancelled) as layer:
        await layer.send("mid.pop", {"n": 1})
        waiter = asyncio.create_task(layer.receive("mid.pop"))
        await asyncio.sleep(REPLY_DELAY / 5)  # the reader has popped; the reply is on its way
        reader = layer._state().readers["mid.pop"]
        waiter.cancel()
        reader.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        done, _ = await asyncio.wait([reader], timeout=1.0)
        assert reader in done, "the reader went on after its cancellation"
        assert reader.cancelled()
        async with asyncio.timeout(1.0):
            assert await layer.receive("mid.pop") == {"n": 1}  # delivered, not lost


class SlowRestore(MemoryBackend):
    """A pop's reply takes :data:`REPLY_DELAY`, and so does a restore.

    Cancelled during the restore's trip, it stores nothing and returns False, or,
    with ``completes``, lets the trip finish, stores and returns True: the two answers
    :meth:`Backend.restore` allows a cancelled call.
    """

    instant_receive = False
    completes = False

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        out = await super().receive(queue, timeout=timeout, limit=limit)
        if out:
            await asyncio.sleep(REPLY_DELAY)
        return out

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        try:
            await asyncio.sleep(REPLY_DELAY)
        except asyncio.CancelledError:
            if not self.completes:
                return False  # never reached the store
            await asyncio.sleep(REPLY_DELAY)
        return await super().restore(queue, payloads)


class SlowRestoreThatCompletes(SlowRestore):
    completes = True


async def _cancel_mid_restore(layer: layers.ChannelLayer, channel: str) -> asyncio.Task[None]:
    """Leave the reader of ``channel`` giving a message back, cancel it there, await it."""
    await layer.send(channel, {"n": 1})
    with contextlib.suppress(TimeoutError):  # times out while the pop's reply travels
        await asyncio.wait_for(layer.receive(channel), REPLY_DELAY / 5)
    reader = layer._state().readers[channel]
    await asyncio.sleep(REPLY_DELAY * 1.5)  # the reply came: the reader is restoring
    reader.cancel()
    done, _ = await asyncio.wait([reader], timeout=1.0)
    assert reader in done, "the reader went on after its cancellation"
    assert reader.cancelled()
    return reader


@async_test
async def test_a_restore_cancelled_before_the_store_keeps_the_message() -> None:
    async with layers.ChannelLayer(backend=SlowRestore) as layer:
        await _cancel_mid_restore(layer, "restore.unsent")
        async with asyncio.timeout(1.0):
            assert await layer.receive("restore.unsent") == {"n": 1}  # buffered again


@async_test
async def test_a_restore_cancelled_after_the_store_took_it_is_not_repeated() -> None:
    async with layers.ChannelLayer(backend=SlowRestoreThatCompletes) as layer:
        await _cancel_mid_restore(layer, "restore.sent")
        async with asyncio.timeout(1.0):
            assert await layer.receive("restore.sent") == {"n": 1}  # from the store
        with pytest.raises(TimeoutError):  # once: not also buffered in the process
            async with asyncio.timeout(REPLY_DELAY * 3):
                await layer.receive("restore.sent")
