"""Handing a send to a claim of the same process that waits on the queue.

A claim that found a normal queue empty waits for a NOTIFY, then claims: a send to
that queue costs the sender one statement and the receiver a wake-up and a second
statement. When the claim is in this process (this backend instance, so this event
loop), the send asks instead whether the queue holds any live row (``_sql``'s
``hand``). If it holds none, nothing is stored and the payload goes straight to the
claim, as if that claim had taken it from the store: the queue's order is kept
(nothing was ahead of it) and so is at-most-once (it was never stored, and exactly
one claim gets it). If the queue holds rows, the payload is sent as usual.

The hand-off goes through a :class:`Hand` on the queue's :class:`Wakeup`:

* a claim about to wait parks a hand there (it *owns* it);
* a send finds it and *takes* it; from then on only that send resolves it, with the
  payload or with None (the send stored it, or failed): a wake-up meanwhile leaves the
  event set for later and does not end the wait, and the wait's timer does not either.
  After None the claim waits on for the event, as if there had been no hand: the
  stored row's NOTIFY wakes it;
* a send may also put out a hand of its own, taken and not owned, when a claim of this
  instance drained the queue moments ago (:data:`HAND_WINDOW`): the consumer is most
  likely on its way back. A claim that comes to wait while the send runs *adopts* it.
  If none has when the statement returns, the send stores the payload as usual: a
  payload is never held for a claim that may not come.

A claim cancelled while a send holds its hand cancels the hand's future, and the send
then stores the payload as usual: a legal order, since the send had not returned. A
claim cancelled after the send gave it the payload (before it ran again) returns it
all the same, as a claim cancelled after its statement finished returns the rows it
took, the cancellation staying requested (see :meth:`Backend.receive
<layers.core.backend.Backend.receive>`). So a send returns as soon as it has given its
payload, and the next send finds the claim on its way back: it puts out a hand of its
own, which that claim adopts.
A ``restore`` sets the queue's event, so a claim that comes to wait claims the restored
rows first instead of adopting a hand whose look at the queue came before them.
"""

from __future__ import annotations

import asyncio

from layers.core.wakeups import EventSignal

__all__ = ["CATCH_UP_PAUSE", "CATCH_UP_WAIT", "HAND_WINDOW", "Hand", "HandSignal", "Wakeup"]

#: How long after a claim of this instance drained a queue a send to it still expects
#: that claim back (a consumer that handles one message, then receives again); also
#: the longest a send waits for the next claim of this instance to end.
HAND_WINDOW = 0.002
#: The longest a send waits for this instance's consumer, claiming back to back, to
#: catch up with a queue it is behind (see ``_backend``).
CATCH_UP_WAIT = 0.02
#: How long sends to a queue store at once after such a wait ended in vain.
CATCH_UP_PAUSE = 1.0


class Hand:
    """One claim of this instance that a send may complete (see the module docstring)."""

    __slots__ = ("future", "owned", "taken")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, owned: bool) -> None:
        #: Resolved with the handed payloads, or None: claim from the table.
        self.future: asyncio.Future[list[bytes] | None] = loop.create_future()
        #: A claim waits on it.
        self.owned = owned
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

    def given(self) -> bool:
        """Whether a send gave its claim payloads (that claim then comes back for more)."""
        future = self.future
        return future.done() and not future.cancelled() and future.result() is not None

    def give(self, payloads: list[bytes] | None) -> bool:
        """The taking send's outcome; False when no claim is there to get it.

        True means the payloads are the claim's from now on, cancelled or not.
        """
        if self.future.done():
            return False
        if not self.owned:
            self.future.set_result(None)  # spent: nobody adopts it any more
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

    def live_hand(self) -> tuple[Hand | None, bool]:
        """The hand out, unless it is spent; and whether a spent one was given payloads.

        A claim given payloads a moment ago is on its way back for more.
        """
        hand = self.hand
        if hand is not None and hand.future.done():
            return None, hand.given()
        return hand, False

    def release(self, hand: Hand) -> None:
        """Remove ``hand`` if it is still the one out."""
        if self.hand is hand:
            self.hand = None


class HandSignal(EventSignal):
    """An :class:`~layers.core.wakeups.EventSignal` over a :class:`Wakeup` whose waits hold a hand.

    A wait that a send completes returns True with the payloads in :attr:`handed`,
    which the claim returns instead of running its statement. Only one claim of an
    instance holds a queue's hand at a time; another one waits on the event alone.
    """

    __slots__ = ("handed",)

    event: Wakeup

    def __init__(self, event: Wakeup) -> None:
        super().__init__(event)
        self.handed: list[bytes] | None = None

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a wake-up or a handed send; whether one came.

        A wake-up it reports is consumed (the event is cleared), as with
        :class:`~layers.core.wakeups.EventSignal`. A handed send leaves the event as it
        is: a NOTIFY that came meanwhile still counts for the next claim. Waits past
        ``timeout`` only for a send that holds the hand (one statement).
        Cancellation: see the module docstring.
        """
        event = self.event
        hand = event.hand
        if event.is_set() or (hand is not None and (hand.owned or hand.future.done())):
            # Woken already, or another claim of this instance holds the hand.
            return await super().wait(timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        if hand is None:
            hand = event.hand = Hand(loop, owned=True)
            timer: asyncio.TimerHandle | None = loop.call_later(timeout, hand.wake)
        else:
            hand.owned = True  # a send's, on its way: adopt it; that send resolves it
            timer = None
        try:
            payloads = await hand.future
        except asyncio.CancelledError:
            if not hand.given():
                raise
            # Cancelled after a send gave the payloads, and returned: they are this
            # claim's, returned as a finished claim's rows are (the cancellation stays
            # requested, for the caller to honour once it has them).
            payloads = hand.future.result()
        finally:
            if timer is not None:
                timer.cancel()
            event.release(hand)
        if payloads:
            # From here to the claim's return nothing suspends: the payloads are out.
            self.handed = payloads
            return True
        if hand.taken and not event.is_set():
            # The send stored its payload (its NOTIFY is on the way: claiming before it
            # comes would leave it to wake the next receive for nothing) or failed.
            return await super().wait(max(timeout - (loop.time() - started), 0.0))
        return event.is_set() and await super().wait(0.0)

    def take_handed(self) -> list[bytes] | None:
        """The payloads a send handed to the last wait (once), else None."""
        handed, self.handed = self.handed, None
        return handed
