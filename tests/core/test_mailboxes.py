"""Mailboxes: kept between receives, swept when idle, never losing a message."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import layers
from layers.conformance_tests.plugin import async_test


@async_test
async def test_lone_consumers_leave_no_mailbox_and_a_sweep_drops_idle_ones() -> None:
    layer = layers.from_url("memory://mailboxes-sweep")
    await layer.send("kept", {"type": "m"})
    assert (await layer.receive("kept"))["type"] == "m"
    hub = layer._hub
    for i in range(50):  # waits in the backend that time out hold no mailbox
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(layer.receive(f"idle{i}"), 0.001)
        reply = await layer.new_channel()
        await layer.send(reply, {"type": "r"})
        assert (await layer.receive(reply))["type"] == "r"
    assert hub.mailboxes == {}
    for i in range(50):
        hub.mailbox(f"made{i}", f"made{i}")
    hub.sweep(time.monotonic())
    assert hub.mailboxes == {}
    # Bad names are refused every time, remembered good ones keep working.
    with pytest.raises(TypeError):
        await layer.receive("bad name")
    await layer.send("kept", {"type": "again"})
    assert (await layer.receive("kept"))["type"] == "again"
    await layer.aclose()


@async_test
async def test_a_message_put_back_after_a_sweep_is_not_lost() -> None:
    layer = layers.from_url("memory://mailboxes-putback")
    reply = await layer.new_channel()
    hub = layer._hub
    waiter = asyncio.create_task(layer.receive(reply))
    await asyncio.sleep(0.01)
    box = hub.mailboxes[reply]
    # What a reader does: hand the message to the waiting consumer's future. Before
    # the consumer runs, a sweep drops the now idle mailbox and the consumer is
    # cancelled: the message must be put back, in a mailbox the next receive finds.
    item = (time.monotonic() + 60, {"type": "first"})
    assert hub.deliver(box, item, asyncio.get_running_loop())
    hub.sweep(time.monotonic())
    assert reply not in hub.mailboxes
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await asyncio.wait_for(layer.receive(reply), 1))["type"] == "first"
    await layer.aclose()


async def _handed(
    layer: layers.ChannelLayer, items: list[tuple[float, dict[str, object]]]
) -> tuple[str, list[asyncio.Task[dict[str, object]]]]:
    """A reply channel, one consumer per item waiting on it in its mailbox, each handed its
    item; the receive that waits in the backend itself (if one does) is ended first."""
    reply = await layer.new_channel()
    consumers = [asyncio.create_task(layer.receive(reply)) for _ in items]
    await asyncio.sleep(0.01)
    box = layer._hub.mailboxes[reply]
    if len(box.waiters) < len(items):  # the first one drives the inbox in its own task
        driver = consumers.pop(0)
        consumers.append(asyncio.create_task(layer.receive(reply)))
        await asyncio.sleep(0.01)
        driver.cancel()
        await asyncio.gather(driver, return_exceptions=True)
    assert len(box.waiters) == len(items)
    for item in items:  # what a reader does
        assert layer._hub.deliver(box, item, asyncio.get_running_loop())
    return reply, consumers


@async_test
async def test_consumers_cancelled_together_give_back_in_handed_order() -> None:
    """Three consumers are handed three messages and cancelled before they run, their
    cancellations running in any order: the messages go back in the order they were
    handed, ahead of one buffered since."""
    layer = layers.from_url("memory://mailboxes-give-back")
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        later = time.monotonic() + 60
        reply, consumers = await _handed(layer, [(later, {"i": i}) for i in range(3)])
        box = layer._hub.mailboxes[reply]
        layer._hub.deliver(box, (later, {"i": 3}), asyncio.get_running_loop())  # buffered
        for k in order:
            consumers[k].cancel()
        for k in order:  # each gives its message back as its cancellation runs
            with pytest.raises(asyncio.CancelledError):
                await consumers[k]
        got = [(await asyncio.wait_for(layer.receive(reply), 1))["i"] for _ in range(4)]
        assert got == [0, 1, 2, 3], order
    await layer.aclose()


@async_test
async def test_a_message_given_back_keeps_its_expiry() -> None:
    layer = layers.from_url("memory://mailboxes-give-back-expiry")
    now = time.monotonic()
    reply, consumers = await _handed(
        layer, [(now + 0.05, {"i": "short"}), (now + 60, {"i": "long"})]
    )
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    await asyncio.sleep(0.1)
    assert (await asyncio.wait_for(layer.receive(reply), 1))["i"] == "long"
    await layer.aclose()


def test_group_payload_puts_match_the_envelope_of_a_send() -> None:
    from layers.core.envelope import group_payload, pack, unpack

    payload = group_payload(b"body", 1234.5, 60.0, 7)
    members = ["plain.a", "x.inbox1!r1", "plain.b", "x.inbox1!r2", "x.inbox2!r3"]
    puts = payload.puts(members)
    assert [p.queue for p in puts] == ["plain.a", "x.inbox1!", "plain.b", "x.inbox2!"]
    assert {p.capacity for p in puts} == {7}
    assert {p.expiry for p in puts} == {60.0}
    assert puts[0].payload == pack(None, b"body", 1234.5)
    assert puts[1].payload == pack(["r1", "r2"], b"body", 1234.5)
    assert unpack(puts[3].payload) == (["r3"], 1234.5, b"body")
