"""Turns: one event loop at a time pops a queue, first come first served."""

from __future__ import annotations

import asyncio
import threading

import pytest

from layers.conformance_tests.plugin import async_test
from layers.core import turns as turns_module
from layers.core.turns import Turns


class OtherLoop:
    """An event loop running in its own thread, as ``async_to_sync`` makes them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object) -> asyncio.Future[object]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def _take(turns: Turns, queue: str) -> None:
    queued = turns.enter(queue, asyncio.get_running_loop())
    if queued is not None:
        await turns.wait(queue, queued)


@async_test
async def test_a_free_turn_is_taken_at_once_and_freed_by_leave() -> None:
    turns, loop = Turns(), asyncio.get_running_loop()
    assert turns.enter("q", loop) is None
    assert turns.enter("other", loop) is None  # queues are independent
    turns.leave("q")
    assert turns.enter("q", loop) is None


@async_test
async def test_loops_take_turns_in_arrival_order() -> None:
    turns, here = Turns(), asyncio.get_running_loop()
    others = [OtherLoop(), OtherLoop()]
    order: list[int] = []
    try:
        assert turns.enter("q", here) is None

        async def take(k: int) -> None:
            await _take(turns, "q")
            order.append(k)
            await asyncio.sleep(0.01)
            turns.leave("q")

        first = others[0].run(take(0))
        await asyncio.sleep(0.05)
        second = others[1].run(take(1))
        await asyncio.sleep(0.05)
        assert order == []  # both wait while this loop holds the turn
        turns.leave("q")
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert order == [0, 1]
        assert turns.enter("q", here) is None  # the last one freed it
    finally:
        for other in others:
            other.stop()


@async_test
async def test_a_waiter_cancelled_in_line_leaves_the_line() -> None:
    turns, here = Turns(), asyncio.get_running_loop()
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
        assert turns.enter("q", here) is None
        assert await asyncio.wait_for(other.run(wait_then_give_up()), 5)
        turns.leave("q")
        assert turns.enter("q", here) is None  # nobody was left in line to own it
    finally:
        other.stop()


@async_test
async def test_a_turn_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    turns, here = Turns(), asyncio.get_running_loop()
    assert turns.enter("q", here) is None
    first = turns.enter("q", here)
    second = turns.enter("q", here)
    assert first is not None
    assert second is not None
    cancelled = asyncio.create_task(turns.wait("q", first))
    after = asyncio.create_task(turns.wait("q", second))
    await asyncio.sleep(0)
    turns.leave("q")  # grants the first waiter (a callback in this loop)...
    cancelled.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.wait_for(after, 5)  # and the turn went on to the second
    turns.leave("q")
    assert turns.enter("q", here) is None


@async_test
async def test_a_turn_held_by_a_stopped_loop_is_taken_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(turns_module, "STEAL_AFTER", 0.05)
    turns, here = Turns(), asyncio.get_running_loop()
    abandoned = asyncio.new_event_loop()
    assert turns.enter("q", abandoned) is None  # its pop never finishes
    abandoned.close()
    await asyncio.wait_for(_take(turns, "q"), 5)
    turns.leave("q")
    assert turns.enter("q", here) is None


@async_test
async def test_a_turn_held_by_a_running_loop_is_not_taken_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(turns_module, "STEAL_AFTER", 0.02)
    turns = Turns()
    other = OtherLoop()
    try:
        assert turns.enter("q", other.loop) is None
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_take(turns, "q"), 0.2)
    finally:
        other.stop()
