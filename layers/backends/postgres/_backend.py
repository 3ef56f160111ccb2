"""The PostgreSQL backend class (see the package docstring for the user-facing summary).

The backend composes its parts: ``_connections`` (pool, leasing, errors, schema),
``_batch`` (auto-batched sends and receives), ``_listener`` (LISTEN wake-ups and the
wait between claims) and ``_replies`` (reply inboxes delivered from their notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from layers.backends.postgres import _direct, _options, _sql, _wakeups
from layers.backends.postgres._batch import Batcher, Row
from layers.backends.postgres._connections import Connections
from layers.backends.postgres._hand import (
    CATCH_UP_PAUSE,
    CATCH_UP_WAIT,
    HAND_WINDOW,
    Hand,
    HandSignal,
    Wakeup,
)
from layers.backends.postgres._listener import (
    Listener,
    Watch,
    notify_channel,
)
from layers.backends.postgres._replies import InboxReader
from layers.backends.postgres._tasks import stop
from layers.backends.postgres._vacuum import Vacuum
from layers.core.backend import (
    Backend,
    BackendStatistics,
    Capability,
    GroupPayload,
    Put,
    QueueStatistics,
)
from layers.core.errors import BackendError, BackendUnavailable
from layers.core.layer import ChannelLayer
from layers.core.wakeups import EventSignal, wait_then_claim

__all__ = ["PostgresBackend", "PostgresChannelLayer"]

logger = logging.getLogger("layers.postgres")


class PostgresBackend(Backend):
    """Storage in PostgreSQL for one layer in one event loop.

    One :class:`psycopg_pool.AsyncConnectionPool` (autocommit connections) runs the
    statements; one extra connection LISTENs for wake-ups (none in poll-only mode).
    Construction does no I/O; :meth:`open` creates the pool and the schema.
    """

    name = "postgres"
    capabilities = frozenset(
        {
            Capability.GROUPS,
            Capability.FLUSH,
            Capability.CROSS_PROCESS,
            Capability.CROSS_HOST,
            Capability.PERSISTENT,
            Capability.STATISTICS,
        }
    )

    def __init__(self, *, conninfo: str, settings: _options.Settings) -> None:
        self._conninfo = conninfo
        self._settings = settings
        self._sql = _sql.statements(settings.schema)
        self._poll = settings.effective_poll_interval()
        self._db = Connections(conninfo=conninfo, settings=settings, statements=self._sql)
        self._listener: Listener | None = None
        #: Poll-only: the process's wake-ups between instances (see ``_wakeups``).
        self._local = _wakeups.registry(conninfo, settings.schema) if settings.poll_only else None
        self._cleanup: asyncio.Task[None] | None = None
        self._channels: dict[str, str] = {}
        #: Normal queues this instance claimed from before listening to them.
        self._claimed: set[str] = set()
        self._batcher = Batcher(
            self._db.lease,
            self._db.query,
            self._sql,
            direct=self._db.direct,
        )
        self._vacuum = Vacuum(
            self._db.lease, self._sql.may_vacuum, self._sql.vacuum, settings.vacuum_every
        )
        self._inboxes = InboxReader(self._db, poll=self._poll, deleted=self._vacuum.deleted)

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The backend settings, ``url``/``dsn``/``database`` and every libpq keyword."""
        return _options.option_names(in_url=False)

    @classmethod
    def url_option_names(cls) -> frozenset[str]:
        """The backend settings and every libpq keyword."""
        return _options.option_names(in_url=True)

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """Map the backend's query parameters to options; keep the rest for libpq."""
        return _options.from_url(url)

    @classmethod
    def prepare_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate every option and build the libpq connection string, without I/O.

        Unknown keys are taken as libpq keywords and rejected by libpq's own parser
        with :class:`layers.ConfigurationError` when they are not.
        """
        return _options.normalise(options)

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool, wait for its first connection, and check the schema.

        The first open of a process connects once by itself first, so a wrong
        database, bad credentials or a refused connection raise
        :class:`layers.BackendUnavailable` at once with the server's message; later
        ones raise it when the server cannot be reached within ``pool_timeout``.
        A cancelled or failed ``open`` closes what it opened.
        """
        await self._db.open()
        if not self._settings.poll_only:
            self._listener = Listener(self._conninfo, {})
        self._cleanup = asyncio.get_running_loop().create_task(
            self._cleanup_loop(), name="layers-postgres-cleanup"
        )

    async def aclose(self) -> None:
        """Stop the listener and cleanup tasks, close the pool. Idempotent, never raises."""
        task, self._cleanup = self._cleanup, None
        await stop(task)
        await self._db.stop_checking()
        await self._vacuum.aclose()
        await self._inboxes.aclose()
        await self._batcher.aclose()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.aclose()
        await self._db.aclose()

    # -- helpers ------------------------------------------------------------------------

    def _channel(self, queue: str) -> str:
        channel = self._channels.get(queue)
        if channel is None:
            if len(self._channels) > 4096:
                self._channels.clear()
            channel = self._channels[queue] = notify_channel(self._settings.schema, queue)
        return channel

    # -- primitives -------------------------------------------------------------------

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        """Count, insert and maybe NOTIFY in one autocommit statement; see :meth:`Backend.send`.

        Runs in the next auto-batch (see ``_batch``), merged with the batch's other
        sends into one multi-row statement, or alone as one call of ``send_one``.
        Capacity is checked after the queue's advisory lock, so it is exact across
        processes. Cancellation: stored entirely or not at all.

        When a claim of this instance waits on the normal queue ``queue`` (or drained
        it less than ``HAND_WINDOW`` ago and comes back to wait meanwhile), the send's
        statement first asks whether the queue holds any live row; if it holds none,
        the payload goes to that claim without being stored (see ``_hand``), else it
        is stored. Cancelled meanwhile, the payload is stored or delivered once, or
        neither.
        """
        listener = self._listener
        # Only a claim of a normal queue with wake-ups on holds or adopts a hand.
        if listener is not None and self._settings.notify and not queue.endswith("!"):
            watch = listener.peek(self._channel(queue))
            if watch is not None:
                event = watch.event
                hand, returning = event.live_hand()
                if hand is None and not returning and not watch.kept_up:
                    # A consumer of this instance behind the queue: storing this one
                    # too would keep it behind, every message stored and claimed.
                    await self._catch_up(watch)
                    hand, returning = event.live_hand()
                if (
                    hand is None
                    and not returning
                    and watch.kept_up
                    and (
                        watch.claiming
                        or (event.is_set() and time.monotonic() - watch.claimed_at < HAND_WINDOW)
                    )
                ):
                    # A consumer of this instance that keeps up is claiming (or was
                    # just woken to claim) what was stored before: storing this one too
                    # would keep it a step behind for good, every message stored and
                    # claimed. Wait for that claim (briefly), then hand this one over.
                    await self._after_claim(watch)
                    hand, _ = event.live_hand()
                if (
                    hand is None
                    and watch.drained
                    and not event.is_set()
                    and (returning or time.monotonic() - watch.claimed_at < HAND_WINDOW)
                ):
                    # A claim of this instance drained the queue moments ago, or was
                    # given a payload and has not run since: put out a hand for it to
                    # adopt when it comes back to wait.
                    hand = event.hand = Hand(asyncio.get_running_loop(), owned=False)
                if hand is not None and hand.take():
                    return await self._hand(event, hand, queue, payload, float(expiry), capacity)
        (stored,) = await self._store(
            [(queue, payload, float(expiry), capacity, self._notify(queue))]
        )
        return stored

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:
        """All puts in one statement, in order; see :meth:`Backend.send_many`.

        A ``group_send`` is one round trip whatever its number of receiving queues.
        Cancellation: the statement commits entirely or not at all.
        """
        if not puts:
            return []
        return await self._store(
            [(p.queue, p.payload, float(p.expiry), p.capacity, self._notify(p.queue)) for p in puts]
        )

    async def _catch_up(self, watch: Watch) -> None:
        """Wait while this instance's consumer claims the queue back to back, until it drains.

        With ``prefetch=1`` a consumer a few messages behind its own process's producer
        claims one row a statement while each send stores one: it stays behind for
        good, at two statements a message, and its claims were the slower of the two.
        A send waits instead while claims of this instance run back to back (the
        next one ends less than twice :data:`HAND_WINDOW` after the last), at most
        :data:`CATCH_UP_WAIT`, until one drains the queue; then it hands its message
        over. A consumer busy with a message is not waited for. A wait that ends with
        the queue still not drained (a backlog too long, other processes' sends
        keeping it full, or a consumer that stopped claiming) stops sends from waiting
        for :data:`CATCH_UP_PAUSE`: a producer is slowed by at most that share.
        Cancellation: nothing was sent yet.
        """
        now = time.monotonic()
        if now < watch.catch_up_after or not (
            watch.claiming or now - watch.claimed_at < HAND_WINDOW
        ):
            return
        deadline = now + CATCH_UP_WAIT
        while not watch.kept_up:
            # A claim in flight ends (however slow); the next one must come soon.
            timeout = deadline - now if watch.claiming else min(2 * HAND_WINDOW, deadline - now)
            if timeout <= 0 or not await self._after_claim(watch, timeout):
                watch.catch_up_after = time.monotonic() + CATCH_UP_PAUSE
                return
            now = time.monotonic()

    async def _after_claim(self, watch: Watch, timeout: float = HAND_WINDOW) -> bool:
        """Wait until this instance's next claim on the watch's queue ends, at most ``timeout``.

        Whether it ended. Cancellation: nothing was sent yet.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        watch.claim_waiters.append(waiter)
        try:
            await asyncio.wait((waiter,), timeout=timeout)
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    watch.claim_waiters.remove(waiter)
        return not waiter.cancelled()

    async def _hand(
        self, event: Wakeup, hand: Hand, queue: str, payload: bytes, expiry: float, capacity: int
    ) -> bool:
        """Send ``payload`` for the claim of ``hand`` (taken): hand it over or store it."""
        row = (queue, payload, expiry, capacity, self._notify(queue))
        handed = stored = False
        try:
            with self._db.translate():
                handed, stored = await self._batcher.hand(row)
        finally:
            if not handed:
                hand.give(None)  # a claim that waits goes on and finds what was stored
                event.release(hand)
        if handed:
            if hand.give([payload]):
                return True  # the claim's now, even if it is cancelled before it runs
            # No claim took it (none came back, or it was cancelled first): store it as
            # usual. The send has not returned, so any order is still its own.
            event.release(hand)
            (stored,) = await self._store([row])
        return stored

    def _notify(self, queue: str) -> str | None:
        return self._channel(queue) if self._settings.notify else None

    async def _store(self, rows: list[Row]) -> list[bool]:
        with self._db.translate():
            stored = await self._batcher.send(rows)
        for row, ok in zip(rows, stored, strict=True):
            if ok:
                self._wake_local(row[0])
        return stored

    def _wake_local(self, queue: str) -> None:
        if self._local is not None:
            self._local.wake(queue)

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        """Claim and delete up to ``limit`` rows, else wait for a wake-up or the poll.

        See :meth:`Backend.receive`. Each attempt is one autocommit ``DELETE …
        RETURNING`` whose claim skips rows other readers hold, so a payload is
        returned once at most. Cancellation while waiting loses nothing; a claim in
        flight is read to its end and its rows are returned, the cancellation staying
        requested (see :meth:`Backend.receive`), with ``poll_only`` too (unnamed
        statements).
        """
        deadline = time.monotonic() + timeout
        listener = self._listener
        channel = self._channel(queue)
        inbox = self._settings.notify and queue.endswith("!")
        if listener is not None and not inbox:
            known = listener.peek(channel)
            if known is None or not known.listening.is_set():
                # Not listened to yet (this event loop's first receive of the queue, as
                # each async_to_sync call is): what is queued comes at once, without
                # waiting for a LISTEN, or for the listener's connection at all.
                if known is None and queue in self._claimed:
                    # A consumer back for more (not a one-off loop): listen, without
                    # waiting for it, so its claims are known to this instance's sends
                    # (see ``_catch_up``) while its queue holds a backlog.
                    known = listener.watch(channel)
                    listener.release(channel)
                elif known is None:
                    if len(self._claimed) > 4096:
                        self._claimed.clear()
                    self._claimed.add(queue)
                rows = await self._claim(queue, limit, known)
                if known is not None:
                    if not known.listening.is_set():
                        # A look before the LISTEN: a row stored since may never be
                        # announced, so the next claim must not wait for a NOTIFY.
                        known.drained = False
                    if rows:
                        known.claimed_at = time.monotonic()
                if rows:
                    return rows
        watch = None
        event: asyncio.Event
        if listener is not None:
            watch = listener.watch(channel)
            event = watch.event
        else:
            event = asyncio.Event()
            if self._local is not None:
                self._local.add(queue, event)
        try:
            if watch is not None and not watch.listening.is_set():
                # LISTEN before the claim that may be followed by a wait, or a send in
                # between waits a poll.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(timeout, self._poll)):
                        await watch.listening.wait()
            if watch is not None and inbox:
                return await self._inboxes.receive(queue, channel, limit, deadline, watch)
            return await self._claim_loop(queue, limit, event, deadline, watch)
        finally:
            if listener is not None:
                if watch is not None:
                    watch.claimed_at = time.monotonic()
                listener.release(channel)
            elif self._local is not None:
                self._local.discard(queue, event)

    async def _claim(self, queue: str, limit: int, watch: Watch | None) -> list[bytes]:
        """One claim of up to ``limit`` rows; ``watch.drained`` says if it emptied the queue."""
        if watch is None:
            return await self._claim_rows(queue, limit, None)
        watch.claiming += 1
        try:
            return await self._claim_rows(queue, limit, watch)
        finally:
            watch.claiming -= 1
            watch.kept_up = watch.drained
            waiters, watch.claim_waiters = watch.claim_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _claim_rows(self, queue: str, limit: int, watch: Watch | None) -> list[bytes]:
        failures = 0
        while True:
            if watch is not None:
                watch.drained = False
            try:
                with self._db.translate():
                    rows, more = await self._batcher.receive(queue, limit)
            except BackendUnavailable:
                raise
            except BackendError as exc:
                # A pooled connection killed by a restart or pg_terminate_backend
                # fails once; retrying a claim is safe (it committed or it did not).
                failures += 1
                if failures > 3 or not isinstance(exc.__cause__, psycopg.OperationalError):
                    raise
                continue
            if watch is not None:
                watch.drained = not more
            self._vacuum.deleted(len(rows))
            return [payload for _, payload in rows]

    async def _claim_loop(
        self,
        queue: str,
        limit: int,
        event: asyncio.Event,
        deadline: float,
        watch: Watch | None,
    ) -> list[bytes]:
        # A queue the last claim drained holds nothing new until a NOTIFY sets the
        # event (cleared before that claim, so none is missed): wait for it first
        # instead of paying for a claim that finds nothing. Needs live wake-ups.
        # While it waits, a send of this instance may hand it a payload (``_hand``).
        hands = HandSignal(watch.event) if watch is not None and self._settings.notify else None
        if (
            hands is not None
            and watch is not None
            and watch.drained
            and watch.listening.is_set()
            and not event.is_set()
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            woken = await hands.wait(min(remaining, self._poll))
            handed = hands.take_handed()
            if handed is not None:
                return handed
            # A wake-up the wait reported (and cleared) is claimed, even past the
            # deadline: the next receive would otherwise wait for another one.
            if not woken and deadline - time.monotonic() <= 0 and not event.is_set():
                return []

        async def claim() -> list[bytes]:
            if hands is not None:
                handed = hands.take_handed()
                if handed is not None:
                    return handed  # the queue stays drained: nothing was stored
            return await self._claim(queue, limit, watch)

        # The caller's next receive drains first anyway, so a deadline ends it at once.
        return await wait_then_claim(
            claim,
            EventSignal(event) if hands is None else hands,
            timeout=deadline - time.monotonic(),
            poll=self._poll,
        )

    # -- groups, restore, statistics, flush --------------------------------------------

    async def group_send(self, group: str, payload: GroupPayload) -> int:
        """Members, payloads, capacity check, insert and NOTIFY in one statement.

        See :meth:`Backend.group_send`: one round trip whatever the group's size.
        Cancellation: the statement commits entirely or not at all.
        """
        params = {
            "group": group,
            "head": payload.targeted_head,
            "newline": b"\n",
            "body": payload.body,
            "plain": payload.plain,
            "cap": payload.capacity,
            "expiry": float(payload.expiry),
            "notify": self._settings.notify,
        }
        rows = await self._db.query(self._sql.group_send, params)
        stored, skipped = int(rows[0][0]), int(rows[0][1])
        if stored and self._local is not None:
            # Poll-only mode: wake this process's readers (the members are not known here).
            self._local.wake_all()
        return skipped

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        """Insert them below the queue's lowest id, in one statement; see ``Backend.restore``.

        Cancelled, the statement (run on libpq directly) is read to its end: True
        once it committed, False when it was never sent or failed, the cancellation
        staying requested. Unknown (the connection did not answer, or it was not idle
        and the statement went through psycopg): ``CancelledError``.
        """
        params = {
            "queue": queue,
            "payloads": [payload for payload, _ in payloads],
            "expiries": [float(expiry) for _, expiry in payloads],
            "channel": self._notify(queue),
        }
        try:
            await self._db.query(self._sql.restore, params, settles=True)
        except _direct.NotRun:
            return False
        except _direct.Interrupted:
            pass  # committed: wake the readers as below; the cancellation stays requested
        self._wake_local(queue)
        if self._listener is not None:
            watch = self._listener.peek(self._channel(queue))
            if watch is not None:
                # The rows go ahead of any send whose look at the queue came before
                # them: a claim of this instance must claim them, not take a hand.
                watch.event.set()
        return True

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        """Upsert the membership with a new server-clock expiry; see :meth:`Backend.group_add`."""
        await self._db.query(self._sql.group_add, (group, channel, float(expiry)), rows=False)

    async def group_discard(self, group: str, channel: str) -> None:
        """Delete the membership row if any; see :meth:`Backend.group_discard`."""
        await self._db.query(self._sql.group_discard, (group, channel), rows=False)

    async def group_channels(self, group: str) -> list[str]:
        """Return the unexpired members; see :meth:`Backend.group_channels`."""
        return [row[0] for row in await self._db.query(self._sql.group_channels, (group,))]

    async def statistics(self) -> BackendStatistics:
        """Two read-only aggregate queries; see :meth:`Backend.statistics`."""
        queues = await self._db.query(self._sql.queue_statistics, scan=True)
        groups = await self._db.query(self._sql.group_statistics, scan=True)
        return BackendStatistics(
            [QueueStatistics(str(q), int(n), float(ttl)) for q, n, ttl in queues],
            {str(g): int(n) for g, n in groups},
        )

    async def flush(self) -> None:
        """Delete every message and membership in this layer's schema (nothing else).

        Notes this instance holds for reply inboxes are dropped, and so is every
        note that arrives before a marker sent after the flush: they announce rows
        the flush deleted.
        """
        await self._db.query(self._sql.flush, rows=False)
        if self._listener is not None:
            await self._inboxes.flushed(self._listener, self._channel)

    # -- maintenance ------------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        """Delete expired rows in batches every ``cleanup_interval`` (with jitter)."""
        s = self._settings
        while True:
            await asyncio.sleep(s.cleanup_interval * random.uniform(0.8, 1.2))
            await self._db.release_idle()  # let the pool check, age and shrink them
            try:
                await self.cleanup()
            except BackendError as exc:
                logger.warning("cleanup of expired rows failed: %s", exc)

    async def cleanup(self, *, max_batches: int = 20) -> int:
        """Delete expired messages and memberships, ``cleanup_batch`` rows at a time.

        Returns how many message rows were deleted; they count toward
        ``vacuum_every`` like delivered ones (each leaves a dead row). Rows other
        sessions hold are skipped. Cancellation: batches already committed stay deleted.
        """
        batch = self._settings.cleanup_batch
        total = 0
        for _ in range(max_batches):
            deleted = await self._db.rowcount(self._sql.cleanup_messages, (batch,))
            total += deleted
            self._vacuum.deleted(deleted)
            if deleted < batch:
                break
        for _ in range(max_batches):
            if await self._db.rowcount(self._sql.cleanup_groups, (batch,)) < batch:
                break
        return total


class PostgresChannelLayer(ChannelLayer):
    """A :class:`~layers.ChannelLayer` on PostgreSQL: a Django Channels ``BACKEND``.

    ``CONFIG`` takes the layer options plus the backend's (``url``, ``schema``...).
    """

    backend_class = PostgresBackend
