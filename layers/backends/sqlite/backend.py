"""The SQLite backend class: storage primitives over one aiosqlite connection per loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from layers.backends.sqlite import _connect, _hub, _options, _sql
from layers.backends.sqlite._connect import aiosqlite, translate
from layers.core.backend import Backend, BackendStatistics, Capability, Put, QueueStatistics
from layers.core.errors import BackendError, ConfigurationError, LayerClosed
from layers.core.wakeups import WaiterSignal, wait_then_claim

__all__ = ["SqliteBackend"]

logger = logging.getLogger("layers.sqlite")

#: ``DELETE ... RETURNING`` and ``INSERT ... RETURNING`` need SQLite 3.35.0.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
#: The most puts in one ``send_many`` statement (4 parameters each, under 999).
_SEND_MANY_CHUNK = 200
#: Expired rows deleted per statement by the periodic cleanup.
_CLEANUP_BATCH = 500
#: The first and the longest pause before a statement SQLite refused as busy runs again.
_BUSY_FIRST_PAUSE = 0.001
_BUSY_LAST_PAUSE = 0.05
#: How long a cancelled take waits for its statement's end (seconds).
_KEPT_WAIT = 5.0

_T = TypeVar("_T")

_Row = tuple[float, bytes]  # (expires_at, payload)


class SqliteBackend(Backend):
    """One SQLite file shared by every process on one host.

    One instance per event loop owns one aiosqlite connection (one thread); an
    ``asyncio.Lock`` serializes its statements so concurrent tasks never interleave
    inside a transaction. Writes are single autocommit statements or ``BEGIN
    IMMEDIATE`` transactions. Receivers wait on the file's :class:`_hub.Hub`.
    """

    name = "sqlite"
    capabilities = frozenset(
        {
            Capability.GROUPS,
            Capability.FLUSH,
            Capability.CROSS_PROCESS,
            Capability.PERSISTENT,
            Capability.STATISTICS,
        }
    )

    def __init__(
        self,
        *,
        path: str,
        poll_interval: float = _options.DEFAULTS["poll_interval"],
        busy_timeout: float = _options.DEFAULTS["busy_timeout"],
        cleanup_interval: float = _options.DEFAULTS["cleanup_interval"],
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.busy_timeout = busy_timeout
        self.cleanup_interval = cleanup_interval
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._hub: _hub.Hub | None = None
        self._token = 0
        self._returning = HAS_RETURNING
        self._next_cleanup = 0.0
        # Rows taken by a receive that was cancelled meanwhile, kept for the next one.
        self._stash: dict[str, deque[_Row]] = {}
        self._taking: dict[str, asyncio.Task[list[_Row]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Rows each take deleted, by its token, kept by ``layers_keep`` as it runs.
        self._kept: dict[int, list[tuple[int, float, bytes]]] = {}
        self._tokens = itertools.count(1)

    # -- configuration --------------------------------------------------------------

    @classmethod
    def url_option_names(cls) -> frozenset[str]:
        """``poll_interval``, ``busy_timeout`` and ``cleanup_interval``."""
        return frozenset(_options.DEFAULTS)

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """``sqlite:///relative.db``, ``sqlite:////abs/path.db``; query = options."""
        return _options.options_from_url(url)

    @classmethod
    def prepare_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check options; make ``path`` absolute; refuse ``:memory:`` and missing folders."""
        return _options.prepare_options(options)

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, switch the file to WAL and create the schema if needed.

        Safe when several processes start at once on a new file. Raises
        :class:`~layers.ConfigurationError` (setting ``path``) when the file cannot
        be opened or cannot use WAL, :class:`~layers.BackendError` for other store
        failures. A cancelled ``open`` leaves nothing open.
        """
        if self._conn is not None:
            return
        self._hub, self._token = _hub.attach(self.path, self.poll_interval, self.busy_timeout)
        try:
            self._conn = await _connect.connect(self.path, self.busy_timeout)
            await self._conn.create_function("layers_keep", 4, self._keep_row)
            if not self._hub.schema_ready:
                if not await self._schema_is_current(self._conn):
                    await self._create_schema(self._conn)
                self._hub.schema_ready = True
        except BaseException:
            await self.aclose()
            raise

    async def _schema_is_current(self, conn: aiosqlite.Connection) -> bool:
        """Whether the file holds this release's schema, read without a write transaction.

        The version is written last, in the transaction that creates the schema, so
        a file at this version holds all of it: an event loop that opens the backend
        for one call (``async_to_sync``) reads one pragma instead of taking the
        file's write lock for a dozen statements.
        """
        rows = list(await conn.execute_fetchall("PRAGMA user_version"))
        return bool(rows) and int(rows[0][0]) == _sql.SCHEMA_VERSION

    async def _create_schema(self, conn: aiosqlite.Connection) -> None:
        """Create the tables in one ``BEGIN IMMEDIATE`` (other processes wait for it)."""
        async with self._lock, self._transaction(conn):
            rows = list(await conn.execute_fetchall("PRAGMA user_version"))
            version = int(rows[0][0]) if rows else 0
            if version > _sql.SCHEMA_VERSION:
                raise ConfigurationError(
                    "path",
                    f"{self.path} was made by a newer channel-layers (schema {version}, "
                    f"this one knows {_sql.SCHEMA_VERSION}); upgrade or use another file",
                )
            for statement in _sql.SCHEMA:
                await conn.execute(statement)
            if version < _sql.SCHEMA_VERSION:
                await conn.execute(f"PRAGMA user_version = {_sql.SCHEMA_VERSION}")

    @contextlib.asynccontextmanager
    async def _transaction(self, conn: aiosqlite.Connection) -> AsyncIterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception.

        The caller holds ``self._lock``. A ``BEGIN`` refused as busy is retried like a
        single statement (see :meth:`_retry`).
        """
        await self._retry(functools.partial(conn.execute, "BEGIN IMMEDIATE"), in_lock=True)
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            raise
        with translate(self.path):
            await conn.execute("COMMIT")

    async def aclose(self) -> None:
        """Close the connection and stop waiting on the file. Idempotent, never raises.

        Work already handed to the connection (a take or a flush in flight) runs to
        its end first. Stored payloads stay in the file.
        """
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        hub, self._hub = self._hub, None
        if hub is not None:
            _hub.detach(hub, self._token)
        self._stash.clear()

    def _connection(self) -> aiosqlite.Connection:
        conn = self._conn
        if conn is None:
            raise LayerClosed(f"the SQLite backend for {self.path} is not open")
        return conn

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` to its end even if the caller is cancelled (kept for aclose)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- statements -----------------------------------------------------------------
    #
    # Single statements run in autocommit and need no lock among themselves:
    # aiosqlite runs them one by one in call order, so several tasks' statements
    # queue on the connection's thread back to back. Only an explicit transaction
    # (schema, flush, the pre-3.35 take) holds self._lock across its awaits; a
    # statement issued meanwhile waits for it, so it never lands inside one.

    async def _after_transaction(self) -> None:
        while self._lock.locked():
            async with self._lock:
                pass

    async def _run(
        self, conn: aiosqlite.Connection, sql: str, params: Sequence[Any]
    ) -> aiosqlite.Cursor:
        """Execute one statement outside any transaction of this instance (see :meth:`_retry`)."""
        return await self._retry(functools.partial(conn.execute, sql, params))

    async def _rows(self, conn: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
        """Like :meth:`_run`, returning every row."""
        return list(await self._retry(functools.partial(conn.execute_fetchall, sql, params)))

    async def _retry(self, call: Callable[[], Awaitable[_T]], *, in_lock: bool = False) -> _T:
        """Run one autocommit statement; while SQLite says busy, again, up to ``busy_timeout``.

        SQLite waits out a lock held by another connection through its busy handler,
        but answers SQLITE_BUSY at once in some cases (a snapshot that another process
        outdated, among others), and it did between processes in ordinary use. A
        statement refused as busy changed nothing, so running it again neither
        duplicates nor loses anything; after ``busy_timeout`` the error is raised.
        ``in_lock``: the caller holds ``self._lock`` (a ``BEGIN IMMEDIATE``).
        Cancellation: while waiting, nothing has run.
        """
        deadline: float | None = None
        delay = _BUSY_FIRST_PAUSE
        while True:
            if not in_lock and self._lock.locked():
                await self._after_transaction()
            if deadline is None:  # from the first run: SQLite's own waiting counts
                deadline = time.monotonic() + self.busy_timeout
            # No await between the check and the call, which queues the statement.
            try:
                with translate(self.path):
                    return await call()
            except BackendError as exc:
                now = time.monotonic()
                if not _connect.is_busy(exc.__cause__) or now >= deadline:
                    raise
            await asyncio.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _BUSY_LAST_PAUSE)

    # -- sending --------------------------------------------------------------------

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        """Append with the capacity check in the same INSERT; see :meth:`Backend.send`.

        The check and the insert are one statement under SQLite's write lock, so
        they are exact across processes. Cancellation: the statement runs or not
        (never twice); receivers of another loop may then wake only on the next poll.
        """
        conn = self._connection()
        now = time.time()
        cursor = await self._run(
            conn, _sql.INSERT, _sql.insert_params(queue, payload, now + expiry, capacity, now)
        )
        stored: bool = cursor.rowcount == 1
        if stored and self._hub is not None:
            self._hub.notify(queue)
        await self._maybe_cleanup()
        return stored

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:
        """Store each put unless its queue is full; one statement per chunk of queues.

        Puts to the same queue keep their order (they go into successive
        statements). Cancellation: each put is stored once or not at all.
        """
        conn = self._connection()
        results = [False] * len(puts)
        stored_queues: set[str] = set()
        now = time.time()
        for chunk in _chunks(puts):
            if self._returning:
                stored = await self._insert_chunk(conn, [puts[i] for i in chunk], now)
            else:
                stored = await self._insert_each(conn, [puts[i] for i in chunk], now)
            for i in chunk:
                results[i] = puts[i].queue in stored
            stored_queues |= stored
        if self._hub is not None:
            for queue in stored_queues:
                self._hub.notify(queue)
        await self._maybe_cleanup()
        return results

    async def _insert_chunk(
        self, conn: aiosqlite.Connection, puts: list[Put], now: float
    ) -> set[str]:
        params: list[Any] = []
        for p in puts:
            params += (p.queue, now + p.expiry, p.payload, p.capacity)
        params.append(now)
        rows = await self._rows(conn, _sql.insert_many(len(puts)), params)
        return {row[0] for row in rows}

    async def _insert_each(
        self, conn: aiosqlite.Connection, puts: list[Put], now: float
    ) -> set[str]:
        stored: set[str] = set()
        for p in puts:
            params = _sql.insert_params(p.queue, p.payload, now + p.expiry, p.capacity, now)
            cursor = await self._run(conn, _sql.INSERT, params)
            if cursor.rowcount == 1:
                stored.add(p.queue)
        return stored

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        """Put payloads back at the head of ``queue``, in one statement.

        See :meth:`Backend.restore`. Cancelled, it learns whether the statement ran
        (it hands each row it inserts to ``layers_keep``, once it holds SQLite's
        write lock, and a later statement on the same connection returns after it):
        True if so, False if it never ran, the cancellation staying requested.
        """
        conn = self._connection()
        now = time.time()
        token = next(self._tokens)
        self._kept[token] = []
        params: list[Any] = []
        for position, (payload, expiry) in enumerate(payloads):
            params += (position, now + expiry, payload)
        params += (len(payloads), queue, token)
        try:
            await self._run(conn, _sql.restore(len(payloads)), params)
        except asyncio.CancelledError:
            ran = await self._ran_after_cancel(conn, token)
            if ran is None:
                raise  # unknown: the connection failed
            if not ran:
                return False
        finally:
            self._kept.pop(token, None)
        if self._hub is not None:
            self._hub.notify(queue)
        return True

    async def _ran_after_cancel(self, conn: aiosqlite.Connection, token: int) -> bool | None:
        """Whether the restore of ``token``, whose caller was cancelled, ran.

        The restore hands its rows to ``layers_keep`` only once it holds the write lock,
        after which only an I/O error could undo it. None: unknown.
        """
        if await self._after_pending(conn, "SELECT 1") is None:
            return None
        return bool(self._kept.get(token))

    @staticmethod
    async def _after_pending(
        conn: aiosqlite.Connection, query: str, params: Sequence[Any] = ()
    ) -> list[Any] | None:
        """Run the read-only ``query`` on ``conn`` to its end, cancelled or not; its rows.

        It returns after every statement handed to ``conn`` before it (one thread, in
        order), which is how a cancelled caller learns what its own statement did.
        Cancelled meanwhile, it waits on (up to ``_KEPT_WAIT`` s), the cancellation
        staying requested. None: it failed or took too long.
        """
        deadline = time.monotonic() + _KEPT_WAIT
        while time.monotonic() < deadline:
            try:
                return list(await conn.execute_fetchall(query, params))
            except asyncio.CancelledError:
                continue  # cancelled again while waiting: wait on
            except Exception:
                return None
        return None

    # -- receiving ------------------------------------------------------------------

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        """Atomically take up to ``limit`` oldest unexpired payloads; see :meth:`Backend.receive`.

        One ``DELETE ... RETURNING`` (or, before SQLite 3.35, ``BEGIN IMMEDIATE``,
        SELECT, DELETE, COMMIT), so a payload is returned by one call in one process
        only. Waits for an in-process send to wake it at once, or for the watcher to
        see another process's commit (within ``poll_interval``).

        Cancellation loses nothing: while waiting no payload is held; a take already
        running finishes, and its payloads are returned (the cancellation staying
        requested, see :meth:`Backend.receive`), or, before SQLite 3.35, kept for the
        next ``receive`` of ``queue`` on this instance.
        """
        conn = self._connection()
        taking = self._taking.get(queue)
        if taking is not None:
            await asyncio.wait([taking])  # a cancelled call's take: its rows go to the stash
        stashed = self._from_stash(queue, limit)
        if stashed:
            return stashed
        hub = self._hub
        if hub is None:
            raise LayerClosed(f"the SQLite backend for {self.path} is not open")

        async def claim() -> list[bytes]:
            hub.watch()  # after arming: the watcher sees the queue from its next poll
            return [payload for _, payload in await self._take(conn, queue, limit)]

        return await wait_then_claim(claim, WaiterSignal(hub.waiters, queue), timeout=timeout)

    async def _take(self, conn: aiosqlite.Connection, queue: str, limit: int) -> list[_Row]:
        """Run one take shielded from the caller's cancellation (see :meth:`receive`).

        With ``RETURNING`` (see :meth:`_take_kept`), a caller cancelled meanwhile (its
        event loop ending included) waits for the take and returns its rows, the
        cancellation staying requested (see :meth:`Backend.receive`), or raises
        ``CancelledError`` if it took none. Before SQLite 3.35, a cancelled caller's
        rows go to the stash.
        """
        if self._returning:
            return await self._take_kept(conn, queue, limit)
        task = self._spawn(self._take_rows(conn, queue, limit))
        self._taking[queue] = task
        try:
            rows: list[_Row] = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(self._keep_orphan, queue))
            raise
        except BaseException:
            self._forget_take(queue, task)
            raise
        self._forget_take(queue, task)
        return rows

    async def _take_kept(self, conn: aiosqlite.Connection, queue: str, limit: int) -> list[_Row]:
        """One ``DELETE … RETURNING`` whose rows are also kept, as it runs, for a cancelled caller.

        The statement calls ``layers_keep`` for each row it deletes, in aiosqlite's
        thread, which stores the row under this take's token: cancelling the caller
        does not stop the statement (aiosqlite runs what it was handed), and its
        rows would otherwise go to a future nobody reads.
        """
        token = next(self._tokens)
        self._kept[token] = []
        try:
            rows = await self._rows(conn, _sql.TAKE_KEEPING, (queue, time.time(), limit, token))
        except asyncio.CancelledError:
            kept = await self._kept_after_cancel(conn, token)
            if not kept:
                raise
            return kept  # the cancellation stays requested (see Backend.receive)
        finally:
            self._kept.pop(token, None)
        rows.sort()  # RETURNING order is unspecified; id order is FIFO
        return [(expires_at, payload) for _, expires_at, payload, _ in rows]

    async def _kept_after_cancel(self, conn: aiosqlite.Connection, token: int) -> list[_Row]:
        """The rows a take whose caller was cancelled deleted (none if it failed).

        The rows kept are this process's only if the take committed, which the rows'
        absence from the table shows (a failed take rolled back, leaving every one).
        Unknown (the connection failed): none, as at-most-once wants.
        """
        if await self._after_pending(conn, "SELECT 1") is None:
            return []
        kept = self._kept.pop(token, [])
        if not kept:
            return []
        ids = [row[0] for row in kept]
        marks = ",".join("?" * len(ids))
        left = await self._after_pending(
            conn, f"SELECT count(*) FROM layers_messages WHERE id IN ({marks})", ids
        )
        if left is None or int(left[0][0]):
            return []  # unknown, or the take failed and rolled back: its rows are queued
        kept.sort()
        return [(expires_at, payload) for _, expires_at, payload in kept]

    def _keep_row(self, token: int, ident: int, expires_at: float, payload: bytes) -> None:
        """``layers_keep``: in aiosqlite's thread, each row a take deletes (a restore inserts).

        Kept only while the call that made ``token`` waits for it: a statement that
        outlives its caller (one that gave up after ``_KEPT_WAIT``) leaves nothing behind.
        """
        rows = self._kept.get(token)
        if rows is not None:
            rows.append((ident, expires_at, payload))

    def _forget_take(self, queue: str, task: asyncio.Task[list[_Row]]) -> None:
        if self._taking.get(queue) is task:
            del self._taking[queue]

    def _keep_orphan(self, queue: str, task: asyncio.Task[list[_Row]]) -> None:
        """Stash the rows of a take whose caller was cancelled."""
        self._forget_take(queue, task)
        if task.cancelled() or task.exception() is not None:
            return
        rows = task.result()
        if rows:
            self._stash.setdefault(queue, deque()).extend(rows)

    def _from_stash(self, queue: str, limit: int) -> list[bytes]:
        stash = self._stash.get(queue)
        if not stash:
            return []
        now = time.time()
        out: list[bytes] = []
        while stash and len(out) < limit:
            expires_at, payload = stash.popleft()
            if expires_at > now:
                out.append(payload)
        if not stash:
            del self._stash[queue]
        return out

    async def _take_rows(self, conn: aiosqlite.Connection, queue: str, limit: int) -> list[_Row]:
        now = time.time()
        if self._returning:
            rows = await self._rows(conn, _sql.TAKE, (queue, now, limit))
            rows.sort()  # RETURNING order is unspecified; id order is FIFO
        else:
            async with self._lock, self._transaction(conn):
                with translate(self.path):
                    rows = list(
                        await conn.execute_fetchall(_sql.SELECT_OLDEST, (queue, now, limit))
                    )
                    if rows:
                        await conn.execute(_sql.delete_ids(len(rows)), [r[0] for r in rows])
        return [(expires_at, payload) for _, expires_at, payload in rows]

    # -- groups ---------------------------------------------------------------------

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        """Add or refresh a membership (one statement); see :meth:`Backend.group_add`."""
        conn = self._connection()
        await self._run(conn, _sql.GROUP_ADD, (group, channel, time.time() + expiry))
        await self._maybe_cleanup()

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove a membership (one statement); see :meth:`Backend.group_discard`."""
        conn = self._connection()
        await self._run(conn, _sql.GROUP_DISCARD, (group, channel))

    async def group_channels(self, group: str) -> list[str]:
        """Return the unexpired members (read-only); see :meth:`Backend.group_channels`."""
        conn = self._connection()
        rows = await self._rows(conn, _sql.GROUP_CHANNELS, (group, time.time()))
        return [row[0] for row in rows]

    async def statistics(self) -> BackendStatistics:
        """Two read-only aggregate queries; see :meth:`Backend.statistics`."""
        conn = self._connection()
        now = time.time()
        rows = await self._rows(conn, _sql.QUEUE_STATISTICS, (now,))
        groups = await self._rows(conn, _sql.GROUP_STATISTICS, (now,))
        return BackendStatistics(
            [QueueStatistics(str(q), int(n), float(first) - now) for q, n, first in rows],
            {str(g): int(n) for g, n in groups},
        )

    # -- maintenance ----------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every message and membership in the file, in one transaction.

        Cancellation: the transaction still runs to its end (all or nothing).
        """
        conn = self._connection()
        self._stash.clear()
        await asyncio.shield(self._spawn(self._flush(conn)))

    async def _flush(self, conn: aiosqlite.Connection) -> None:
        async with self._lock, self._transaction(conn):
            with translate(self.path):
                for statement in _sql.FLUSH:
                    await conn.execute(statement)

    async def _maybe_cleanup(self) -> None:
        """Every ``cleanup_interval``: delete a batch of expired rows, checkpoint the WAL.

        Never raises: a failed cleanup is logged and retried next interval.
        """
        now = time.monotonic()
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + self.cleanup_interval
        conn = self._conn
        if conn is None:
            return
        try:
            wall = time.time()
            cursor = await self._run(conn, _sql.DELETE_EXPIRED_MESSAGES, (wall, _CLEANUP_BATCH))
            full = cursor.rowcount >= _CLEANUP_BATCH
            cursor = await self._run(conn, _sql.DELETE_EXPIRED_GROUPS, (wall, _CLEANUP_BATCH))
            full = full or cursor.rowcount >= _CLEANUP_BATCH
            await self._run(conn, _sql.DELETE_EMPTY_QUEUES, (_CLEANUP_BATCH,))
            await self._run(conn, _sql.CHECKPOINT, ())
        except (BackendError, LayerClosed) as exc:
            logger.warning("cleanup of %s failed: %s", self.path, exc)
            return
        if full:  # more to delete: do the next batch on the next call
            self._next_cleanup = now


def _chunks(puts: Sequence[Put]) -> list[list[int]]:
    """Split put indices into chunks in which every queue appears at most once."""
    chunks: list[list[int]] = []
    current: list[int] = []
    seen: set[str] = set()
    for i, put in enumerate(puts):
        if put.queue in seen or len(current) >= _SEND_MANY_CHUNK:
            chunks.append(current)
            current, seen = [], set()
        current.append(i)
        seen.add(put.queue)
    if current:
        chunks.append(current)
    return chunks
