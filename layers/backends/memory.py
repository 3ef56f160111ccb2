"""In-process memory backend: one process, any number of event loops and threads.

Features
    FIFO deques per queue with monotonic-clock expiry; atomic capacity checks; groups
    with expiring membership; wake-ups across event loops and threads (so the layer
    works through ``async_to_sync``); a send hands its payload straight to a receive
    waiting in its own event loop. Cost per call is proportional to what the call
    touches, never to the total number of channels or groups: stale queues and groups
    are swept from the front of a last-written order, a bounded amount per call.

Connection URL
    ``memory://`` gives the layer a private store. ``memory://NAME`` uses the store
    called NAME, shared by every memory layer of this process made with the same name
    (two such layers behave like two processes of one deployment: each has its own
    reply channels, both see the same normal channels and groups). Query parameters
    become layer options: ``memory://?expiry=10``.

Options
    ``store``: the name of a shared store (as in ``memory://NAME``); default: private.
    Named stores live as long as the process; ``flush()`` empties them. The layer
    options (``expiry``, ``capacity``, ``channel_capacity``, ``group_expiry``...) all
    apply.

Capabilities
    ``groups``, ``flush``. Not cross-process: each layer instance has its own store.

Use as a Django Channels ``BACKEND``::

    CHANNEL_LAYERS = {"default": {"BACKEND": "layers.backends.memory.MemoryChannelLayer"}}
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from layers.core.backend import (
    Backend,
    BackendStatistics,
    Capability,
    Put,
    QueueStatistics,
)
from layers.core.errors import ConfigurationError
from layers.core.layer import ChannelLayer
from layers.core.wakeups import Waiter, Waiters, wake

__all__ = ["MemoryBackend", "MemoryChannelLayer", "MemoryStore", "named_store"]

logger = logging.getLogger("layers")

_WORKER_WARNING = (
    "the memory backend keeps messages inside this process: this worker will only see "
    "messages sent from within itself, never from other processes (web servers, other "
    "workers). Use sqlite://, redis:// or postgresql:// to feed workers."
)


def _warn_in_a_worker() -> None:
    """Say so when Channels' ``runworker`` runs on the memory backend (it would idle)."""
    if len(sys.argv) > 1 and sys.argv[1] == "runworker":
        logger.warning(_WORKER_WARNING)


#: How many fully expired queues and groups each write removes, at most: more than
#: one, so expired entries go at least as fast as writes make new ones.
_SWEEP_PER_WRITE = 2
#: Writes between two sweeps; each sweep then removes up to this many times
#: _SWEEP_PER_WRITE (the same rate, for one look at the front per batch of writes).
_SWEEP_EVERY = 32
#: How often the idle sweeper visits stores that hold something (seconds).
_IDLE_SWEEP_INTERVAL = 1.0

#: What a receive's deadline resolves its waiter with (a wake-up resolves it with None).
_EXPIRED = object()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(_EXPIRED)


class _Deadlines:
    """The deadlines of one event loop's waiting receives, enforced by one timer.

    A timer per wait (``call_later``, then ``cancel``) cost a tenth of a request/reply
    round trip; here a wait costs a dict entry, and the one timer fires at the
    earliest deadline (the waits of the core all have the same timeout, so a new
    deadline is rarely earlier and rarely re-arms it).
    """

    __slots__ = ("_loop", "_timer", "_when", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0
        self.waiting: dict[asyncio.Future[Any], float] = {}

    def add(self, future: asyncio.Future[Any], deadline: float) -> None:
        """Resolve ``future`` with the expired marker at ``deadline`` (monotonic s)."""
        self.waiting[future] = deadline
        if self._timer is None or deadline < self._when:
            self._arm(deadline)

    def discard(self, future: asyncio.Future[Any]) -> None:
        """Forget ``future``'s deadline (its wait ended). Idempotent."""
        self.waiting.pop(future, None)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._when = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.monotonic()
        waiting = self.waiting
        for future, deadline in list(waiting.items()):
            if deadline <= now:
                del waiting[future]
                _expire(future)
        if waiting:
            self._arm(min(waiting.values()))

    def close(self) -> None:
        """Stop the timer and end every wait now, as if its deadline had come."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self.waiting = self.waiting, {}
        for future in waiting:
            _expire(future)


class MemoryStore:
    """The shared state of one memory layer, used by its per-loop backends.

    Every method runs under one ``threading.Lock`` and never awaits, so it is atomic
    across tasks, event loops and threads.

    A payload handed by a send to a waiting receive (see :meth:`MemoryBackend.send`)
    is in a one-item list, its *box*, which the send puts in that receive's future and
    in ``in_hand`` under its queue, so the store still accounts for it until the
    receive resumes: one at most per queue (the next send stores behind it), counted
    against the queue's capacity, recalled into the store by a ``restore`` and dropped
    by a flush. Whoever takes it pops the box: the resumed receive without the lock
    (``list.pop`` is atomic), the others under it, so exactly one of them has it. An
    emptied box left in ``in_hand`` is a *spent* entry: it counts for nothing, and
    the next ``send`` to its queue, a sweep after a write, or the idle sweeper (which
    a handed send calls, as a stored one does) removes it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Ordered by last write: the front is usually the first to expire entirely.
        self.queues: OrderedDict[str, deque[tuple[float, bytes]]] = OrderedDict()
        self.waiters = Waiters(self.lock)
        # group -> {channel: membership expiry}, ordered by last group_add.
        self.groups: OrderedDict[str, dict[str, float]] = OrderedDict()
        #: queue -> the box of the payload handed to a receive (changed under ``lock``).
        self.in_hand: dict[str, list[tuple[float, bytes]]] = {}
        #: True while the idle sweeper visits this store (changed under ``lock``).
        self.watched = False
        self._writes = 0

    def swept(self, now: float) -> None:
        """After a write, under ``lock``: sweep once every :data:`_SWEEP_EVERY` writes."""
        self._writes += 1
        if self._writes >= _SWEEP_EVERY:
            self._writes = 0
            self.sweep(now, _SWEEP_EVERY * _SWEEP_PER_WRITE)

    def watch(self) -> bool:
        """Under ``lock``, after a write: True when the idle sweeper must be told."""
        if self.watched:
            return False
        self.watched = True
        return True

    def put(self, queue: str, payload: bytes, expiry: float, capacity: int, now: float) -> bool:
        """Append unless ``capacity`` unexpired payloads are queued; return whether stored.

        A payload in hand (``in_hand``) counts as queued.
        """
        queues = self.queues
        items = queues.get(queue)
        if items is None:
            if capacity <= 1 and self.in_hand.get(queue):
                return False
            items = queues[queue] = deque()
        else:
            queues.move_to_end(queue)
            while items and items[0][0] <= now:
                items.popleft()
            if len(items) >= capacity - 1:
                room = capacity - bool(self.in_hand.get(queue))
                if len(items) >= room:
                    live = [entry for entry in items if entry[0] > now]
                    if len(live) >= room:
                        return False
                    items.clear()
                    items.extend(live)
        items.append((now + expiry, payload))
        return True

    def recall(self, queue: str, box: list[tuple[float, bytes]]) -> bool:
        """Under ``lock``: put ``box``'s payload back at the head of ``queue``; whether it had one.

        False when the box is empty: its receive took the payload, or a flush
        dropped it. Either way ``in_hand`` no longer names it.
        """
        if self.in_hand.get(queue) is box:
            del self.in_hand[queue]
        try:
            entry = box.pop()
        except IndexError:  # taken meanwhile by its receive, which pops without the lock
            return False
        self.items_of(queue).appendleft(entry)
        return True

    def items_of(self, queue: str) -> deque[tuple[float, bytes]]:
        """Under ``lock``: ``queue``'s payloads, an empty deque made if it has none.

        For a write at the head: the queue keeps its place in the last-written order.
        """
        items = self.queues.get(queue)
        if items is None:
            items = self.queues[queue] = deque()
        return items

    def take(self, queue: str, limit: int, now: float) -> list[bytes]:
        """Pop up to ``limit`` unexpired payloads, oldest first, dropping expired ones."""
        items = self.queues.get(queue)
        if not items:
            return []
        out: list[bytes] = []
        while items and len(out) < limit:
            expires_at, payload = items.popleft()
            if expires_at > now:
                out.append(payload)
        if not items:
            # Only the deque goes: waiters live in their own map, so dropping an
            # empty queue never strands a consumer waiting on it.
            del self.queues[queue]
        return out

    def sweep(self, now: float, budget: int = _SWEEP_PER_WRITE) -> bool:
        """Drop up to ``budget`` queues and groups whose contents all expired, and spent boxes.

        Every write calls it, so expired entries go at the rate writes make new
        ones; the idle sweeper (:func:`_idle_sweeper`) reclaims the rest when no
        write comes. The front of each last-written order is usually the first to
        expire, so the work is proportional to what expired; a front queue that
        still holds a live message stops the sweep (a message may outlive one
        queued after it: senders may give one queue different expiries). Returns
        whether the store still holds anything.
        """
        queues = self.queues
        for _ in range(budget):
            if not queues:
                break
            name, items = next(iter(queues.items()))
            # Senders may give one queue different expiries, so a message can outlive
            # the one queued after it: drop expired messages from the head, and the
            # queue only once none is left.
            while items and items[0][0] <= now:
                items.popleft()
            if items:
                break
            del queues[name]
        groups = self.groups
        for _ in range(budget):
            if not groups:
                break
            name, members = next(iter(groups.items()))
            if members and max(members.values()) > now:
                break
            del groups[name]
        in_hand = self.in_hand
        for name in list(itertools.islice(in_hand, budget)):
            box = in_hand.pop(name)
            if box:
                in_hand[name] = box  # still in hand (its receive has not resumed): to the back
        return bool(queues or groups or in_hand)


_stores_to_sweep: weakref.WeakSet[MemoryStore] = weakref.WeakSet()
_sweeper_lock = threading.Lock()
_sweeper: threading.Thread | None = None


def _watch(store: MemoryStore) -> None:
    """Make sure the idle sweeper visits ``store`` (which holds something)."""
    global _sweeper
    with _sweeper_lock:
        _stores_to_sweep.add(store)
        if _sweeper is None or not _sweeper.is_alive():
            _sweeper = threading.Thread(
                target=_idle_sweeper, name="layers-memory-sweeper", daemon=True
            )
            _sweeper.start()


def _idle_sweeper() -> None:
    """Sweep every watched store once a second; exit when none holds anything."""
    global _sweeper
    while True:
        time.sleep(_IDLE_SWEEP_INTERVAL)
        with _sweeper_lock:
            stores = list(_stores_to_sweep)
        for store in stores:
            with store.lock:
                if not store.sweep(time.monotonic(), budget=1 << 62):
                    store.watched = False
                    _stores_to_sweep.discard(store)
        with _sweeper_lock:
            if not _stores_to_sweep:
                _sweeper = None
                return


_named_stores: dict[str, MemoryStore] = {}
_named_stores_lock = threading.Lock()


def named_store(name: str) -> MemoryStore:
    """Return the process-wide store called ``name``, creating it on first use."""
    with _named_stores_lock:
        store = _named_stores.get(name)
        if store is None:
            store = _named_stores[name] = MemoryStore()
        return store


class MemoryBackend(Backend):
    """The per-loop view of a :class:`MemoryStore`."""

    name = "memory"
    capabilities = frozenset({Capability.GROUPS, Capability.FLUSH, Capability.STATISTICS})
    instant_receive = True
    in_process = True

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._deadlines: _Deadlines | None = None
        # The layer makes one instance per event loop, inside it: knowing the loop saves
        # looking it up per call (a getpid system call each time). Made outside a
        # loop, the instance looks it up per call.
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    @classmethod
    def url_option_names(cls) -> frozenset[str]:
        """None: ``memory://`` URLs take only the layer options in their query."""
        return frozenset()

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """``memory://`` (private store) or ``memory://NAME`` (a named, shared store)."""
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query:
            raise ConfigurationError(
                "url", f"memory:// takes only a store name (memory://NAME), not {url!r}"
            )
        return {"store": parts.netloc} if parts.netloc else {}

    @classmethod
    def prepare_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Resolve the ``store`` option to the store the per-loop instances share.

        Under Channels' ``runworker`` command it also logs that a worker on this
        backend cannot see messages sent by other processes.
        """
        _warn_in_a_worker()
        for key in options:
            if key != "store":
                raise ConfigurationError(
                    key, "unknown option for the memory backend (known options: store)"
                )
        name = options.get("store")
        if name is None:
            return {"store": MemoryStore()}
        if isinstance(name, MemoryStore):
            return {"store": name}
        if not isinstance(name, str) or not name:
            raise ConfigurationError("store", f"must be a non-empty store name, not {name!r}")
        return {"store": named_store(name)}

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        """Append atomically under the store lock; see :meth:`Backend.send`."""
        store = self._store
        now = time.monotonic()
        # acquire/release rather than ``with`` on the per-message paths: the
        # context-manager protocol doubles the cost of an uncontended lock.
        store.lock.acquire()
        try:
            # A receive of this loop waiting on an empty queue gets the payload in
            # its future: nothing is stored, and it need not look again.
            in_hand = store.in_hand
            box = in_hand.get(queue)
            if box is not None and not box:
                del in_hand[queue]  # spent: its receive took the payload
                box = None
            hand = (
                None
                if box is not None or queue in store.queues
                else store.waiters.take_first(queue, self._loop)
            )
            if hand is not None:
                # Boxed under the lock: a restore or flush from another thread finds
                # the payload in the box whenever it finds the box here.
                box = [(now + expiry, payload)]
                hand.set_result(box)
                in_hand[queue] = box
                store.swept(now)
                watch = store.watch()  # its box, once spent, is the sweeper's to remove
            else:
                stored = store.put(queue, payload, expiry, capacity, now)
                waiters = store.waiters.pop(queue) if stored else None
                store.swept(now)
                watch = stored and store.watch()
        finally:
            store.lock.release()
        if watch:
            _watch(store)
        if hand is not None:
            return True
        if waiters:
            wake(waiters, self._loop)
        return stored

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:
        """All puts under one lock acquisition; see :meth:`Backend.send_many`."""
        store = self._store
        now = time.monotonic()
        results: list[bool] = []
        woken: list[Waiter] = []
        with store.lock:
            for p in puts:
                stored = store.put(p.queue, p.payload, p.expiry, p.capacity, now)
                results.append(stored)
                if stored:
                    woken.extend(store.waiters.pop(p.queue))
            store.swept(now)
            watch = store.watch()
        if watch:
            _watch(store)
        if woken:
            wake(woken, self._loop)
        return results

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        """Pop under the store lock, else wait for a wake-up; see :meth:`Backend.receive`.

        Cancellation loses nothing: a waiting call holds no message, except one handed
        by a send of this loop, which a cancelled (or closed) call puts back at the
        head of the queue.
        """
        # A hit returns at once: no suspension (``instant_receive``), no waiter made. A
        # miss registers its waiter in the same locked step, so a send landing after
        # the look wakes it; a wake-up that finds the payload gone looks and waits again.
        # A send from this loop hands its payload to the first waiter instead (the
        # future's result); a wait that ends any other way with a payload in hand
        # (cancelled, or its coroutine closed) puts it back at the head of the queue.
        # The deadline's timer (or the backend's close) ends the wait with one last look.
        store = self._store
        deadline = 0.0
        expired = False
        lock = store.lock
        while True:
            lock.acquire()
            try:
                now = time.monotonic()
                got = store.take(queue, limit, now)
                if got or timeout <= 0 or expired:
                    return got
                if not deadline:
                    deadline = now + timeout
                elif now >= deadline:
                    return []
                loop = self._loop or asyncio.get_running_loop()
                waiter = store.waiters.register(queue, loop)
            finally:
                lock.release()
            future = waiter[1]
            deadlines = self._deadlines
            if deadlines is None:
                deadlines = self._deadlines = _Deadlines(loop)
            deadlines.add(future, deadline)
            try:
                await future
            except GeneratorExit:
                # Closed without resuming (its loop gone): the garbage collector may run
                # this while this very thread holds the store's lock, so never wait here.
                deadlines.discard(future)
                self._end_wait(queue, waiter, blocking=False)
                raise
            except BaseException:
                deadlines.discard(future)
                self._end_wait(queue, waiter)
                raise
            deadlines.discard(future)
            result = future.result()
            if result is None:
                continue  # woken: the send removed the waiter; look again
            if result is _EXPIRED:
                store.waiters.discard(queue, waiter)
                expired = True
                continue
            # Handed: take it from its box, without the lock (``list.pop`` is atomic).
            try:
                expires_at, payload = result.pop()
            except IndexError:
                continue  # a flush dropped it, or a restore put it back behind older ones
            if expires_at > time.monotonic():
                return [payload]
            # Expired in hand (a loop blocked longer than the expiry): dropped, as the
            # store drops it. Look again.

    def _end_wait(self, queue: str, waiter: Waiter, *, blocking: bool = True) -> None:
        """A wait ended without returning: unregister it, or put its handed payload back.

        Not ``blocking``: if the lock is taken, a thread does it once the lock is free.
        """
        store = self._store
        if not store.lock.acquire(blocking):
            threading.Thread(
                target=self._end_wait,
                args=(queue, waiter),
                name="layers-memory-put-back",
                daemon=True,
            ).start()
            return
        try:
            future = waiter[1]
            if not future.done() or future.cancelled() or future.result() is _EXPIRED:
                store.waiters.unregister(queue, waiter)
                return
            box = future.result()
            if box is None or not store.recall(queue, box):
                return  # woken only (the send removed it), or no longer in hand
            waiters = store.waiters.pop(queue)
            watch = store.watch()
        finally:
            store.lock.release()
        if watch:
            _watch(store)
        if waiters:
            wake(waiters)  # the running loop may not be this one (a coroutine closed late)

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        """Put payloads back at the head of ``queue``; see :meth:`Backend.restore`."""
        store = self._store
        now = time.monotonic()
        with store.lock:
            # A payload in hand was sent to an empty queue, after these were taken:
            # it goes back into the store, behind them and ahead of the rest.
            held = store.in_hand.get(queue)
            if held is not None:
                store.recall(queue, held)
            store.items_of(queue).extendleft(
                (now + expiry, payload) for payload, expiry in reversed(payloads)
            )
            waiters = store.waiters.pop(queue)
            watch = store.watch()
        if watch:
            _watch(store)
        if waiters:
            wake(waiters, self._loop)
        return True

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        """Add or refresh a membership; see :meth:`Backend.group_add`."""
        store = self._store
        now = time.monotonic()
        with store.lock:
            members = store.groups.get(group)
            if members is None:
                members = store.groups[group] = {}
            else:
                store.groups.move_to_end(group)
            members[channel] = now + expiry
            store.swept(now)
            watch = store.watch()
        if watch:
            _watch(store)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove a membership if present; see :meth:`Backend.group_discard`."""
        with self._store.lock:
            members = self._store.groups.get(group)
            if members is not None:
                members.pop(channel, None)
                if not members:
                    del self._store.groups[group]

    async def group_channels(self, group: str) -> list[str]:
        """Return unexpired members, pruning expired ones; see :meth:`Backend.group_channels`."""
        now = time.monotonic()
        with self._store.lock:
            members = self._store.groups.get(group)
            if not members:
                return []
            expired = [channel for channel, until in members.items() if until <= now]
            for channel in expired:
                del members[channel]
            return list(members)

    async def statistics(self) -> BackendStatistics:
        """Count every queue's unexpired payloads and every group's members, under the lock."""
        store = self._store
        now = time.monotonic()
        with store.lock:
            queues = []
            for name, items in store.queues.items():
                live = [expires_at for expires_at, _ in items if expires_at > now]
                if live:
                    queues.append(QueueStatistics(name, len(live), live[0] - now))
            groups = {
                name: sum(1 for until in members.values() if until > now)
                for name, members in store.groups.items()
            }
        return BackendStatistics(queues, groups)

    async def flush(self) -> None:
        """Empty every queue and group of this layer's store."""
        with self._store.lock:
            self._store.queues.clear()
            for box in self._store.in_hand.values():
                box.clear()  # their receives find them empty and look again
            self._store.in_hand.clear()
            self._store.groups.clear()

    async def aclose(self) -> None:
        """End this loop's waiting receives (they return nothing); the store stays."""
        deadlines, self._deadlines = self._deadlines, None
        if deadlines is not None:
            deadlines.close()


class MemoryChannelLayer(ChannelLayer):
    """A :class:`~layers.ChannelLayer` on the memory backend: a Channels ``BACKEND``.

    Drop-in for ``channels.layers.InMemoryChannelLayer`` with the same options, plus
    a working ``channel_capacity`` and no scan of every channel on each call.
    """

    backend_class = MemoryBackend
