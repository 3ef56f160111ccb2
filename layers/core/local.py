"""The receive path of a layer: mailboxes, demand-driven readers, the envelope.

Consumers never touch the store. ``receive`` waits on a :class:`Mailbox`; the
mailboxes of a layer live in one :class:`Hub`, shared by every event loop and thread
the layer is used from, so a message taken from the store is receivable by the next
``receive`` of its channel from any loop (``async_to_sync`` makes a loop per call).

Each event loop has a :class:`LoopState`: its backend instance and one reader task per
queue, which pops from the backend *only while consumers of that loop wait* on the
queue. Its *demand* is the number of those waiters, at every instant: a waiter is
counted when it starts waiting and uncounted exactly once, when it is handed a
message or withdraws (served, cancelled, timed out or failed). The :class:`Hub` is
the one owner of that rule.

A cancelled ``receive`` never cancels a pop in flight. What a reader took for a
waiter that has gone is handed to the next waiter, else buffered; when nobody in
this loop waits on a normal channel any more, the reader gives what is buffered
back to the head of the store (:meth:`Backend.restore`), where any process can
receive it. With ``prefetch=N`` a reader takes up to N messages of a normal channel
per pop and keeps up to N buffered for this process, giving them back when it
closes or goes idle. A message handed to a consumer that is cancelled before it
runs is put back at the front of its mailbox, behind any given back that was handed
before it, with its own expiry.

The readers of one queue in different loops take turns (:class:`~layers.core.turns.Turns`):
a pop and the delivery of what it brought finish before another loop's pop of that
queue starts, so deliveries keep the store's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from layers.core.backend import Backend
from layers.core.envelope import pack, pack_local, unpack
from layers.core.errors import BackendError, LayerClosed
from layers.core.mailboxes import Hub, Item, Mailbox, Waiter
from layers.core.serializers import InProcessSerializer, Serializer
from layers.core.turns import Ticket
from layers.core.wakeups import cancel_requested

__all__ = ["LoopState"]

logger = logging.getLogger("layers")

#: The guard tasks still running (see ``LoopState``). An event loop holds its tasks
#: only weakly; each guard leaves this set when it ends or its state closes.
_GUARDS: set[asyncio.Task[None]] = set()

#: How long a reader waits in one backend call before re-checking demand.
POLL_TIMEOUT = 1.0
#: How long a driving consumer waits in one instant-backend call before re-checking.
DRIVE_TIMEOUT = 0.2
#: How long an idle reader waits for new demand before it exits.
READER_LINGER = 10.0
#: How many inbox payloads a reader takes per backend call.
INBOX_BATCH = 100
#: How many queues keep a ticket for inline receives (then the tickets are made afresh).
INLINE_TICKETS_KEPT = 1024
MAX_BACKOFF = 2.0
#: How long closing waits for a reader's pop in flight before cancelling it.
CLOSE_GRACE = POLL_TIMEOUT + 0.5


class LoopState:
    """What a layer holds for one event loop: a backend instance and its readers.

    Args:
        hub: the layer's mailboxes.
        backend: this loop's backend instance (opened on first use).
        loop: the event loop.
        serializer: decodes popped bodies (and encodes messages given back).
        expiry: the layer's message expiry, capping how long a message is buffered.
        prefetch: how many messages of a normal channel a reader may take per pop
            and keep buffered for this process (1: only what waiters ask for).
        on_cancel: called when ``asyncio.run`` cancels the loop's tasks.
    """

    def __init__(
        self,
        hub: Hub,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        *,
        serializer: Serializer,
        expiry: float,
        prefetch: int = 1,
        on_cancel: Callable[[LoopState], None],
    ) -> None:
        self.hub = hub
        self.backend = backend
        self.loop = loop
        self.serializer = serializer
        #: Wraps a body given back to the store, as the layer's sends do.
        self.pack = pack_local if isinstance(serializer, InProcessSerializer) else pack
        self.expiry = expiry
        self.prefetch = prefetch
        #: How many messages of a normal channel a reader keeps while nobody waits.
        self.hold = prefetch if prefetch > 1 else 0
        self.on_cancel = on_cancel
        self.inline_receive = type(backend).instant_receive
        self.can_restore = type(backend).restore is not Backend.restore
        self.opened = False
        self.open_lock = asyncio.Lock()
        self.closing = False
        self.demand: dict[str, int] = {}
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.idle_readers: dict[str, asyncio.Future[None]] = {}
        self.driving: set[str] = set()
        #: The ticket each queue's inline receives take their turns with.
        self.inline_tickets: dict[str, Ticket] = {}
        self.backoff = 0.0  # seconds the readers wait after a failed receive
        # asyncio.run() (and so async_to_sync) ends by cancelling every task and
        # waiting for them; a driver task that swallows that cancellation (a pool
        # worker busy connecting) would hang it. This guard is cancelled with the
        # others and closes the backend, which stops such tasks properly. It holds
        # this state weakly: a layer dropped unclosed is collected, and a finalizer
        # then ends the guard instead of leaving it to be destroyed pending. Nothing
        # that outlives the state may hold the guard once it has ended: its error's
        # traceback can reach this state's frames, and through them the loop.
        self.guard = loop.create_task(_guard(weakref.ref(self)), name="layers-loop-guard")
        _GUARDS.add(self.guard)
        weakref.finalize(self, _stop_guard, weakref.ref(self.guard))

    def count(self, queue: str, delta: int) -> None:
        """Change ``queue``'s demand by ``delta`` (only :class:`Hub` calls this)."""
        remaining = self.demand.get(queue, 0) + delta
        if remaining > 0:
            self.demand[queue] = remaining
        else:
            self.demand.pop(queue, None)

    async def ready(self) -> Backend:
        """Return the backend, opening it on first use."""
        if not self.opened:
            async with self.open_lock:
                if self.closing:
                    raise LayerClosed("the channel layer is closing")
                if not self.opened:
                    await self.backend.open()
                    self.opened = True
        return self.backend

    async def receive(self, channel: str, queue: str) -> dict[str, Any]:
        """Wait in ``channel``'s mailbox for its next message (store queue ``queue``).

        Safe to cancel. The layer tries :meth:`receive_inline` first where it applies;
        this is the way through the mailbox, for every backend.
        """
        hub = self.hub
        box = hub.mailbox(channel, queue)
        got = hub.wait(channel, box, self)
        if not isinstance(got, Waiter):
            return got
        future = got.future
        # On an instant backend this task pops for itself (nothing can interrupt a
        # pop there), saving the hop through a reader task; otherwise, or when
        # another task already reads this queue, a reader task serves it.
        driving = self.inline_receive and self.can_drive(queue)
        if not driving and queue not in self.driving:
            self._serve(queue)
        try:
            if driving:
                await self.drive(queue, future)
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.put_back(channel, queue, got.kept(future.result()))
            raise
        finally:
            if not future.done():
                future.cancel()  # a hand-off from another loop now comes back
            if future.cancelled():
                self.hub.withdraw(box, got)
            if driving:
                self.stop_driving(queue)

    async def receive_inline(self, channel: str, queue: str) -> dict[str, Any] | None:
        """On an instant backend, receive for ``channel`` in this task when nobody is ahead.

        The fast path of a lone consumer: no reader task, no mailbox waiter, no
        hand-off. Only while this loop may pop the queue at once (no reader or driver of
        its own, the layer-wide turn free) and nothing is buffered or awaited locally.
        The task counts as the queue's driver, so a consumer that comes meanwhile waits
        in the mailbox and is served by this task's dispatches, then by a reader. It
        holds the turn while it waits in the backend, in rounds of at most
        :data:`DRIVE_TIMEOUT`, and lets another loop's pop have the turn between rounds.
        Payloads for other reply channels of the inbox go to their mailboxes. Nothing is
        held while waiting, and an instant backend's receive returns what it took
        without suspending (or puts back a payload handed to it while it waited), so a
        cancellation loses nothing. None sends the caller the
        usual way (another loop wants the queue, or something waits in the mailbox).
        """
        if self.prefetch > 1 or not self.can_drive(queue):
            return None
        hub = self.hub
        turns = hub.turns
        receive = self.backend.receive
        ticket = self.inline_tickets.get(queue)
        if ticket is None:
            # One ticket per queue, used again: it never waits in a line, and it is
            # left before the next use (one task at a time drives a queue here).
            if len(self.inline_tickets) >= INLINE_TICKETS_KEPT:
                self.inline_tickets.clear()
            ticket = self.inline_tickets[queue] = Ticket(queue, self.loop)
        self.driving.add(queue)
        try:
            while not self.closing:
                if not turns.try_take(ticket):
                    return None
                try:
                    box = hub.mailboxes.get(channel)
                    if box is not None and not box.idle():
                        return None
                    deadline = 0.0
                    timeout = DRIVE_TIMEOUT
                    while not self.closing:
                        payloads = await receive(queue, timeout=timeout, limit=1)
                        if not payloads:
                            break  # the round is over: let another loop have the turn
                        try:
                            targets, expires, body = self.open_envelope(payloads[0])
                            if expires <= time.time():
                                continue  # expired in the store's last moment: the next one
                            if targets is None or (
                                len(targets) == 1 and queue + targets[0] == channel
                            ):
                                message: dict[str, Any] = self.serializer.loads(body)
                                return message
                            self.dispatch(queue, payloads)  # another reply channel's
                            box = hub.mailboxes.get(channel)
                            if box is not None and box.items:
                                return None  # one was this channel's: take it the usual way
                        except Exception:
                            logger.exception(
                                "dropping a message on %r that could not be decoded", queue
                            )
                        now = time.monotonic()
                        if not deadline:
                            deadline = now + DRIVE_TIMEOUT
                        timeout = deadline - now
                        if timeout <= 0:
                            break
                finally:
                    turns.leave(ticket)
        finally:
            self.stop_driving(queue)
        return None

    def accept(self, waiter: Waiter, box: Mailbox, item: Item) -> None:
        """Complete a hand-off from another loop (runs in this loop)."""
        if not waiter.future.done():
            waiter.future.set_result(item[1])
        else:
            self.hub.deliver(box, item, self.loop, front=True)

    def put_back(self, channel: str, queue: str, item: Item) -> None:
        """Return a message a cancelled consumer had been handed, in its place in line."""
        box = self.hub.mailbox(channel, queue)
        if not self.hub.deliver(box, item, self.loop, front=True) and not self.closing:
            self._serve(queue)  # its reader gives it back to the store if nobody wants it

    def _serve(self, queue: str) -> None:
        """Wake the idle reader of ``queue``, or start one."""
        idle = self.idle_readers.pop(queue, None)
        if idle is not None:
            if not idle.done():
                idle.set_result(None)
            return
        task = self.readers.get(queue)
        if task is None or task.done():
            self.readers[queue] = self.loop.create_task(
                self._read(queue), name=f"layers-reader:{queue}"
            )

    def can_drive(self, queue: str) -> bool:
        """True when no task reads ``queue`` now (an idle, lingering reader does not)."""
        if queue in self.driving:
            return False
        task = self.readers.get(queue)
        return task is None or task.done() or queue in self.idle_readers

    async def drive(self, queue: str, future: asyncio.Future[Any]) -> None:
        """Pop ``queue`` in the calling task until ``future`` is resolved.

        Only for instant backends, whose receive never suspends between taking
        payloads and returning them, so cancelling the caller cannot lose one.
        Waiters that arrive meanwhile are served by this loop's dispatches.
        """
        self.driving.add(queue)
        backend = await self.ready()
        while not future.done():
            turn = await self._take_turn(queue)
            try:
                if future.done():
                    break
                limit = self._limit(queue, self.demand.get(queue, 1))
                payloads = await backend.receive(queue, timeout=DRIVE_TIMEOUT, limit=limit)
                if payloads:
                    self.dispatch(queue, payloads)
            finally:
                self.hub.turns.leave(turn)
            if payloads and not future.done():
                # What it popped went to earlier waiters: let them run before popping
                # again (an instant receive never suspends by itself).
                await asyncio.sleep(0)

    async def _take_turn(self, queue: str) -> Ticket:
        """Wait until this loop alone pops ``queue`` among the layer's loops (``turns``).

        The caller gives the ticket back with ``hub.turns.leave`` when done.
        """
        ticket = self.hub.turns.enter(queue, self.loop)
        if ticket.future is not None:
            await self.hub.turns.wait(ticket)
        return ticket

    def stop_driving(self, queue: str) -> None:
        """The driving task left: hand any remaining waiters to a reader."""
        self.driving.discard(queue)
        if self.demand.get(queue, 0) > 0 and not self.closing:
            self._serve(queue)

    def _limit(self, queue: str, want: int) -> int:
        if queue.endswith("!"):
            return INBOX_BATCH
        if self.prefetch > 1:
            box = self.hub.mailboxes.get(queue)
            held = len(box.items) if box is not None else 0
            return max(1, want, self.prefetch - held)
        return max(1, want)

    async def _linger(self, queue: str) -> bool:
        """Wait up to READER_LINGER for demand on ``queue``; True if it came."""
        future: asyncio.Future[None] = self.loop.create_future()
        self.idle_readers[queue] = future
        if self.closing:  # aclose() already woke the idle readers it knew
            future.set_result(None)
        try:
            async with asyncio.timeout(READER_LINGER):
                await future
        except TimeoutError:
            pass
        finally:
            if self.idle_readers.get(queue) is future:
                del self.idle_readers[queue]
        return self.demand.get(queue, 0) > 0 and not self.closing

    async def _read(self, queue: str) -> None:
        """Pop from ``queue`` while a consumer of this loop waits on it; linger, exit."""
        demand = self.demand
        while True:
            while not self.closing:
                if demand.get(queue, 0) <= 0:
                    # A consumer just served usually asks again at once: let it run
                    # first, which costs one loop turn instead of arming a linger timer.
                    await asyncio.sleep(0)
                    if demand.get(queue, 0) <= 0:
                        await self.give_back(queue, keep=self.hold)
                        _honour_cancellation()
                        if demand.get(queue, 0) <= 0 and not await self._linger(queue):
                            break
                await self._read_once(queue)
            # Idle for a whole linger, or closing: hold nothing for this loop any more.
            await self.give_back(queue, keep=0)
            _honour_cancellation()
            if self.closing or demand.get(queue, 0) <= 0:
                break
        # No await between the last demand check and this removal, so a consumer
        # that arrives meanwhile finds either this task alive or no task at all.
        if self.readers.get(queue) is asyncio.current_task():
            del self.readers[queue]

    async def give_back(self, queue: str, *, keep: int) -> None:
        """Return what is buffered for normal channel ``queue`` beyond ``keep`` to the store.

        Called by the queue's reader when no consumer of this loop waits, so the
        messages go back to the head of the store, in order, receivable by any
        process. A backend without :meth:`Backend.restore` keeps them buffered here.
        """
        if not self.can_restore or queue.endswith("!"):
            return
        box = self.hub.mailboxes.get(queue)
        if box is None or len(box.items) <= keep:
            return
        # Another loop's pop must not overtake what goes back to the head of the store.
        turn = await self._take_turn(queue)
        try:
            await self._give_back(queue, box, keep)
        finally:
            self.hub.turns.leave(turn)

    async def _give_back(self, queue: str, box: Mailbox, keep: int) -> None:
        items = self.hub.take_all(box, keep)
        if not items:
            return
        now = time.monotonic()
        wall = time.time()
        dumps = self.serializer.dumps
        payloads = [
            (self.pack(None, dumps(item[1]), wall + (item[0] - now)), item[0] - now)
            for item in items
        ]
        backend: Backend | None = None
        try:
            backend = await self.ready()
            restored = await backend.restore(queue, payloads)
        except asyncio.CancelledError:
            if backend is None:  # cancelled while connecting: nothing reached the store
                self.hub.put_front(box, items, self.loop)
            else:
                # The backend cannot tell whether the store took them (see
                # Backend.restore): dropped rather than risked twice.
                logger.warning(
                    "%d message(s) given back to %r may be lost: cancelled mid-restore",
                    len(items),
                    queue,
                )
            raise
        except Exception:
            logger.exception("could not give %d message(s) back to %r", len(items), queue)
            restored = False
        # Not stored (a failure, or a restore cancelled before the store took them):
        # buffered here again; the loop's close gives them back once more.
        if not restored:
            self.hub.put_front(box, items, self.loop)

    async def _read_once(self, queue: str) -> None:
        try:
            turn = await self._take_turn(queue)
            try:
                want = self.demand.get(queue, 0)  # the last loop's pop may have served it
                if want <= 0 or self.closing:
                    return
                # Opened only now: a loop whose consumers another loop's pop served never
                # connects, so it cannot end with a connection half made.
                backend = await self.ready()
                limit = self._limit(queue, want)
                payloads = await backend.receive(queue, timeout=POLL_TIMEOUT, limit=limit)
                if payloads:
                    # Delivered before the next loop's pop of this queue can be.
                    self.dispatch(queue, payloads)
            finally:
                self.hub.turns.leave(turn)
            _honour_cancellation()
        except LayerClosed:
            return
        except Exception as exc:
            backoff = self.backoff = min(MAX_BACKOFF, self.backoff * 2 or 0.05)
            if isinstance(exc, BackendError | OSError):
                logger.warning("receive from %r failed (%s); retry in %.2fs", queue, exc, backoff)
            else:
                logger.exception("backend receive from %r raised; retry in %.2fs", queue, backoff)
            await asyncio.sleep(backoff)
            return
        self.backoff = 0.0
        if payloads and self.inline_receive:
            await asyncio.sleep(0)  # an instant receive never suspends by itself

    def open_envelope(self, payload: bytes) -> tuple[list[str] | None, float, bytes]:
        """A popped payload's local targets, sender's deadline (wall clock) and body."""
        return unpack(payload)

    def dispatch(self, queue: str, payloads: list[bytes]) -> None:
        """Decode payloads popped from ``queue`` and deliver them to mailboxes."""
        hub = self.hub
        now = time.monotonic()
        wall = time.time()
        expiry = self.expiry
        loads = self.serializer.loads
        loop = self.loop
        for payload in payloads:
            try:
                targets, deadline, body = self.open_envelope(payload)
                # Buffered locally for what is left of its life, never longer.
                expires_at = now + min(expiry, deadline - wall)
                if expires_at <= now:
                    continue
                if targets is None:
                    hub.deliver(hub.mailbox(queue, queue), (expires_at, loads(body)), loop)
                else:
                    for local in targets:
                        box = hub.mailbox(queue + local, queue)
                        hub.deliver(box, (expires_at, loads(body)), loop)
            except Exception:
                logger.exception("dropping a message on %r that could not be decoded", queue)
        if now >= hub.next_sweep:
            hub.sweep(now)

    async def aclose(self) -> None:
        """Fail this loop's waiters with LayerClosed, stop its readers, close the backend.

        A reader with a pop in flight finishes it (bounded by :data:`CLOSE_GRACE`)
        and gives what it holds for normal channels back to the store; what it
        holds for reply channels stays in the hub for the layer's other loops.
        """
        self.closing = True
        if self.guard is not asyncio.current_task():
            self.guard.cancel()
        _GUARDS.discard(self.guard)
        for idle in self.idle_readers.values():
            if not idle.done():
                idle.set_result(None)
        self.hub.fail(self, LayerClosed("the channel layer was closed"))
        readers = [task for task in self.readers.values() if task is not asyncio.current_task()]
        if readers:
            pending: set[asyncio.Task[None]] = set(readers)
            if not self.inline_receive:
                _, pending = await asyncio.wait(readers, timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        self.readers.clear()
        self.demand.clear()
        # What a cancelled reader or a driving consumer (an instant backend's) popped
        # for normal channels and nobody took goes back to the store now, before the
        # backend closes (a reader that ended by itself already gave its share back).
        if self.can_restore:
            boxes = list(self.hub.mailboxes.items())
            for queue in [name for name, box in boxes if box.items and "!" not in name]:
                await self.give_back(queue, keep=0)
        async with self.open_lock:
            await self.backend.aclose()
            self.opened = False


def _honour_cancellation() -> None:
    """Raise ``CancelledError`` if this task was cancelled while it popped.

    A backend cancelled after it took payloads from the store returns them instead of
    losing them (see :meth:`Backend.receive`); the reader delivers them to the
    mailboxes first, where the loop's close gives normal channels' back to the store
    and keeps reply channels' for the layer's other loops, then stops as asked.
    """
    if cancel_requested():
        raise asyncio.CancelledError


async def _guard(ref: weakref.ref[LoopState]) -> None:
    """Close the state ``ref`` names when its loop's tasks are cancelled.

    Ends quietly when the state was collected first (its layer dropped unclosed).
    """
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        state = ref()
        if state is None:
            return
        try:
            state.on_cancel(state)
            if not state.closing:
                await state.aclose()
        finally:
            # The CancelledError raised below keeps this frame in its traceback, and
            # the task (which the state holds) keeps the error: without this, the state
            # would wait for a cycle collection instead of going when it is forgotten.
            del state
        raise
    finally:
        task = asyncio.current_task()
        if task is not None:
            _GUARDS.discard(task)


def _stop_guard(guard_ref: weakref.ref[asyncio.Task[None]]) -> None:
    """End a collected state's guard, from whichever thread collected the state."""
    guard = guard_ref()
    if guard is not None and not guard.done():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to end
            guard.get_loop().call_soon_threadsafe(guard.cancel)
