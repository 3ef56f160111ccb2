"""Tier 3: ``Worker`` and ``layers worker`` (routing, consumers, failures, shutdown, sharing)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

import layers
from layers import Channel, Group, Message
from layers.backends.memory import MemoryChannelLayer
from layers.conformance_tests.plugin import async_test
from layers.worker import Worker, load_routing

from .conftest import Proc


async def _collect(layer: Any, channel: str, count: int, timeout: float = 10) -> list[Any]:
    async with asyncio.timeout(timeout):
        return [await layer.receive(channel) for _ in range(count)]


def _worker(layer: Any, routing: dict[str, Any], **options: Any) -> Worker:
    return Worker(layer, routing, out=io.StringIO(), **options)


# -- in one process -------------------------------------------------------------------------


@async_test
async def test_sync_and_async_consumers_get_a_message_and_reply() -> None:
    layer = MemoryChannelLayer()
    seen: list[Message] = []

    def sync_consumer(message: Message) -> None:
        seen.append(message)
        assert message.reply_channel is not None
        Group("w.group", layer=layer).add(message.reply_channel)  # no await: plain function
        message.reply_channel.send({"sync": message["n"]})

    async def async_consumer(message: Message) -> None:
        await message.reply({"async": message["n"]})

    worker = _worker(layer, {"w.sync": sync_consumer, "w.async": async_consumer})
    run = asyncio.create_task(worker.run(close_layer=False))
    reply = await Channel.new(layer=layer)
    await Channel("w.sync", layer=layer).send({"n": 1, "reply_channel": reply.name})
    await Channel("w.async", layer=layer).send({"n": 2, "reply_channel": reply.name})
    got = [(await reply.receive()).content for _ in range(2)]
    assert sorted(map(str, got)) == sorted(map(str, [{"sync": 1}, {"async": 2}]))
    await Group("w.group", layer=layer).send({"g": 1})
    assert (await reply.receive()).content == {"g": 1}
    message = seen[0]
    assert message.channel == Channel("w.sync", layer=layer)
    assert message.reply_channel == reply
    assert message.channel_layer is layer
    assert message.content["n"] == 1
    worker.stop()
    await run
    assert worker.handled == {"w.sync": 1, "w.async": 1}
    assert worker.status_line().startswith("layers worker: layer <MemoryChannelLayer")


@async_test
async def test_a_consumer_that_raises_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = MemoryChannelLayer()

    def flaky(message: Message) -> None:
        if message["n"] == 1:
            raise RuntimeError("consumer exploded")
        Channel("w.out", layer=layer).send({"n": message["n"]})

    worker = _worker(layer, {"w.flaky": flaky})
    run = asyncio.create_task(worker.run(close_layer=False))
    for n in (1, 2):
        await layer.send("w.flaky", {"n": n})
    assert await _collect(layer, "w.out", 1) == [{"n": 2}]
    worker.stop()
    await run
    assert (worker.handled["w.flaky"], worker.failed["w.flaky"]) == (1, 1)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "'w.flaky'" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert "consumer exploded" in str(failures[0].exc_info[1])


@async_test
async def test_time_limit_cancels_a_slow_consumer(caplog: pytest.LogCaptureFixture) -> None:
    layer = MemoryChannelLayer()

    async def slow(message: Message) -> None:
        await asyncio.sleep(message["sleep"])
        await Channel("w.out", layer=layer).send({"done": message["sleep"]})

    worker = _worker(layer, {"w.slow": slow}, time_limit=0.2)
    run = asyncio.create_task(worker.run(close_layer=False))
    await layer.send("w.slow", {"sleep": 5})
    await layer.send("w.slow", {"sleep": 0})
    assert await _collect(layer, "w.out", 1) == [{"done": 0}]
    await asyncio.sleep(0.4)
    worker.stop()
    await run
    assert worker.failed["w.slow"] == 1
    assert "ran past its 0.2 s time limit" in caplog.text


@async_test
async def test_stop_finishes_the_messages_in_hand() -> None:
    layer = MemoryChannelLayer()
    started = asyncio.Event()

    async def slow(message: Message) -> None:
        started.set()
        await asyncio.sleep(0.3)
        await Channel("w.out", layer=layer).send({"n": message["n"]})

    worker = _worker(layer, {"w.slow": slow}, concurrency=4, grace=5)
    run = asyncio.create_task(worker.run(close_layer=False))
    for n in range(4):
        await layer.send("w.slow", {"n": n})
    await started.wait()
    await asyncio.sleep(0.05)
    worker.stop()
    await run
    assert sorted(m["n"] for m in await _collect(layer, "w.out", 4)) == [0, 1, 2, 3]
    assert worker.abandoned == 0
    assert worker.handled["w.slow"] == 4


@async_test
async def test_what_is_unfinished_at_the_grace_deadline_is_logged_with_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = MemoryChannelLayer()
    started: list[int] = []
    all_started = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.append(message["n"])
        if len(started) == 3:
            all_started.set()
        await asyncio.sleep(60)

    worker = _worker(layer, {"w.stuck": stuck}, concurrency=3, grace=0.2)
    run = asyncio.create_task(worker.run(close_layer=False))
    for n in range(3):
        await layer.send("w.stuck", {"n": n})
    await all_started.wait()
    begun = time.monotonic()
    worker.stop()
    await run
    assert time.monotonic() - begun < 3
    assert worker.abandoned == 3
    assert "3 message(s) still in hand after the 0.2 s grace period" in caplog.text


@async_test
async def test_messages_waiting_for_a_slot_at_stop_are_handled_not_dropped() -> None:
    """With concurrency 1, a received message waits for the slot; stopping must not lose it."""
    layer = MemoryChannelLayer()

    async def slow(message: Message) -> None:
        await asyncio.sleep(0.2)
        await Channel("w.out", layer=layer).send({"n": message["n"]})

    worker = _worker(layer, {"w.one": slow}, concurrency=1, grace=5)
    run = asyncio.create_task(worker.run(close_layer=False))
    for n in range(3):
        await layer.send("w.one", {"n": n})
    await asyncio.sleep(0.05)  # n=0 running, n=1 received and waiting for the slot
    worker.stop()
    await run
    handled = worker.handled["w.one"]
    assert handled >= 2
    out = [m["n"] for m in await _collect(layer, "w.out", handled)]
    left = [m["n"] for m in await _collect(layer, "w.one", 3 - handled)]
    assert sorted(out + left) == [0, 1, 2]


@async_test
async def test_stats_are_printed_periodically() -> None:
    layer = MemoryChannelLayer()
    out = io.StringIO()

    def ok(message: Message) -> None:
        pass

    worker = Worker(layer, {"w.a": ok, "w.b": ok}, stats_interval=0.1, out=out)
    run = asyncio.create_task(worker.run(close_layer=False))
    for n in range(3):
        await layer.send("w.a", {"n": n})
    await asyncio.sleep(0.35)
    worker.stop()
    await run
    lines = out.getvalue().splitlines()
    assert lines[0] == worker.status_line()
    stats = [line for line in lines if line.startswith("layers worker stats:")]
    assert len(stats) >= 2
    assert "handled 3, failed 0" in stats[-1]
    assert "w.a " in stats[-1]
    assert "/s" in stats[-1]
    assert lines[-1] == "layers worker stopped: handled 3, failed 0, abandoned 0"


def test_routing_errors_name_the_setting() -> None:
    with pytest.raises(layers.ConfigurationError, match="cannot import 'no_such_module'"):
        load_routing("no_such_module:channel_routing")
    with pytest.raises(layers.ConfigurationError, match="reply channel"):
        load_routing({"specific.abc!xyz": print})
    with pytest.raises(TypeError):
        load_routing({"bad name": print})
    with pytest.raises(layers.ConfigurationError, match="not callable"):
        load_routing({"jobs": 42})
    with pytest.raises(layers.ConfigurationError, match="not in the routing table"):
        Worker(MemoryChannelLayer(), {"a": print}, only=["b"])
    with pytest.raises(layers.ConfigurationError, match="no channel is left"):
        Worker(MemoryChannelLayer(), {"a": print}, exclude=["a"])
    from layers.demo import main

    assert load_routing({"jobs": "layers.demo.main", "more": "layers.demo:main"}) == {
        "jobs": main,
        "more": main,
    }


# -- ``layers worker`` processes sharing one backend ----------------------------------------


async def _send_jobs(url: str, channel: str, count: int, **extra: Any) -> None:
    layer = layers.from_url(url)
    for n in range(count):
        while True:
            try:
                await layer.send(channel, {"id": n, **extra})
                break
            except layers.ChannelFull:
                await asyncio.sleep(0.01)
    await layer.aclose()


async def _results(url: str, count: int, timeout: float = 30, channel: str = "results") -> Any:
    layer = layers.from_url(url)
    try:
        return await _collect(layer, channel, count, timeout)
    finally:
        await layer.aclose()


@pytest.mark.slow
def test_two_worker_processes_share_the_work_exactly_once(
    any_cross_url: str, start_worker: Callable[..., Proc]
) -> None:
    cross_url = any_cross_url
    workers = [start_worker(cross_url, "tiers_app:channel_routing", "--only", "jobs", "async.jobs")]
    workers.append(start_worker(cross_url))

    async def scenario() -> list[Any]:
        # Results are read while jobs are sent: the results channel holds only 100.
        collecting = asyncio.create_task(_results(cross_url, 200))
        await _send_jobs(cross_url, "jobs", 150, pause=0.04)  # so no worker takes all
        await _send_jobs(cross_url, "async.jobs", 50)
        return await collecting

    results = asyncio.run(scenario())
    ids = sorted((("async" in r), r["id"]) for r in results)
    assert ids == [(False, n) for n in range(150)] + [(True, n) for n in range(50)]
    pids = {r["pid"] for r in results}
    assert pids == {w.popen.pid for w in workers}, "both workers should have taken work"
    for worker in workers:
        assert worker.terminate() == 0, worker.output()
        assert "layers worker stopped: handled" in worker.output()
    assert "channels jobs, async.jobs, boom, join" in workers[1].output()


@pytest.mark.slow
def test_sigterm_finishes_messages_in_hand_then_exits(
    cross_url: str, start_worker: Callable[..., Proc]
) -> None:
    worker = start_worker(cross_url, "tiers_app:channel_routing", "--grace", "10")
    asyncio.run(_send_jobs(cross_url, "jobs", 3, sleep=1.0))
    asyncio.run(_results(cross_url, 3, channel="results.started"))
    begun = time.monotonic()
    assert worker.terminate() == 0, worker.output()
    assert time.monotonic() - begun < 8
    results = asyncio.run(_results(cross_url, 3))
    assert sorted(r["id"] for r in results) == [0, 1, 2]
    assert "handled 3, failed 0, abandoned 0" in worker.output()


@pytest.mark.slow
def test_a_consumer_exception_in_a_worker_process_is_logged_and_it_goes_on(
    cross_url: str, start_worker: Callable[..., Proc]
) -> None:
    worker = start_worker(cross_url, "tiers_app:channel_routing", "--only", "boom")

    async def scenario() -> list[Any]:
        layer = layers.from_url(cross_url)
        reply = await layer.new_channel()
        await layer.send("boom", {"id": 1, "boom": True, "reply_channel": reply})
        await layer.send("boom", {"id": 2, "reply_channel": reply})
        try:
            return await _collect(layer, reply, 1)
        finally:
            await layer.aclose()

    assert asyncio.run(scenario()) == [{"id": 2, "ok": True}]
    assert worker.terminate() == 0
    output = worker.output()
    assert "consumer tiers_app.boom failed on channel 'boom'" in output
    assert "RuntimeError: consumer exploded on 1" in output
    assert "handled 1, failed 1" in output


@pytest.mark.slow
def test_worker_with_a_django_channel_layers_alias(
    tmp_path: Any, spawn: Callable[..., Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--layer default`` reads CHANNEL_LAYERS; bare ``Channel(name)`` in consumers uses it."""
    url = f"sqlite:///{tmp_path}/django.db"
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "django_settings")
    monkeypatch.setenv("TIER_URL", url)
    worker = spawn("-m", "layers", "worker", "tiers_app:channel_routing", "--layer", "default")
    worker.wait_for_output("layers worker: layer")

    async def scenario() -> list[Any]:
        collecting = asyncio.create_task(_results(url, 2))
        await _send_jobs(url, "jobs", 1)
        await _send_jobs(url, "async.jobs", 1)
        return await collecting

    results = asyncio.run(scenario())
    assert sorted(r["id"] for r in results) == [0, 0]
    assert {r["pid"] for r in results} == {worker.popen.pid}
    assert worker.terminate() == 0, worker.output()
