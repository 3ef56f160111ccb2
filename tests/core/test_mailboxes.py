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


async def _waiting(
    layer: layers.ChannelLayer, count: int
) -> tuple[str, list[asyncio.Task[dict[str, object]]]]:
    """A reply channel and ``count`` consumers waiting in its mailbox (a receive that
    drives the inbox in its own task, if one does, is ended first)."""
    reply = await layer.new_channel()
    consumers = [asyncio.create_task(layer.receive(reply)) for _ in range(count)]
    await asyncio.sleep(0.01)
    box = layer._hub.mailboxes.get(reply)
    if box is None or len(box.waiters) < count:
        driver = consumers.pop(0)
        consumers.append(asyncio.create_task(layer.receive(reply)))
        await asyncio.sleep(0.01)
        driver.cancel()
        await asyncio.gather(driver, return_exceptions=True)
    assert len(layer._hub.mailboxes[reply].waiters) == count
    return reply, consumers


async def _handed(
    layer: layers.ChannelLayer, items: list[tuple[float, dict[str, object]]]
) -> tuple[str, list[asyncio.Task[dict[str, object]]]]:
    """A reply channel, one consumer per item waiting on it in its mailbox, each handed its
    item."""
    reply, consumers = await _waiting(layer, len(items))
    box = layer._hub.mailboxes[reply]
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


@async_test
async def test_a_message_handed_across_loops_comes_back_after_a_sweep_dropped_its_mailbox() -> None:
    """A dispatch of another loop hands two messages to two consumers of this one (the
    hand-offs run later, in this loop), then sweeps the now idle mailbox away; both
    consumers are cancelled before the hand-offs run. The messages go back to the
    channel's mailbox in the hub, in order, where the next receives find them."""
    layer = layers.from_url("memory://mailboxes-accept-swept")
    reply, consumers = await _waiting(layer, 2)
    hub = layer._hub
    box = hub.mailboxes[reply]
    for n in range(2):  # ``None``: not this loop's call, so the hand-off is scheduled
        hub.deliver(box, (time.monotonic() + 60, {"n": n}), None)
    for consumer in consumers:
        consumer.cancel()
    hub.sweep(time.monotonic())
    assert reply not in hub.mailboxes
    await asyncio.gather(*consumers, return_exceptions=True)  # hand-offs, then cancels
    assert all(consumer.cancelled() for consumer in consumers)
    got = [(await asyncio.wait_for(layer.receive(reply), 2))["n"] for _ in range(2)]
    assert got == [0, 1]
    await layer.aclose()


@async_test
async def test_places_in_line_hold_across_a_mailbox_made_again_after_a_sweep() -> None:
    """m2 is handed from a mailbox a sweep then drops; given back, it goes to the new
    mailbox and to a new consumer, and m3 follows to another. Both consumers cancelled
    together: m2 still comes before m3."""
    layer = layers.from_url("memory://mailboxes-places-sweep")
    hub, loop = layer._hub, asyncio.get_running_loop()
    later = time.monotonic() + 60
    reply, consumers = await _waiting(layer, 3)
    first = hub.mailboxes[reply]
    e = asyncio.create_task(layer.receive(reply))
    f = asyncio.create_task(layer.receive(reply))
    for i in range(3):
        hub.deliver(first, (later, {"i": i}), loop)
    hub.sweep(time.monotonic())  # the first mailbox is idle: dropped
    consumers[2].cancel()  # m2's consumer, before it runs: m2 goes back, then to e
    await asyncio.sleep(0)
    again = hub.mailboxes[reply]
    assert again is not first
    hub.deliver(again, (later, {"i": 3}), loop)  # m3, to f
    e.cancel()
    f.cancel()
    results = await asyncio.gather(*consumers, e, f, return_exceptions=True)
    assert [r["i"] for r in results if isinstance(r, dict)] == [0, 1]
    got = [(await asyncio.wait_for(layer.receive(reply), 1))["i"] for _ in range(2)]
    assert got == [2, 3]
    await layer.aclose()


def test_a_full_buffer_drops_the_message_last_in_line_when_one_is_given_back() -> None:
    from layers.core.mailboxes import Mailbox

    box = Mailbox("q", "q", 3)
    later = time.monotonic() + 60
    for place in (2, 3, 4):
        box.give_back((later, {"i": place}, place))
    box.give_back((later, {"i": 5}, 5))  # last in line: it is the one dropped
    assert [item[2] for item in box.items] == [2, 3, 4]
    box.give_back((later, {"i": 1}, 1))  # first in line: the last one goes
    assert [item[2] for item in box.items] == [1, 2, 3]
