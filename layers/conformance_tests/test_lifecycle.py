"""Lifecycle and event loops: ``async with``, ``aclose`` twice, ``async_to_sync`` many times."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

from asgiref.sync import async_to_sync

from layers.conformance_tests.helpers import receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, settings
from layers.core.layer import SupportsChannelLayer


@async_test
async def test_async_with_and_aclose_twice(layer_factory: LayerFactory) -> None:
    """``async with`` closes the layer; closing again is safe; the layer stays usable."""
    channel = unique()
    layer = layer_factory()
    async with layer:
        await layer.send(channel, {"n": 1})
    await layer.aclose()
    await layer.aclose()
    assert await receive_within(layer, channel) == {"n": 1}
    await layer.send(channel, {"n": 2})
    assert await receive_within(layer, channel) == {"n": 2}
    await layer.close()
    await layer.close()


@async_test
async def test_aclose_without_use(layer_factory: LayerFactory) -> None:
    """A layer that was never used closes without error."""
    layer = layer_factory()
    await layer.aclose()
    await layer.aclose()


@async_test
async def test_aclose_wakes_waiting_receivers(layer_factory: LayerFactory) -> None:
    """Closing the layer ends receives waiting on it (they raise, they do not hang)."""
    layer = layer_factory()
    waiting = asyncio.create_task(layer.receive(unique()))
    await asyncio.sleep(0.05)
    await layer.aclose()
    done, _ = await asyncio.wait([waiting], timeout=5)
    assert done, "a receive kept waiting after aclose()"
    assert waiting.cancelled() or waiting.exception() is not None


@async_test
async def test_channels_api_shape(layer_factory: LayerFactory) -> None:
    """The layer is duck-compatible with Django Channels' layer API."""
    layer = layer_factory(expiry=30, group_expiry=600, capacity=7)
    assert isinstance(layer, SupportsChannelLayer)
    assert (layer.expiry, layer.group_expiry, layer.capacity) == (30, 600, 7)
    assert layer.get_capacity("any.name") == 7
    assert set(layer.extensions) <= {"groups", "flush"}
    caps = {str(c) for c in layer.capabilities}
    assert ("groups" in layer.extensions) == ("groups" in caps)
    assert ("flush" in layer.extensions) == ("flush" in caps)
    assert layer.require_valid_channel_name("a.b!c")
    assert layer.require_valid_group_name("a.b")
    await layer.aclose()


def test_async_to_sync_many_times_leaks_nothing(layer_factory: LayerFactory) -> None:
    """50 ``async_to_sync`` calls (a new loop each) work and leave no loop or thread behind."""
    layer = layer_factory()
    channel = unique()
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def round_trip(i: int) -> dict[str, object]:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await layer.send(channel, {"i": i})
        return await receive_within(layer, channel)

    threads_before = threading.active_count()
    results: list[dict[str, object]] = []

    def calls() -> None:
        for i in range(50):
            results.append(async_to_sync(round_trip)(i))

    # A hung loop shutdown must fail the test, not hang the suite.
    worker = threading.Thread(target=calls, daemon=True)
    worker.start()
    worker.join(settings.test_timeout)
    assert not worker.is_alive(), (
        f"async_to_sync hung after {len(results)} calls (the loop did not shut down)"
    )
    assert results == [{"i": i} for i in range(50)]
    gc.collect()
    alive = [ref for ref in loops if ref() is not None]
    assert len(alive) <= 1, f"{len(alive)} event loops are still referenced"
    assert threading.active_count() <= threads_before + 1
