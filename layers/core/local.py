"""Per-event-loop machinery of a layer: mailboxes, demand-driven readers, the envelope.

Consumers never touch the store. ``receive`` waits on a local :class:`Mailbox`; one
reader task per queue and event loop pops from the backend *only while a consumer
waits* on that queue (its *demand*), and hands each message to the first waiting
consumer or buffers it (bounded by the channel's capacity, drop-oldest, expiring).
Demand is released the moment a waiter is handed a message, so a reader never pops
on behalf of a consumer that is already served. An idle reader lingers a while,
waiting for demand, so a busy channel does not pay for a task per message.

A cancelled ``receive`` never cancels a pop in flight, and a message handed to a
consumer that is cancelled before it runs is put back at the front of its mailbox,
so cancellation loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from layers.core.backend import Backend, GroupPayload
from layers.core.errors import BackendError, LayerClosed

if TYPE_CHECKING:
    from layers.core.layer import ChannelLayer

__all__ = ["LoopState", "Mailbox", "group_payload", "pack", "unpack"]

logger = logging.getLogger("layers")

_PLAIN = b"\x01"
_TARGETED = b"\x02"
_DEADLINE = struct.Struct("!d")
_BODY = 1 + _DEADLINE.size
#: How long a reader waits in one backend call before re-checking demand.
POLL_TIMEOUT = 1.0
#: How long a driving consumer waits in one instant-backend call before re-checking.
DRIVE_TIMEOUT = 0.2
#: How long an idle reader waits for new demand before it exits.
READER_LINGER = 10.0
#: How many inbox payloads a reader takes per backend call.
INBOX_BATCH = 100
SWEEP_INTERVAL = 5.0
MAX_BACKOFF = 2.0


def pack(targets: list[str] | None, body: bytes, deadline: float) -> bytes:
    r"""Wrap a serialized body with its local targets and its expiry deadline.

    ``deadline`` is the sender's wall-clock time (``time.time()``) at which the
    message expires. It never orders anything and the store enforces expiry with its
    own clock; the receiver uses it only to cap how long a popped message may wait in
    a local buffer, so buffering never makes a message outlive its expiry.

    Format: a kind byte, the deadline as a big-endian double, then ``body`` for a
    normal channel (kind 1), or the comma-joined local names, a newline and ``body``
    for reply channels (kind 2; local names never hold ``,`` or a newline).
    """
    header = _DEADLINE.pack(deadline)
    if targets is None:
        return b"".join((_PLAIN, header, body))
    return b"".join((_TARGETED, header, ",".join(targets).encode("ascii"), b"\n", body))


def group_payload(body: bytes, deadline: float, expiry: float, capacity: int) -> GroupPayload:
    """The envelopes of one ``group_send``, as :class:`~layers.GroupPayload` describes them.

    Equal to :func:`pack` for every receiving queue: ``plain`` is ``pack(None, ...)``
    and an inbox's payload is ``pack(its local names, ...)``.
    """
    header = _DEADLINE.pack(deadline)
    return GroupPayload(
        plain=b"".join((_PLAIN, header, body)),
        targeted_head=_TARGETED + header,
        body=body,
        expiry=expiry,
        capacity=capacity,
    )


def unpack(payload: bytes) -> tuple[list[str] | None, float, bytes]:
    """Inverse of :func:`pack`: ``(targets, deadline, body)``; ValueError if unknown."""
    kind = payload[:1]
    (deadline,) = _DEADLINE.unpack_from(payload, 1)
    if kind == _PLAIN:
        return None, deadline, payload[_BODY:]
    if kind == _TARGETED:
        end = payload.index(b"\n", _BODY)
        return payload[_BODY:end].decode("ascii").split(","), deadline, payload[end + 1 :]
    raise ValueError(f"unknown envelope format {kind!r}")


class Mailbox:
    """Buffered messages and waiting consumers of one channel in one event loop."""

    __slots__ = ("checked", "demand", "items", "queue", "waiters")

    def __init__(self, queue: str, bound: int, demand: dict[str, int]) -> None:
        self.queue = queue
        #: Set once ``receive`` has validated this channel's name and ownership, so
        #: later receives on it skip those checks (a mailbox made by a dispatch is not).
        self.checked = False
        self.items: deque[tuple[float, dict[str, Any]]] = deque(maxlen=bound)
        self.waiters: deque[asyncio.Future[dict[str, Any]]] = deque()
        self.demand = demand

    def take(self, now: float) -> dict[str, Any] | None:
        """Pop the oldest unexpired buffered message, dropping expired ones."""
        items = self.items
        while items:
            expires_at, message = items.popleft()
            if expires_at > now:
                return message
        return None

    def release(self) -> None:
        """One waiter of this mailbox's queue is gone (served, cancelled or failed)."""
        remaining = self.demand[self.queue] - 1
        if remaining:
            self.demand[self.queue] = remaining
        else:
            del self.demand[self.queue]

    def hand_to_waiter(self, message: dict[str, Any]) -> bool:
        """Give ``message`` to the oldest live waiter; False when none waits."""
        waiters = self.waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(message)
                self.release()
                return True
        return False

    def deliver(self, message: dict[str, Any], expires_at: float) -> None:
        """Hand ``message`` to a waiter, else buffer it (dropping the oldest when full)."""
        if not self.hand_to_waiter(message):
            if len(self.items) == self.items.maxlen:
                logger.warning("local buffer of a channel is full: dropping its oldest message")
            self.items.append((expires_at, message))

    def put_back(self, message: dict[str, Any], expires_at: float) -> None:
        """Return a message a cancelled consumer had been handed, keeping it first."""
        if not self.hand_to_waiter(message):
            self.items.appendleft((expires_at, message))

    def idle(self) -> bool:
        """True when nothing is buffered and nobody waits."""
        return not self.items and not self.waiters


class LoopState:
    """Everything a layer holds for one event loop: a backend, readers, mailboxes."""

    def __init__(self, layer: ChannelLayer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.backend: Backend = layer.backend_class(**layer._backend_options)
        self.inline_receive = layer.backend_class.instant_receive
        self.opened = False
        self.open_lock = asyncio.Lock()
        self.closing = False
        self.mailboxes: dict[str, Mailbox] = {}
        self.demand: dict[str, int] = {}
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.idle_readers: dict[str, asyncio.Future[None]] = {}
        self.driving: set[str] = set()
        self.backoff = 0.0  # seconds the readers wait after a failed receive
        self.next_sweep = time.monotonic() + SWEEP_INTERVAL
        # asyncio.run() (and so async_to_sync) ends by cancelling every task and
        # waiting for them; a driver task that swallows that cancellation (a pool
        # worker busy connecting) would hang it. This guard is cancelled with the
        # others and closes the backend, which stops such tasks properly.
        self.guard = loop.create_task(self._close_on_cancel(), name="layers-loop-guard")

    async def _close_on_cancel(self) -> None:
        try:
            await self.loop.create_future()
        except asyncio.CancelledError:
            self.layer._forget(self)
            if not self.closing:
                await self.aclose()
            raise

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

    def mailbox(self, channel: str, queue: str) -> Mailbox:
        """Return the mailbox of ``channel`` (whose store queue is ``queue``)."""
        box = self.mailboxes.get(channel)
        if box is None:
            box = Mailbox(queue, self.layer.get_capacity(channel), self.demand)
            self.mailboxes[channel] = box
        return box

    def want(self, queue: str, *, start_reader: bool = True) -> None:
        """Register one more waiter on ``queue``; make sure something reads it."""
        demand = self.demand
        demand[queue] = demand.get(queue, 0) + 1
        if start_reader and queue not in self.driving:
            self._serve(queue)

    def maybe_sweep(self) -> None:
        """Sweep when the sweep interval has passed (called on slow paths)."""
        now = time.monotonic()
        if now >= self.next_sweep:
            self.sweep(now)

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
        inbox = queue.endswith("!")
        while not future.done():
            limit = INBOX_BATCH if inbox else max(1, self.demand.get(queue, 1))
            payloads = await backend.receive(queue, timeout=DRIVE_TIMEOUT, limit=limit)
            if payloads:
                self.dispatch(queue, payloads)

    def stop_driving(self, queue: str) -> None:
        """The driving task left: hand any remaining waiters to a reader."""
        self.driving.discard(queue)
        if self.demand.get(queue, 0) > 0 and not self.closing:
            self._serve(queue)

    async def _linger(self, queue: str) -> bool:
        """Wait up to READER_LINGER for demand on ``queue``; True if it came."""
        future: asyncio.Future[None] = self.loop.create_future()
        self.idle_readers[queue] = future
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
        """Pop from ``queue`` while a consumer waits on it; linger, then exit."""
        demand = self.demand
        while not self.closing:
            if demand.get(queue, 0) <= 0:
                # A consumer just served usually asks again at once: let it run first,
                # which costs one loop turn instead of arming a linger timer.
                await asyncio.sleep(0)
                if demand.get(queue, 0) <= 0 and not await self._linger(queue):
                    break
            await self._read_once(queue, demand.get(queue, 0))
        # No await between the last demand check and this removal, so a consumer
        # that arrives meanwhile finds either this task alive or no task at all.
        if self.readers.get(queue) is asyncio.current_task():
            del self.readers[queue]

    async def _read_once(self, queue: str, want: int) -> None:
        limit = INBOX_BATCH if queue.endswith("!") else max(1, want)
        try:
            backend = await self.ready()
            payloads = await backend.receive(queue, timeout=POLL_TIMEOUT, limit=limit)
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
        if payloads:
            self.dispatch(queue, payloads)

    def dispatch(self, queue: str, payloads: list[bytes]) -> None:
        """Decode payloads popped from ``queue`` and deliver them to mailboxes."""
        now = time.monotonic()
        wall = time.time()
        expiry = self.layer.expiry
        loads = self.layer._serializer.loads
        mailboxes = self.mailboxes
        for payload in payloads:
            try:
                targets, deadline, body = unpack(payload)
                # Buffered locally for what is left of its life, never longer.
                expires_at = now + min(expiry, deadline - wall)
                if expires_at <= now:
                    continue
                if targets is None:
                    self.mailbox(queue, queue).deliver(loads(body), expires_at)
                else:
                    for local in targets:
                        channel = queue + local
                        box = mailboxes.get(channel) or self.mailbox(channel, queue)
                        box.deliver(loads(body), expires_at)
            except Exception:
                logger.exception("dropping a message on %r that could not be decoded", queue)
        if now >= self.next_sweep:
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Drop expired buffered messages and idle mailboxes (bounded local memory)."""
        self.next_sweep = now + SWEEP_INTERVAL
        for name in list(self.mailboxes):
            box = self.mailboxes[name]
            while box.items and box.items[0][0] <= now:
                box.items.popleft()
            if box.idle():
                del self.mailboxes[name]

    async def aclose(self) -> None:
        """Stop readers, fail waiters with LayerClosed, close the backend."""
        self.closing = True
        if self.guard is not asyncio.current_task():
            self.guard.cancel()
        for idle in self.idle_readers.values():
            if not idle.done():
                idle.set_result(None)
        readers = list(self.readers.values())
        for task in readers:
            task.cancel()
        for box in self.mailboxes.values():
            while box.waiters:
                future = box.waiters.popleft()
                if not future.done():
                    future.set_exception(LayerClosed("the channel layer was closed"))
        if readers:
            await asyncio.gather(*readers, return_exceptions=True)
        self.readers.clear()
        self.mailboxes.clear()
        self.demand.clear()
        async with self.open_lock:
            await self.backend.aclose()
            self.opened = False
