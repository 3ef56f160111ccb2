"""``aclose`` cancelled (a timeout around it): the caller returns, the close goes on.

The layer forgets a loop's state as the close starts, so a close cut short would
leave that state's connections open for as long as the process runs.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import layers
from layers.backends.memory import MemoryBackend
from layers.conformance_tests.plugin import async_test

#: How long the backend's close takes, as a pool's would over a network.
CLOSE_DELAY = 0.1


class SlowClose(MemoryBackend):
    """Its close takes :data:`CLOSE_DELAY`; it records that it finished (or failed)."""

    closed: list[str] = []
    fails = False

    async def aclose(self) -> None:
        await asyncio.sleep(CLOSE_DELAY)
        await super().aclose()
        if self.fails:
            raise OSError("the connection went away while closing")
        type(self).closed.append("closed")


@async_test
async def test_a_cancelled_aclose_returns_at_once_and_the_close_still_ends() -> None:
    SlowClose.closed = []
    layer = layers.ChannelLayer(backend=SlowClose)
    await layer.send("close.q", {"n": 1})
    assert await layer.receive("close.q") == {"n": 1}  # opened
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(CLOSE_DELAY / 10):
            await layer.aclose()
    assert time.monotonic() - started < CLOSE_DELAY / 2  # the caller did not wait
    assert SlowClose.closed == []
    await asyncio.sleep(CLOSE_DELAY * 3)
    assert SlowClose.closed == ["closed"]  # the backend's close ran to its end
    await layer.aclose()  # idempotent: nothing left to close
    assert SlowClose.closed == ["closed"]


@async_test
async def test_a_cancelled_close_pools_closes_this_loop_to_the_end() -> None:
    SlowClose.closed = []
    layer = layers.ChannelLayer(backend=SlowClose)
    await layer.send("close.p", {"n": 1})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(CLOSE_DELAY / 10):
            await layer.close_pools()
    await asyncio.sleep(CLOSE_DELAY * 3)
    assert SlowClose.closed == ["closed"]
    assert await layer.receive("close.p") == {"n": 1}  # usable again, nothing lost
    await layer.aclose()


@async_test
async def test_a_close_failing_after_its_caller_was_cancelled_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailingClose(SlowClose):
        fails = True

    layer = layers.ChannelLayer(backend=FailingClose)
    await layer.send("close.f", {"n": 1})
    with caplog.at_level(logging.WARNING, logger="layers"), pytest.raises(TimeoutError):
        async with asyncio.timeout(CLOSE_DELAY / 10):
            await layer.aclose()
    with caplog.at_level(logging.WARNING, logger="layers"):
        await asyncio.sleep(CLOSE_DELAY * 3)
    assert "closing the channel layer failed after its caller was cancelled" in caplog.text
    assert "the connection went away while closing" in caplog.text
