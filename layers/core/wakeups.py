"""Waiting for a queue and waking its waiters: the machinery every backend's ``receive`` shares.

A backend's :meth:`~layers.core.backend.Backend.receive` claims payloads and, when it
finds none, waits for a wake-up (a send in this process, a notification from another)
until its timeout. Written by hand, that loop has one subtle rule: listen *before* the
claim that finds nothing, or a send landing between the claim and the wait is only
seen at the timeout. :func:`wait_then_claim` is that loop, written once; a backend
supplies the claim and a :class:`Signal`.

Two signals come with it:

- :class:`WaiterSignal` over :class:`Waiters`, for a backend whose store lives in this
  process and is used from several event loops at once (``async_to_sync`` runs each
  call in a new loop, often in another thread): the SQLite backend's in-process
  notifications. The memory backend uses :class:`Waiters` with a loop of its own
  (its waiter is registered in the same locked step as its look at the queue, and
  one timer per event loop enforces every wait's deadline). A send pops the queue's
  waiters and resolves them with :func:`wake`, each in its own loop, thread-safely.
- :class:`EventSignal` over one :class:`asyncio.Event`, for a backend whose wake-ups
  arrive in one event loop (a listener connection, a pub/sub subscription).

Two helpers serve the cancellation clauses of ``receive`` and ``restore``: a call
cancelled after its request left waits for the answer with :func:`outlast` and returns
it, and :func:`cancel_requested` tells the core's reader (or a backend's inner loop)
that such a call's task was asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

__all__ = [
    "EventSignal",
    "Signal",
    "Waiter",
    "WaiterSignal",
    "Waiters",
    "cancel_requested",
    "outlast",
    "wait_then_claim",
    "wake",
]

T = TypeVar("T")

#: A waiting call: its event loop and the future it awaits (resolved with None by
#: :func:`wake`, or with what a store hands over through :meth:`Waiters.take_first`).
Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _set_none(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


def wake(waiters: list[Waiter], current: asyncio.AbstractEventLoop | None = None) -> None:
    """Resolve each waiter's future in its own loop; waiters of closed loops are skipped.

    Thread-safe and never blocks; call it after releasing the store's lock.
    ``current`` is the running event loop when the caller knows it (an object made
    for one loop); else it is looked up (a system call on Linux, for the pid check).
    """
    if current is None:
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
    for loop, future in waiters:
        if loop is current:
            _set_none(future)
        else:
            # A closed loop raises RuntimeError; its waiter is gone with it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_none, future)


class Waiters:
    """The calls waiting on each queue of one store: the one owner of their bookkeeping.

    :meth:`add` and :meth:`discard` take ``lock``; :meth:`pop`, :meth:`pop_every` and
    :meth:`queues` expect the caller to hold it, so a store that passes its own lock
    pops a queue's waiters in the same step as the write that must wake them. A
    queue with no waiter left has no entry, so the map never outgrows what waits.
    """

    __slots__ = ("_by_queue", "lock")

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.lock = lock if lock is not None else threading.Lock()
        self._by_queue: dict[str, list[Waiter]] = {}

    def add(self, queue: str, loop: asyncio.AbstractEventLoop) -> Waiter:
        """Register a new waiter on ``queue`` for ``loop`` and return it."""
        with self.lock:
            return self.register(queue, loop)

    def register(self, queue: str, loop: asyncio.AbstractEventLoop) -> Waiter:
        """Under ``lock``: :meth:`add`, for a store that looked at ``queue`` in the same step."""
        waiter: Waiter = (loop, loop.create_future())
        waiting = self._by_queue.get(queue)
        if waiting is None:
            self._by_queue[queue] = [waiter]
        else:
            waiting.append(waiter)
        return waiter

    def discard(self, queue: str, waiter: Waiter) -> None:
        """Remove ``waiter`` if still registered (a wake-up already removed it). Idempotent."""
        with self.lock:
            self.unregister(queue, waiter)

    def unregister(self, queue: str, waiter: Waiter) -> None:
        """Under ``lock``: :meth:`discard`, for a store that holds the lock already."""
        waiting = self._by_queue.get(queue)
        if waiting is not None and waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                del self._by_queue[queue]

    def take_first(
        self, queue: str, loop: asyncio.AbstractEventLoop | None
    ) -> asyncio.Future[Any] | None:
        """Under ``lock``: unregister and return the first waiter's future, if it is ``loop``'s.

        For a store that hands a payload straight to a waiting call of the running
        loop: the future is still pending (the caller resolves it, in this loop, with
        what it hands over) and the other waiters of ``queue`` stay registered. None
        when the first waiter belongs to another loop or is already done (cancelled,
        not yet discarded): the caller then stores and wakes as usual.
        """
        waiting = self._by_queue.get(queue)
        if waiting is None:
            return None
        first_loop, future = waiting[0]
        if first_loop is not loop or future.done():
            return None
        if len(waiting) == 1:
            del self._by_queue[queue]
        else:
            del waiting[0]
        return future

    def pop(self, queue: str) -> list[Waiter]:
        """Under ``lock``: remove and return the waiters of ``queue`` (to :func:`wake`)."""
        return self._by_queue.pop(queue, [])

    def pop_every(self) -> list[Waiter]:
        """Under ``lock``: remove and return every waiter of every queue."""
        woken = [waiter for waiting in self._by_queue.values() for waiter in waiting]
        self._by_queue.clear()
        return woken

    def queues(self) -> list[str]:
        """Under ``lock``: the queues that have a waiter now."""
        return list(self._by_queue)

    def __bool__(self) -> bool:
        return bool(self._by_queue)


class Signal(Protocol):
    """What :func:`wait_then_claim` waits on: a wake-up source for one waiting call."""

    def arm(self) -> None:
        """Start listening anew: a wake-up from now on makes :meth:`wait` return True."""

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a wake-up since :meth:`arm`; whether one came.

        Returns at once if one came already. Either way, :meth:`arm` again before
        relying on the signal.
        """

    def disarm(self) -> None:
        """Stop listening and release what :meth:`arm` took. Idempotent."""


class WaiterSignal:
    """A :class:`Signal` over :class:`Waiters`: each :meth:`arm` registers a fresh waiter."""

    __slots__ = ("_expired", "_loop", "_queue", "_waiter", "_waiters")

    def __init__(self, waiters: Waiters, queue: str) -> None:
        self._waiters = waiters
        self._queue = queue
        self._loop = asyncio.get_running_loop()
        self._waiter: Waiter | None = None
        self._expired = False

    def arm(self) -> None:
        """Replace the previous waiter (woken or not) with a new one on the queue."""
        self.disarm()
        self._expired = False
        self._waiter = self._waiters.add(self._queue, self._loop)

    async def wait(self, timeout: float) -> bool:
        """Await the current waiter's future, with a plain timer for the timeout."""
        waiter = self._waiter
        if waiter is None:
            return False
        future = waiter[1]
        if not future.done():
            timer = self._loop.call_later(timeout, self._expire, future)
            try:
                await future
            finally:
                timer.cancel()
        return not self._expired

    def _expire(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            self._expired = True
            future.set_result(None)

    def disarm(self) -> None:
        """Unregister the current waiter, if any."""
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        future = waiter[1]
        if future.done() and not future.cancelled() and not self._expired:
            return  # woken: the sender popped it before resolving it
        self._waiters.discard(self._queue, waiter)


class EventSignal:
    """A :class:`Signal` over an :class:`asyncio.Event` that wake-ups set (one event loop)."""

    __slots__ = ("event",)

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    def arm(self) -> None:
        """Clear the event: only a wake-up from now on counts."""
        self.event.clear()

    async def wait(self, timeout: float) -> bool:
        """Wait for the event, up to ``timeout`` s; a wake-up it reports is consumed.

        The event is cleared when it is reported, as a woken :class:`WaiterSignal`
        registration is used up, so a wake-up the next claim answers does not stay
        set for whoever looks at the event later (a new one sets it again).
        """
        event = self.event
        if not event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                return False
        event.clear()
        return True

    def disarm(self) -> None:
        """Nothing to release: whoever made the event owns it."""


async def wait_then_claim(
    claim: Callable[[], Awaitable[list[T]]],
    signal: Signal,
    *,
    timeout: float,
    poll: float | None = None,
) -> list[T]:
    """Claim until something comes, waiting on ``signal`` between claims, for ``timeout`` s.

    ``signal`` is armed before the first claim and again before any claim that may be
    followed by a wait: a wake-up that lands after a claim's look at the store is
    never missed, the next round sees its payload. After a wake-up, one claim is made
    before re-arming, since it usually finds the payload (no new registration then). Returns
    the first non-empty claim, or ``[]`` once ``timeout`` has passed (``timeout <= 0``:
    one claim, no wait). ``poll`` caps each wait, for stores whose wake-ups may be
    lost (the claim then runs again). A backend whose claim is cheap may claim once
    before calling this, so that a call finding a payload at once pays nothing for
    listening.

    Cancellation: ``signal`` is disarmed on every exit. A cancelled wait holds nothing;
    a cancelled ``claim`` is ``claim``'s own contract (it must lose or keep what it
    took, never return it twice).
    """
    deadline = time.monotonic() + timeout
    woken = False
    signal.arm()
    try:
        while True:
            got = await claim()
            if got:
                return got
            if woken:
                # The wake-up that ended the last wait used up the registration, and
                # the claim after it (made unarmed: after a wake-up it usually finds
                # the payload) found nothing: listen again, then look again.
                signal.arm()
                got = await claim()
                if got:
                    return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            woken = await signal.wait(remaining if poll is None else min(remaining, poll))
            if not woken:
                if poll is None or deadline - time.monotonic() <= 0:
                    return []
                signal.arm()  # a poll: listen anew before the next claim
    finally:
        signal.disarm()


async def outlast(future: asyncio.Future[Any], timeout: float | None = None) -> bool:
    """Wait for ``future`` whatever cancels the calling task; True once it is done.

    For a call cancelled after its request left (a statement running, a command
    written, a file opening in a thread): the answer is on its way and must not be
    dropped. ``future`` must be one that ending the event loop does not cancel (a
    plain future, not a task). Waits at most ``timeout`` seconds (None: as long as it
    takes) and returns False if the future is still pending then. Never raises the
    future's exception; read it from the future. The caller's cancellation stays
    requested (:func:`cancel_requested`), so the caller ends cancelled, or returns
    what the answer brought as the backend contract's cancellation clauses say.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while not future.done():
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            return False
        with contextlib.suppress(asyncio.CancelledError, Exception):
            async with asyncio.timeout(remaining):
                await asyncio.shield(future)
    return True


def cancel_requested() -> bool:
    """Whether the running task was asked to stop (``asyncio.Task.cancelling``).

    A call that caught its cancellation to finish what it started (see
    :func:`outlast`) leaves it requested; its caller checks here before going on.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
