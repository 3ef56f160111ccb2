"""The wake-up side of the PostgreSQL backend: one LISTEN connection per instance.

For a normal channel NOTIFY is only a hint that a queue may have rows; the receive
loop's poll is the guarantee. For a reply inbox whose reader owns its notes
(``_inbox``), the listener also queues each notification's note, in arrival order.
The :class:`Listener` owns one autocommit connection outside the pool, LISTENs on
the hashed channel of every queue this instance receives from, and sets that queue's
:class:`asyncio.Event` when a notification arrives. After a reconnect it re-LISTENs
and sets *every* event, because notifications sent while it was away are gone for
good and readers must drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import time
from typing import Any

import psycopg
from psycopg import sql

from layers.backends.postgres import _direct
from layers.backends.postgres._hand import Wakeup
from layers.backends.postgres._inbox import MAX_NOTES, Notes, parse_note
from layers.backends.postgres._tasks import stop

__all__ = ["Listener", "Wait", "Watch", "notify_channel", "wait_for_wakeup"]

logger = logging.getLogger("layers.postgres")

#: How long a LISTEN channel nobody waited on stays registered.
_IDLE_UNLISTEN = 60.0
#: A quiet connection is checked with ``SELECT 1`` this often.
_HEALTH_INTERVAL = 30.0
_MAX_BACKOFF = 5.0


def notify_channel(schema: str, queue: str) -> str:
    """Return the NOTIFY channel of ``queue``: ``lq_`` + 24 hex digits (27 bytes < 63).

    The digits start the SHA-256 of ``schema:queue``, which SQL computes too (see
    ``_sql.notify_channel``), so a statement can wake the readers of queues it finds.
    """
    return "lq_" + hashlib.sha256(f"{schema}:{queue}".encode()).hexdigest()[:24]


class Wait(enum.Enum):
    """How :func:`wait_for_wakeup` ended."""

    WOKEN = "woken"  #: the event was set
    POLL = "poll"  #: the poll interval passed: look anyway (a wake-up may have been lost)
    DEADLINE = "deadline"  #: the caller's deadline passed


async def wait_for_wakeup(event: asyncio.Event, deadline: float, poll: float) -> Wait:
    """Wait for ``event`` for one poll interval at most, never past ``deadline``.

    ``deadline`` is on :func:`time.monotonic`'s clock; when it has passed already,
    returns :attr:`Wait.DEADLINE` at once. Cancellation leaves nothing behind.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return Wait.DEADLINE
    try:
        async with asyncio.timeout(min(remaining, poll)):
            await event.wait()
    except TimeoutError:
        return Wait.DEADLINE if deadline - time.monotonic() <= 0 else Wait.POLL
    return Wait.WOKEN


class Watch:
    """One channel's wake-up state, shared by this instance's readers of its queue."""

    __slots__ = (
        "catch_up_after",
        "claim_waiters",
        "claimed_at",
        "claiming",
        "discard_until",
        "drained",
        "event",
        "gap",
        "generation",
        "kept_up",
        "last_used",
        "listening",
        "need_claim",
        "notes",
        "users",
    )

    def __init__(self) -> None:
        #: Set by a NOTIFY (or a re-LISTEN); holds the claim parked on the queue, if any.
        self.event = Wakeup()
        self.listening = asyncio.Event()
        self.users = 0
        self.last_used = time.monotonic()
        #: The last claim on this queue, made after ``event`` was cleared, saw no live
        #: row beyond those it took: until ``event`` is set, the queue holds nothing new.
        self.drained = False
        #: When a receive of this instance on the queue last returned (monotonic clock).
        self.claimed_at = 0.0
        #: Claims of this instance on the queue in flight.
        self.claiming = 0
        #: The last claim that ended drained the queue (``drained``, kept while the
        #: next claim runs): this instance's consumers keep up with the queue.
        self.kept_up = False
        #: Sends waiting for the next claim of this instance to end (see ``_backend``).
        self.claim_waiters: list[asyncio.Future[None]] = []
        #: Until then (monotonic clock) sends do not wait for this instance's consumer
        #: to catch up with the queue: the last such wait ended with it still behind.
        self.catch_up_after = 0.0
        #: An owned inbox's notes, in arrival order (None: notifications are hints).
        self.notes: Notes | None = None
        #: Rows may exist that no queued note announces (before LISTEN, after a
        #: reconnect or an overflow): claim from the table before using notes.
        self.gap = True
        #: Counts the (re)LISTENs, so a claim can tell whether one happened meanwhile.
        self.generation = 0
        #: A note said "claim from the table" (a message too large to carry).
        self.need_claim = False
        #: After a flush: drop carried notes until this marker token arrives.
        self.discard_until: int | None = None


class Listener:
    """One LISTEN connection that turns notifications into per-queue events.

    Started lazily by the first :meth:`watch`; stopped by :meth:`aclose`. Never
    raises to its callers: connection failures are logged and retried with backoff
    while readers keep polling.
    """

    def __init__(self, conninfo: str, connect_kwargs: dict[str, Any]) -> None:
        self._conninfo = conninfo
        self._connect_kwargs = connect_kwargs
        self._watches: dict[str, Watch] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def watch(self, channel: str) -> Watch:
        """Register interest in ``channel``; the caller must :meth:`release` it."""
        w = self._watches.get(channel)
        if w is None:
            w = self._watches[channel] = Watch()
            self._changed.set()
        w.users += 1
        w.last_used = time.monotonic()
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="layers-postgres-listener"
            )
        return w

    def peek(self, channel: str) -> Watch | None:
        """The watch of ``channel`` if there is one (no new interest registered)."""
        return self._watches.get(channel)

    def release(self, channel: str) -> None:
        """Drop one user of ``channel``; it is UNLISTENed after a quiet while."""
        w = self._watches.get(channel)
        if w is not None:
            w.users -= 1
            w.last_used = time.monotonic()

    async def aclose(self) -> None:
        """Stop the task and close the connection. Idempotent."""
        self._closing = True
        task, self._task = self._task, None
        await stop(task)

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closing:
            try:
                conn = await self._connect()
            except (psycopg.Error, OSError) as exc:
                backoff = min(_MAX_BACKOFF, backoff * 2 or 0.1)
                logger.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                continue
            try:
                await self._serve(conn)
                backoff = 0.0
            except (psycopg.Error, OSError) as exc:
                backoff = min(_MAX_BACKOFF, backoff * 2 or 0.05)
                logger.warning("LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
            finally:
                for w in self._watches.values():
                    w.listening.clear()
                    w.gap = True
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        """Connect; if cancelled meanwhile, finish, close the connection, then re-raise.

        A connection attempt abandoned half-way (``asyncio.run()`` cancels every task
        when an ``async_to_sync`` call ends) would stay open on the server until the
        garbage collector found it.
        """
        attempt = asyncio.ensure_future(
            psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **self._connect_kwargs)
        )
        try:
            conn = await asyncio.shield(attempt)
            conn.add_notify_handler(self._on_driver_notify)
            return conn
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                conn = await attempt
                await conn.close()
            raise

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        listened: set[str] = set()
        first = True
        while not self._closing:
            self._changed.clear()
            await self._sync_listens(conn, listened)
            if first:
                # Notifications sent while we were not listening are lost: make
                # every reader drain once now that LISTEN is in place again.
                first = False
                for w in self._watches.values():
                    w.event.set()
            consume = asyncio.ensure_future(self._consume(conn))
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({consume, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                if not consume.done():
                    consume.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consume
            if consume.done() and not consume.cancelled():
                consume.result()  # re-raise a connection error

    async def _sync_listens(self, conn: psycopg.AsyncConnection[Any], listened: set[str]) -> None:
        now = time.monotonic()
        stale = [
            ch
            for ch, w in self._watches.items()
            if w.users <= 0 and now - w.last_used > _IDLE_UNLISTEN
        ]
        for ch in stale:
            del self._watches[ch]
        drop = [ch for ch in listened if ch not in self._watches]
        add = [ch for ch in self._watches if ch not in listened]
        commands = [sql.SQL("UNLISTEN {}").format(sql.Identifier(ch)) for ch in drop]
        commands += [sql.SQL("LISTEN {}").format(sql.Identifier(ch)) for ch in add]
        if commands:
            # On libpq: an event loop ending meanwhile lets it finish instead of having
            # psycopg cancel it on the server (and log that it closed the connection).
            await _direct.run_simple(conn, sql.SQL("; ").join(commands).as_bytes(conn))
            listened.difference_update(drop)
            listened.update(add)
        for ch in add:
            w = self._watches.get(ch)
            if w is not None:
                # Notifications sent before this LISTEN never come: the table has them.
                w.generation += 1
                w.gap = True
                if w.notes is not None:
                    w.notes.clear()
                w.listening.set()

    def _on_notify(self, channel: str, payload: str) -> None:
        """One notification: queue an owned inbox's note, and wake the channel's readers."""
        w = self._watches.get(channel)
        if w is not None:
            notes = w.notes
            if notes is not None:
                if len(notes) >= MAX_NOTES:
                    # Nobody reads them: drop them, the rows are durable.
                    notes.clear()
                    w.gap = True
                notes.append(parse_note(payload))
            w.event.set()

    def _on_driver_notify(self, note: psycopg.Notify) -> None:
        """A notification the driver read while a statement ran on the connection."""
        self._on_notify(note.channel, note.payload)

    async def _consume(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Wake readers until cancelled; check the connection when quiet.

        The socket is watched with the loop's ``add_reader``, and each readable event
        drains libpq's notifications in one callback: about a third of the CPU of the
        driver's ``notifies()`` generator, which makes a future and re-registers the
        socket per batch. No statement runs on the connection meanwhile (the driver
        would take the socket over); notifications read by a statement (LISTEN, the
        health check) reach :meth:`_on_driver_notify` instead.
        """
        while True:
            if not await self._read_notifications(conn):
                await _direct.run_simple(conn, b"SELECT 1")
                if any(w.users <= 0 for w in self._watches.values()):
                    self._changed.set()  # let _serve UNLISTEN idle channels

    async def _read_notifications(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Dispatch notifications for one health interval; whether any came.

        Raises the connection's error when it fails. Cancellation stops the watch.
        """
        loop = asyncio.get_running_loop()
        pgconn = conn.pgconn
        fd = conn.fileno()
        on_notify = self._on_notify
        got = False
        lost: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            nonlocal got
            try:
                pgconn.consume_input()
            except psycopg.Error as exc:  # the connection failed: reconnect
                loop.remove_reader(fd)
                if not lost.done():
                    lost.set_exception(exc)
                return
            while (note := pgconn.notifies()) is not None:
                got = True
                # Our channels and payloads are ASCII; a stranger's bytes must not raise.
                channel = note.relname.decode(errors="replace")
                on_notify(channel, note.extra.decode(errors="replace"))

        loop.add_reader(fd, readable)
        try:
            readable()  # what libpq may already hold
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HEALTH_INTERVAL):
                    await lost
        finally:
            loop.remove_reader(fd)
            if lost.done() and not lost.cancelled():
                # Cancelled after the failure was noted: _serve's next statement on the
                # connection meets the same error, so only mark this one as seen.
                lost.exception()
        return got
