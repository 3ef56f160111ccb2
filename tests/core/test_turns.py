"""Turns: one event loop at a time pops a queue, first come first served."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

from layers.conformance_tests.plugin import async_test
from layers.core import turns as turns_module
from layers.core.turns import Ticket, Turns


class OtherLoop:
    """An event loop running in its own thread, as ``async_to_sync`` makes them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def _take(turns: Turns, queue: str) -> Ticket:
    ticket = turns.enter(queue, asyncio.get_running_loop())
    await turns.wait(ticket)
    return ticket


def _free(turns: Turns, queue: str) -> bool:
    """Whether ``queue``'s turn is free now (taking it and giving it back if so)."""
    ticket = turns.enter(queue, asyncio.get_running_loop())
    turns.leave(ticket)
    return ticket.future is None


@async_test
async def test_a_free_turn_is_taken_at_once_and_freed_by_leave() -> None:
    turns, loop = Turns(), asyncio.get_running_loop()
    held = turns.enter("q", loop)
    assert held.future is None
    assert _free(turns, "other")  # queues are independent
    assert not _free(turns, "q")
    turns.leave(held)
    assert _free(turns, "q")


@async_test
async def test_try_take_takes_only_a_free_turn_and_never_queues() -> None:
    """A refused ticket leaves no trace; a reused ticket takes the turn again once left."""
    turns, loop = Turns(), asyncio.get_running_loop()
    mine = Ticket("q", loop)
    assert turns.try_take(mine)
    assert not _free(turns, "q")
    other = Ticket("q", loop)
    assert not turns.try_take(other)
    turns.leave(mine)
    assert _free(turns, "q")  # the refused ticket did not get the turn on the way
    held = turns.enter("q", loop)
    assert not turns.try_take(mine)
    turns.leave(held)
    assert turns.try_take(mine)
    turns.leave(mine)
    assert _free(turns, "q")


@async_test
async def test_loops_take_turns_in_arrival_order() -> None:
    turns = Turns()
    others = [OtherLoop(), OtherLoop()]
    order: list[int] = []
    try:
        held = await _take(turns, "q")

        async def take(k: int) -> None:
            ticket = await _take(turns, "q")
            order.append(k)
            await asyncio.sleep(0.01)
            turns.leave(ticket)

        first = others[0].run(take(0))
        await asyncio.sleep(0.05)
        second = others[1].run(take(1))
        await asyncio.sleep(0.05)
        assert order == []  # both wait while this loop holds the turn
        turns.leave(held)
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert order == [0, 1]
        assert _free(turns, "q")  # the last one freed it
    finally:
        for other in others:
            other.stop()


@async_test
async def test_a_waiter_cancelled_in_line_leaves_the_line() -> None:
    turns = Turns()
    other = OtherLoop()

    async def wait_then_give_up() -> bool:
        waiting = asyncio.create_task(_take(turns, "q"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            return True
        return False

    try:
        held = await _take(turns, "q")
        assert await asyncio.wait_for(other.run(wait_then_give_up()), 5)
        turns.leave(held)
        assert _free(turns, "q")  # nobody was left in line to own it
    finally:
        other.stop()


@async_test
async def test_a_turn_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    turns, here = Turns(), asyncio.get_running_loop()
    held = await _take(turns, "q")
    first, second = turns.enter("q", here), turns.enter("q", here)
    cancelled = asyncio.create_task(turns.wait(first))
    after = asyncio.create_task(turns.wait(second))
    await asyncio.sleep(0)
    turns.leave(held)  # grants the first waiter (a callback in this loop)...
    cancelled.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.wait_for(after, 5)  # and the turn went on to the second
    turns.leave(second)
    assert _free(turns, "q")


@async_test
async def test_a_turn_held_by_a_stopped_loop_is_taken_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(turns_module, "STEAL_AFTER", 0.05)
    turns = Turns()
    abandoned = asyncio.new_event_loop()
    stale = turns.enter("q", abandoned)  # its pop never finishes
    abandoned.close()
    mine = await asyncio.wait_for(_take(turns, "q"), 5)
    third = turns.enter("q", asyncio.get_running_loop())
    turns.leave(stale)  # a late leave of the stale holder changes nothing
    await asyncio.sleep(0.01)  # (a grant would be a callback in this loop)
    assert third.future is not None
    assert not third.future.done()
    turns.leave(mine)
    await asyncio.wait_for(turns.wait(third), 5)
    turns.leave(third)
    assert _free(turns, "q")


@async_test
async def test_a_turn_held_by_a_running_loop_is_not_taken_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(turns_module, "STEAL_AFTER", 0.02)
    turns = Turns()
    other = OtherLoop()
    try:
        turns.enter("q", other.loop)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_take(turns, "q"), 0.2)
    finally:
        other.stop()
