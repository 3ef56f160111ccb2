"""Mailboxes: where received messages wait for consumers, shared by a layer's event loops.

The :class:`Hub` holds one :class:`Mailbox` per channel for a whole layer, under one
lock, so a message taken from the store is receivable by the next ``receive`` of its
channel from any event loop or thread (``async_to_sync`` makes a loop per call). It is
the one owner of "demand equals the live waiters": a :class:`Waiter` is counted in its
loop's demand from the moment it waits until it leaves the mailbox's queue of waiters,
exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layers.core.turns import Turns

if TYPE_CHECKING:
    from layers.core.local import LoopState

__all__ = ["SWEEP_INTERVAL", "Hub", "Item", "Mailbox", "Waiter"]

logger = logging.getLogger("layers")

#: How often idle mailboxes and expired buffered messages are swept (seconds).
SWEEP_INTERVAL = 5.0

#: Places in line of handed messages: one sequence for the process, so a mailbox made
#: again after a sweep dropped the idle one never reuses a place still in a hand.
_places = itertools.count(1)

#: A buffered message: when it expires (``time.monotonic()``) and the message; a message
#: given back by a cancelled consumer also carries its place in line (see :class:`Mailbox`).
Item = tuple[float, dict[str, Any]] | tuple[float, dict[str, Any], int]


class Waiter:
    """One consumer waiting in ``receive``: the loop state it waits in and its future.

    Once handed a message, it also knows that message's expiry and place in line, so a
    consumer cancelled before it runs gives it back where it was (:meth:`kept`).
    """

    __slots__ = ("expires_at", "future", "place", "state")

    def __init__(self, state: LoopState, future: asyncio.Future[dict[str, Any]]) -> None:
        self.state = state
        self.future = future
        self.expires_at = 0.0
        self.place = 0

    def give(self, box: Mailbox, item: Item, here: asyncio.AbstractEventLoop | None) -> bool:
        """Hand ``item`` to this waiter, under the hub's lock; False if it is gone.

        ``here`` is the caller's loop. Across loops the hand-off runs in the waiter's
        loop, where a waiter cancelled meanwhile gives the message back to the mailbox,
        in its place in line.
        """
        future = self.future
        if future.done():
            return False
        # Its place in line: the one it had if it was given back, else the next one.
        self.place = item[2] if len(item) == 3 else next(_places)
        self.expires_at = item[0]
        state = self.state
        if state.loop is here:
            future.set_result(item[1])
            return True
        try:
            state.loop.call_soon_threadsafe(state.accept, self, box, self.kept(item[1]))
        except RuntimeError:  # its loop is closed
            return False
        return True

    def kept(self, message: dict[str, Any]) -> Item:
        """The item to give back for ``message``, handed to this waiter: its place kept."""
        return (self.expires_at, message, self.place)


class Mailbox:
    """Buffered messages and waiting consumers of one channel (shared by every loop).

    Invariant, kept by :class:`Hub`: while a message is buffered no live consumer
    waits, so a new message never overtakes a buffered one.

    Each message handed to a waiter gets a place in line (from one increasing
    sequence). A consumer cancelled before it ran gives its message back with that
    place, and it goes in ahead of every message buffered since and behind any given
    back with an earlier place: consumers cancelled together give theirs back in the
    order they were handed, whatever order their cancellations run in.
    """

    __slots__ = ("channel", "items", "queue", "waiters")

    def __init__(self, channel: str, queue: str, bound: int) -> None:
        self.channel = channel
        self.queue = queue
        self.items: deque[Item] = deque(maxlen=bound)
        self.waiters: deque[Waiter] = deque()

    def take(self, now: float) -> dict[str, Any] | None:
        """Pop the oldest unexpired buffered message, dropping expired ones."""
        items = self.items
        while items:
            item = items.popleft()
            if item[0] > now:
                return item[1]
        return None

    def give_back(self, item: Item) -> None:
        """Put a handed message back: behind those given back with an earlier place.

        A full buffer drops the message last in line (this one, if it goes last).
        """
        items = self.items
        place = item[2] if len(item) == 3 else 0
        at = 0
        for ahead in items:
            if len(ahead) != 3 or ahead[2] > place:
                break
            at += 1
        if len(items) == items.maxlen:
            logger.warning("local buffer of a channel is full: dropping its newest message")
            if at == len(items):
                return
            items.pop()
        items.insert(at, item)

    def idle(self) -> bool:
        """True when nothing is buffered and nobody waits."""
        return not self.items and not self.waiters


class Hub:
    """The mailboxes of one layer, shared by all its event loops and threads.

    The one owner of "demand equals the live waiters": :meth:`wait` counts a waiter
    in its loop's demand, and it is uncounted exactly once, when it leaves the
    mailbox's queue of waiters (handed a message by :meth:`deliver`, or
    :meth:`withdraw`-n). Every method runs under one lock and never awaits.
    """

    def __init__(self, capacity_of: Callable[[str], int]) -> None:
        self.lock = threading.Lock()
        self.mailboxes: dict[str, Mailbox] = {}
        self.capacity_of = capacity_of
        #: Which loop pops each queue now (see :mod:`layers.core.turns`).
        self.turns = Turns()
        self.next_sweep = time.monotonic() + SWEEP_INTERVAL

    def mailbox(self, channel: str, queue: str) -> Mailbox:
        """Return the mailbox of ``channel`` (whose store queue is ``queue``)."""
        box = self.mailboxes.get(channel)
        if box is None:
            with self.lock:
                box = self.mailboxes.get(channel)
                if box is None:
                    box = self.mailboxes[channel] = Mailbox(
                        channel, queue, self.capacity_of(channel)
                    )
        return box

    def wait(self, channel: str, box: Mailbox, state: LoopState) -> dict[str, Any] | Waiter:
        """Take the oldest buffered message of ``channel``, else register a waiter."""
        # acquire/release rather than ``with`` on the per-message paths (wait, deliver):
        # the context-manager protocol doubles the cost of an uncontended lock.
        self.lock.acquire()
        try:
            # A sweep may have dropped the (then idle) mailbox: put it back, or use
            # the one made since.
            box = self.mailboxes.setdefault(channel, box)
            if box.items:
                message = box.take(time.monotonic())
                if message is not None:
                    return message
            waiter = Waiter(state, state.loop.create_future())
            box.waiters.append(waiter)
            state.count(box.queue, 1)
            return waiter
        finally:
            self.lock.release()

    def withdraw(self, box: Mailbox, waiter: Waiter) -> None:
        """``waiter`` stops waiting without a message (cancelled, timed out, failed)."""
        with self.lock:
            try:
                box.waiters.remove(waiter)
            except ValueError:
                return  # already uncounted by a delivery
            waiter.state.count(box.queue, -1)

    def deliver(
        self,
        box: Mailbox,
        item: Item,
        here: asyncio.AbstractEventLoop | None,
        *,
        front: bool = False,
    ) -> bool:
        """Buffer ``item`` (given back to its place with ``front``), then serve waiters in order.

        Returns True when a waiter took it. A full buffer drops its oldest message (with
        ``front``, the one last in line). A message given back goes to the channel's
        mailbox in the hub even if a sweep dropped ``box`` (idle while the message was
        in a consumer's hand) meanwhile.
        """
        self.lock.acquire()
        try:
            if front:
                box = self.mailboxes.setdefault(box.channel, box)
            items = box.items
            if not items and box.waiters and not front:
                # The common case: a consumer waits and nothing is buffered.
                waiters = box.waiters
                while waiters:
                    waiter = waiters.popleft()
                    waiter.state.count(box.queue, -1)
                    if waiter.give(box, item, here):
                        return True
            if front:
                box.give_back(item)
            else:
                if len(items) == items.maxlen:
                    logger.warning("local buffer of a channel is full: dropping its oldest message")
                items.append(item)
            return self._serve_waiters(box, here) and not items
        finally:
            self.lock.release()

    def put_front(self, box: Mailbox, items: list[Item], here: asyncio.AbstractEventLoop) -> None:
        """Return ``items`` (oldest first) to the front of ``box``, serving waiters."""
        with self.lock:
            box.items.extendleft(reversed(items))
            self._serve_waiters(box, here)

    def _serve_waiters(self, box: Mailbox, here: asyncio.AbstractEventLoop | None) -> bool:
        items = box.items
        waiters = box.waiters
        served = False
        now = time.monotonic()
        while items and waiters:
            waiter = waiters.popleft()
            waiter.state.count(box.queue, -1)
            if waiter.future.done():  # cancelled; its withdraw finds it gone
                continue
            item = items.popleft()
            if item[0] <= now:
                waiters.appendleft(waiter)
                waiter.state.count(box.queue, 1)
                continue
            if waiter.give(box, item, here):
                served = True
            else:
                items.appendleft(item)
        return served

    def take_all(self, box: Mailbox, keep: int) -> list[Item]:
        """Remove and return the unexpired buffered items beyond the oldest ``keep``."""
        with self.lock:
            if box.waiters:
                return []
            now = time.monotonic()
            live = [item for item in box.items if item[0] > now]
            box.items.clear()
            box.items.extend(live[:keep])
            return live[keep:]

    def fail(self, state: LoopState, exc: BaseException) -> None:
        """Fail every waiter of ``state``'s loop with ``exc`` (the loop state closes)."""
        with self.lock:
            for box in self.mailboxes.values():
                mine = [w for w in box.waiters if w.state is state]
                for waiter in mine:
                    box.waiters.remove(waiter)
                    state.count(box.queue, -1)
                    if not waiter.future.done():
                        waiter.future.set_exception(exc)

    def clear(self) -> None:
        """Drop every buffered message (``flush``)."""
        with self.lock:
            for box in self.mailboxes.values():
                box.items.clear()

    def maybe_sweep(self) -> None:
        """Sweep when the sweep interval has passed (called on slow paths)."""
        now = time.monotonic()
        if now >= self.next_sweep:
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Drop expired buffered messages and idle mailboxes (bounded local memory)."""
        self.next_sweep = now + SWEEP_INTERVAL
        with self.lock:
            for name in list(self.mailboxes):
                box = self.mailboxes[name]
                while box.items and box.items[0][0] <= now:
                    box.items.popleft()
                if box.idle():
                    del self.mailboxes[name]
