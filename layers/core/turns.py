"""Turns: one event loop at a time pops a queue, so a layer delivers in store order.

A layer used from several event loops (threads, ``async_to_sync``) has one reader per
loop and queue, each with its own backend connection. Two readers popping one queue
at once take messages in the store's order but may hand them to the shared mailboxes
in the other order (each loop runs in its own thread), so a consumer would receive
message 4 before message 3. :class:`Turns` makes "pop, then deliver" (and "give back
to the store") of one queue exclusive across a layer's loops, first come first
served. A loop that holds no turn pays one uncontended lock per pop.

A turn held by a loop that stopped without finishing its pop (closed, or no longer
running) would block the queue for good: a waiter checks the holder every
:data:`STEAL_AFTER` seconds and takes the turn over from such a loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

__all__ = ["STEAL_AFTER", "Turns"]

#: How often a loop waiting for a turn checks that the holder's loop still runs (seconds).
STEAL_AFTER = 2.0

_Entry = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class _Turn:
    __slots__ = ("holder", "waiting")

    def __init__(self, holder: asyncio.AbstractEventLoop) -> None:
        self.holder = holder
        self.waiting: deque[_Entry] = deque()


class Turns:
    """Who pops each queue now, among the event loops of one layer (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: dict[str, _Turn] = {}

    def enter(self, queue: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """Take the turn of ``queue`` for ``loop`` at once (None), else queue up.

        The future returned resolves, in ``loop``, when the turn is ``loop``'s; pass it
        to :meth:`wait`. Every call that returned None, or whose wait returned, must
        be followed by exactly one :meth:`leave`.
        """
        with self._lock:
            turn = self._turns.get(queue)
            if turn is None:
                self._turns[queue] = _Turn(loop)
                return None
            future: asyncio.Future[None] = loop.create_future()
            turn.waiting.append((loop, future))
            return future

    async def wait(self, queue: str, future: asyncio.Future[None]) -> None:
        """Wait for the turn :meth:`enter` queued for; cancelling it gives the turn on."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                done, _ = await asyncio.wait((future,), timeout=STEAL_AFTER)
                if done:
                    return
                self._take_over_from_stopped(queue)
        except asyncio.CancelledError:
            with self._lock:
                turn = self._turns.get(queue)
                entry = (loop, future)
                if turn is not None and entry in turn.waiting:
                    turn.waiting.remove(entry)
                    raise
            self.leave(queue)  # the turn was already ours: pass it on
            raise

    def leave(self, queue: str) -> None:
        """Give the turn of ``queue`` to the next loop in line (or free it)."""
        with self._lock:
            self._pass_on(queue)

    def _pass_on(self, queue: str) -> None:
        turn = self._turns.get(queue)
        if turn is None:
            return
        while turn.waiting:
            loop, future = turn.waiting.popleft()
            try:
                loop.call_soon_threadsafe(_grant, future)
            except RuntimeError:  # that loop is closed; its waiter is gone
                continue
            turn.holder = loop
            return
        del self._turns[queue]

    def _take_over_from_stopped(self, queue: str) -> None:
        with self._lock:
            turn = self._turns.get(queue)
            if turn is not None and (turn.holder.is_closed() or not turn.holder.is_running()):
                self._pass_on(queue)


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
    # A waiter cancelled meanwhile finds itself out of line and leaves the turn.
