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

__all__ = ["STEAL_AFTER", "Ticket", "Turns"]

#: How often a loop waiting for a turn checks that the holder's loop still runs (seconds).
STEAL_AFTER = 2.0


class Ticket:
    """One loop's place in line for a queue's turn (from :meth:`Turns.enter`)."""

    __slots__ = ("future", "loop", "queue")

    def __init__(self, queue: str, loop: asyncio.AbstractEventLoop) -> None:
        self.queue = queue
        self.loop = loop
        #: None when the turn was free; else resolved (in ``loop``) when it is this one's.
        self.future: asyncio.Future[None] | None = None


class Turns:
    """Who pops each queue now, among the event loops of one layer (thread-safe).

    A free turn costs one ticket and one dict entry (``holders``); a line of waiting
    tickets (``lines``) is made only when a ticket has to wait.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[str, Ticket] = {}
        self._lines: dict[str, deque[Ticket]] = {}

    def enter(self, queue: str, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Take the turn of ``queue`` for ``loop`` if it is free, else queue up.

        Pass the ticket to :meth:`wait` (which returns at once if the turn was free),
        then to :meth:`leave`, exactly once, when done or if the wait failed.
        """
        ticket = Ticket(queue, loop)
        # acquire/release rather than ``with``: this runs for every receive, and the
        # context-manager protocol doubles the cost of an uncontended lock.
        self._lock.acquire()
        try:
            if self._holders.setdefault(queue, ticket) is not ticket:
                ticket.future = loop.create_future()
                line = self._lines.get(queue)
                if line is None:
                    line = self._lines[queue] = deque()
                line.append(ticket)
        finally:
            self._lock.release()
        return ticket

    def try_take(self, ticket: Ticket) -> bool:
        """Take the turn of ``ticket.queue`` for ``ticket`` if it is free; never queue up.

        For a caller that gives way when the queue is busy instead of waiting. A taken
        turn is given up with :meth:`leave`; a refused one needs nothing more. The
        ticket may be used again once its turn is left (it never waits in a line).
        """
        self._lock.acquire()
        try:
            return self._holders.setdefault(ticket.queue, ticket) is ticket
        finally:
            self._lock.release()

    async def wait(self, ticket: Ticket) -> None:
        """Wait until ``ticket`` holds its queue's turn.

        Cancellation: the ticket leaves the line, or gives on a turn it was just granted.
        """
        future = ticket.future
        if future is None:
            return
        try:
            while True:
                done, _ = await asyncio.wait((future,), timeout=STEAL_AFTER)
                if done:
                    return
                self._take_over_from_stopped(ticket.queue)
        except asyncio.CancelledError:
            self.leave(ticket)
            raise

    def leave(self, ticket: Ticket) -> None:
        """Give up ``ticket``: pass its turn to the next in line, or leave the line.

        A turn taken over from a stopped loop is no longer its ticket's, so that
        ticket's late ``leave`` changes nothing.
        """
        queue = ticket.queue
        self._lock.acquire()
        try:
            if self._holders.get(queue) is ticket:
                self._pass_on(queue)
            else:
                line = self._lines.get(queue)
                if line is not None and ticket in line:
                    line.remove(ticket)
                    if not line:
                        del self._lines[queue]
        finally:
            self._lock.release()

    def _pass_on(self, queue: str) -> None:
        line = self._lines.get(queue)
        while line:
            ticket = line.popleft()
            if ticket.future is None:  # only a ticket that had to wait is in line
                continue
            try:
                ticket.loop.call_soon_threadsafe(_grant, ticket.future)
            except RuntimeError:  # that loop is closed; its waiter is gone
                continue
            self._holders[queue] = ticket
            if not line:
                del self._lines[queue]
            return
        if line is not None:
            del self._lines[queue]
        del self._holders[queue]

    def _take_over_from_stopped(self, queue: str) -> None:
        with self._lock:
            holder = self._holders.get(queue)
            if holder is None:
                return
            if holder.loop.is_closed() or not holder.loop.is_running():
                self._pass_on(queue)


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
    # A waiter cancelled meanwhile gives the turn on itself (see Turns.wait).
