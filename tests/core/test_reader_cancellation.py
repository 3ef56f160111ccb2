"""A reader cancelled while its pop is in flight delivers what the pop took, then stops.

``Backend.receive`` returns what it took when it is cancelled after the store removed
payloads (its event loop ending, or the layer closing). The reader must deliver those
payloads and then end cancelled: a reader that swallowed the cancellation would pop
again in a loop that is ending, and hold up ``aclose`` until it lingered out.
"""

from __future__ import annotations

import asyncio

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
