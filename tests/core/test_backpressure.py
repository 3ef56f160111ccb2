"""ChannelFull names its limit and setting; send(..., wait=) waits for room, safely."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

import layers
from layers.conformance_tests.plugin import async_test


async def _fill(layer: layers.ChannelLayer, channel: str, count: int) -> None:
    for i in range(count):
        await layer.send(channel, {"i": i})


@pytest.mark.parametrize(
    ("make", "channel", "limit", "origin"),
    [
        (lambda: layers.from_url("memory://"), "plain", 100, "the default capacity (100)"),
        (lambda: layers.from_url("memory://", capacity=3), "plain", 3, "capacity=3"),
        (lambda: layers.from_url("memory://?capacity=4"), "plain", 4, "capacity=4 in the URL"),
        (
            lambda: layers.from_url("memory://", channel_capacity={"chat.*": 2}),
            "chat.room",
            2,
            "channel_capacity pattern 'chat.*'",
        ),
        (
            lambda: layers.from_url("memory://", channel_capacity=[(re.compile(r"^job"), 1)]),
            "jobs",
            1,
            "channel_capacity pattern re.compile('^job')",
        ),
    ],
)
@async_test
async def test_channel_full_names_the_limit_and_its_setting(
    make: object, channel: str, limit: int, origin: str
) -> None:
    layer = make()  # type: ignore[operator]
    await _fill(layer, channel, limit)
    with pytest.raises(layers.ChannelFull) as caught:
        await layer.send(channel, {"one": "more"})
    text = str(caught.value)
    assert repr(channel) in text
    assert f"holds {limit} unexpired messages" in text
    assert f"the limit set by {origin}" in text
    await layer.aclose()


@async_test
async def test_send_waits_for_room_and_stores_once() -> None:
    layer = layers.from_url("memory://", capacity=2)
    await _fill(layer, "work", 2)

    async def consume_later() -> dict[str, object]:
        await asyncio.sleep(0.2)
        return await layer.receive("work")

    consumer = asyncio.ensure_future(consume_later())
    started = time.monotonic()
    await layer.send("work", {"i": "late"}, wait=5)
    waited = time.monotonic() - started
    assert 0.15 < waited < 2
    assert await consumer == {"i": 0}
    assert [await layer.receive("work") for _ in range(2)] == [{"i": 1}, {"i": "late"}]
    await layer.aclose()


@async_test
async def test_send_wait_times_out_with_channel_full() -> None:
    layer = layers.from_url("memory://", capacity=1)
    await _fill(layer, "stuck", 1)
    started = time.monotonic()
    with pytest.raises(layers.ChannelFull, match=r"after waiting 0\.3 s") as full:
        await layer.send("stuck", {"x": 1}, wait=0.3)
    assert "wait=SECONDS" not in str(full.value)  # no advice to do what was done
    assert 0.25 < time.monotonic() - started < 2
    assert await layer.receive("stuck") == {"i": 0}
    await layer.aclose()


@async_test
async def test_cancelling_a_waiting_send_stores_nothing() -> None:
    layer = layers.from_url("memory://", capacity=1)
    await _fill(layer, "cancel.me", 1)
    task = asyncio.ensure_future(layer.send("cancel.me", {"x": "never"}, wait=30))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await layer.receive("cancel.me") == {"i": 0}
    # the cancelled send never lands, even once room appears
    await asyncio.sleep(0.2)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await layer.receive("cancel.me")
    await layer.aclose()


@async_test
async def test_wait_none_and_zero_fail_at_once_and_bad_wait_is_refused() -> None:
    layer = layers.from_url("memory://", capacity=1)
    await _fill(layer, "now", 1)
    for wait in (None, 0):
        started = time.monotonic()
        with pytest.raises(layers.ChannelFull):
            await layer.send("now", {}, wait=wait)
        assert time.monotonic() - started < 0.1
    with pytest.raises(ValueError, match="wait"):
        await layer.send("now", {}, wait=-1)
    await layer.aclose()


@async_test
async def test_many_waiting_producers_each_store_exactly_once() -> None:
    layer = layers.from_url("memory://", capacity=3)
    producers = [asyncio.ensure_future(layer.send("pipe", {"n": n}, wait=10)) for n in range(30)]
    received = [(await layer.receive("pipe"))["n"] for _ in range(30)]
    await asyncio.gather(*producers)
    assert sorted(received) == list(range(30))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await layer.receive("pipe")
    await layer.aclose()
