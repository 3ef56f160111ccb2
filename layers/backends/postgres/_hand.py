"""Handing a send to a claim of the same process that waits on the queue.

A claim that found a normal queue empty waits for a NOTIFY, then claims: a send to
that queue costs the sender one statement and the receiver a wake-up and a second
statement. When the waiting claim is in this process (this backend instance, so this
event loop), the send asks instead whether the queue holds any live row (``_sql``'s
``hand``). If it holds none, nothing is stored and the payload goes straight to the
waiting claim, as if that claim had taken it from the store: the queue's order is
kept (nothing was ahead of it) and so is at-most-once (it was never stored, and
exactly one claim gets it). If the queue holds rows, the payload is sent as usual.

The claim parks a :class:`Hand` on its watch's :class:`Wakeup` while it waits. A
wake-up (a NOTIFY, a reconnect, its own timer) resolves the hand with None unless a
send has taken it; a hand that a send took is resolved by that send alone, with the
payload or with None (the send stored it, or failed), so the claim never misses
either. A claim cancelled while a send holds its hand cancels the hand's future; the
send then puts the payload back at the head of the queue (``restore``), where it
would have been.
"""

from __future__ import annotations

import asyncio

__all__ = ["Hand", "HandSignal", "Wakeup"]


class Hand:
    """One waiting claim that a send of this instance may complete."""

    __slots__ = ("future", "taken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        #: Resolved with the handed payloads, or None: wake up and claim.
        self.future: asyncio.Future[list[bytes] | None] = loop.create_future()
        #: A send holds it: only that send resolves it now.
        self.taken = False

    def wake(self) -> None:
        """A wake-up or the wait's end: the claim goes on, unless a send holds it."""
        if not self.taken and not self.future.done():
            self.future.set_result(None)

    def take(self) -> bool:
        """Reserve it for one send; False when it is spoken for or its claim has gone."""
        if self.taken or self.future.done():
            return False
        self.taken = True
        return True

    def give(self, payloads: list[bytes] | None) -> bool:
        """The taking send's outcome; False when the claim was cancelled meanwhile."""
        if self.future.done():
            return False
        self.future.set_result(payloads)
        return True


class Wakeup(asyncio.Event):
    """A queue's wake-up event that also wakes the claim parked on it (see :class:`Hand`)."""

    def __init__(self) -> None:
        super().__init__()
        self.hand: Hand | None = None

    def set(self) -> None:
        """Set the event and wake the parked claim, if any."""
        super().set()
        hand = self.hand
        if hand is not None:
            hand.wake()


class HandSignal:
    """A :class:`~layers.core.wakeups.Signal` over a :class:`Wakeup` whose waits park a hand.

    A wait that a send completes returns True with the payloads in :attr:`handed`,
    which the claim returns instead of running its statement. Only one claim of an
    instance parks on a queue at a time; another one waits on the event alone.
    """

    __slots__ = ("event", "handed")

    def __init__(self, event: Wakeup) -> None:
        self.event = event
        self.handed: list[bytes] | None = None

    def arm(self) -> None:
        """Clear the event: only a wake-up from now on counts."""
        self.event.clear()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a wake-up or a handed send; whether one came.

        A wake-up it reports is consumed (the event is cleared), as with
        :class:`~layers.core.wakeups.EventSignal`. A handed send leaves the event as it
        is: a NOTIFY that came meanwhile still counts for the next claim. Waits past
        ``timeout`` only for a send that holds the hand (one statement).
        Cancellation: see the module docstring.
        """
        event = self.event
        if event.is_set():
            event.clear()
            return True
        loop = asyncio.get_running_loop()
        if event.hand is not None:
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                return False
            event.clear()
            return True
        hand = event.hand = Hand(loop)
        timer = loop.call_later(timeout, hand.wake)
        try:
            payloads = await hand.future
        finally:
            timer.cancel()
            if event.hand is hand:
                event.hand = None
        if payloads:
            self.handed = payloads
            return True
        if event.is_set() or hand.taken:
            event.clear()
            return True
        return False

    def disarm(self) -> None:
        """Nothing to release: a wait removes its hand on every exit."""

    def take_handed(self) -> list[bytes] | None:
        """The payloads a send handed to the last wait (once), else None."""
        handed, self.handed = self.handed, None
        return handed
