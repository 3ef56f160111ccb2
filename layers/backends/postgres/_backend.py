"""The PostgreSQL backend class (see the package docstring for the user-facing summary)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from layers.backends.postgres import _inbox, _options, _sql
from layers.backends.postgres._batch import Batcher, Row
from layers.backends.postgres._listener import Listener, _Watch, notify_channel
from layers.core.backend import (
    Backend,
    BackendStatistics,
    Capability,
    GroupPayload,
    Put,
    QueueStatistics,
)
from layers.core.errors import BackendError, BackendUnavailable, ConfigurationError
from layers.core.layer import ChannelLayer

__all__ = ["PostgresBackend", "PostgresChannelLayer"]

logger = logging.getLogger("layers.postgres")

# (conninfo, schema) pairs whose schema this process has already checked.
_READY: set[tuple[str, str]] = set()
_READY_LOCK = threading.Lock()

_Params = Sequence[Any] | Mapping[str, Any] | None
_IDLE = psycopg.pq.TransactionStatus.IDLE
#: How long delivered inbox ids wait to be deleted together.
_DELETE_DELAY = 0.05


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
        self._pool: AsyncConnectionPool[Any] | None = None
        self._listener: Listener | None = None
        self._local: dict[str, asyncio.Event] = {}  # poll-only: in-process wake-ups
        self._cleanup: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._channels: dict[str, str] = {}
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._waiting = 0  # tasks blocked in pool.getconn()
        self._batcher = Batcher(self._lease, self._query, self._sql)
        # Reply inboxes whose notes this instance reads (see ``_inbox``).
        self._ledgers: dict[str, _inbox.InboxLedger] = {}
        self._to_delete: dict[str, list[int]] = {}
        self._deleting: dict[str, asyncio.Task[None]] = {}

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
        s = self._settings
        kwargs: dict[str, Any] = {"autocommit": True}
        if s.poll_only:
            kwargs["prepare_threshold"] = None  # transaction poolers: no named statements
        configure = None if s.poll_only or s.synchronous_commit is None else self._configure
        if (self._conninfo, s.schema) not in _READY:
            # The first open in this process connects once by itself, so a wrong
            # database, bad credentials or a refused connection fail at once with
            # the server's message (the pool would retry in the background until
            # pool_timeout and log the cause instead).
            await self._probe(kwargs)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._conninfo,
            kwargs=kwargs,
            min_size=s.pool_min_size,
            max_size=s.pool_max_size,
            timeout=s.pool_timeout,
            configure=configure,
            open=False,
            name=f"channel-layers:{s.schema}",
        )
        try:
            # Wait for the first connection: a background attempt still running when
            # an async_to_sync call ends is cancelled by asyncio.run(), which
            # psycopg_pool logs as "error connecting" with an empty reason.
            with self._translate():
                await pool.open(wait=True, timeout=s.pool_timeout)
            self._pool = pool
            await self._ensure_schema()
        except BaseException:
            self._pool = None
            await pool.close(timeout=1.0)
            raise
        if not s.poll_only:
            self._listener = Listener(self._conninfo, {})
        self._cleanup = asyncio.get_running_loop().create_task(
            self._cleanup_loop(), name="layers-postgres-cleanup"
        )

    async def _probe(self, kwargs: dict[str, Any]) -> None:
        """Connect once, outside the pool; raise :class:`BackendUnavailable` with the cause."""
        timeout = self._settings.pool_timeout
        try:
            async with asyncio.timeout(timeout):
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **kwargs)
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"cannot connect to PostgreSQL: no answer within pool_timeout={timeout:g} s"
            ) from exc
        except psycopg.Error as exc:
            raise BackendUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        await conn.close()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        value = self._settings.synchronous_commit
        await conn.execute(sql.SQL("SET synchronous_commit TO {}").format(sql.Literal(value)))

    async def aclose(self) -> None:
        """Stop the listener and cleanup tasks, close the pool. Idempotent, never raises."""
        for task in (self._cleanup, self._checking):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._cleanup = self._checking = None
        await self._close_inboxes()
        await self._batcher.aclose()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.aclose()
        pool, self._pool = self._pool, None
        held, self._idle[:] = list(self._idle), []
        if pool is not None:
            # Take the pool's idle connections out first and hand them back once it
            # is closed (putconn then closes them): when asyncio.run() has already
            # cancelled the pool's workers (the end of an async_to_sync call),
            # pool.close() stops before closing its idle connections, which would
            # stay open on the server until garbage-collected.
            for _ in range(pool.get_stats().get("pool_available", 0)):
                try:
                    held.append(await pool.getconn(timeout=0.1))
                except Exception:
                    break
            try:
                await pool.close(timeout=2.0)
            except asyncio.CancelledError:
                # asyncio.run() cancels the pool's worker tasks before the layer
                # closes with the loop; only re-raise a cancellation of aclose itself.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:
                logger.debug("error closing the pool", exc_info=True)
            finally:
                for conn in held:
                    with contextlib.suppress(Exception):
                        await pool.putconn(conn)

    # -- helpers ------------------------------------------------------------------------

    def _channel(self, queue: str) -> str:
        channel = self._channels.get(queue)
        if channel is None:
            if len(self._channels) > 4096:
                self._channels.clear()
            channel = self._channels[queue] = notify_channel(self._settings.schema, queue)
        return channel

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """Map driver errors to ours; start a pool check after a lost connection."""
        try:
            yield
        except PoolTimeout as exc:
            raise BackendUnavailable(f"no PostgreSQL connection available: {exc}") from exc
        except psycopg.OperationalError as exc:
            self._check_pool()
            raise BackendError(f"PostgreSQL connection failed: {exc}") from exc
        except psycopg.Error as exc:
            raise BackendError(f"PostgreSQL error: {exc}") from exc

    def _check_pool(self) -> None:
        """Drop the pool's other broken idle connections (after a restart) in the background."""
        pool = self._pool
        if pool is not None and (self._checking is None or self._checking.done()):

            async def check() -> None:
                with contextlib.suppress(Exception):
                    await self._release_idle()
                    await pool.check()

            self._checking = asyncio.get_running_loop().create_task(check())

    async def _query(
        self, query: bytes, params: _Params = None, *, rows: bool = True
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a pooled connection; re-create a dropped schema once."""
        for attempt in (0, 1):
            try:
                with self._translate():
                    result = await self._run(query, params, rows)
                    return result if isinstance(result, list) else []
            except BackendError as exc:
                missing = (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName)
                if attempt or not isinstance(exc.__cause__, missing):
                    raise
            # The statement failed before doing anything: safe to run it again.
            self._forget_schema()
            await self._ensure_schema()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, query: bytes, params: _Params, rows: bool) -> list[tuple[Any, ...]] | int:
        """Execute on a leased connection: rows if ``rows``, else the row count."""

        async def execute(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]] | int:
            cur = await conn.execute(query, params, binary=params is not None)
            return await cur.fetchall() if rows else int(cur.rowcount)

        result: list[tuple[Any, ...]] | int = await self._lease(execute)
        return result

    async def _lease(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]) -> Any:
        """Run ``fn`` on a connection kept checked out of the pool between uses.

        A pool round trip costs as much as a short query; a connection that failed
        or is not idle goes back to the pool, which repairs or replaces it.
        """
        pool = self._pool
        if pool is None:
            raise BackendError("the PostgreSQL backend is not open")
        idle = self._idle
        if idle:
            conn = idle.pop()
        else:
            self._waiting += 1
            try:
                conn = await pool.getconn()
            finally:
                self._waiting -= 1
        reuse = False
        try:
            result = await fn(conn)
            # Keep it unless a task waits in getconn() (it would starve) or it is dirty.
            reuse = (
                not self._waiting and conn.pgconn.transaction_status == _IDLE and self._pool is pool
            )
            return result
        finally:
            if reuse:
                idle.append(conn)
            else:
                await pool.putconn(conn)

    async def _release_idle(self) -> None:
        """Give leased idle connections back to the pool (for its health checks)."""
        pool, idle = self._pool, self._idle
        while idle:
            conn = idle.pop()
            if pool is not None:
                with contextlib.suppress(Exception):
                    await pool.putconn(conn)

    def _forget_schema(self) -> None:
        with _READY_LOCK:
            _READY.discard((self._conninfo, self._settings.schema))

    async def _ensure_schema(self) -> None:
        """Create or migrate the schema once per process, under an advisory lock."""
        key = (self._conninfo, self._settings.schema)
        if key in _READY or self._pool is None:
            return
        s = self._settings
        with self._translate():
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(self._sql.lock)
                await conn.execute(self._sql.create_schema)
                await conn.execute(self._sql.create_meta)
                row = await (await conn.execute(self._sql.read_version)).fetchone()
                version = int(row[0]) if row else 0
                if version > _sql.SCHEMA_VERSION:
                    raise ConfigurationError(
                        "schema",
                        f"{s.schema!r} has schema version {version}, newer than this "
                        f"release's {_sql.SCHEMA_VERSION}: upgrade channel-layers",
                    )
                steps = _sql.migrations(s.schema, unlogged=s.unlogged)
                for step in range(version + 1, _sql.SCHEMA_VERSION + 1):
                    for statement in steps[step]:
                        await conn.execute(statement)
                if version != _sql.SCHEMA_VERSION:
                    await conn.execute(self._sql.write_version, (str(_sql.SCHEMA_VERSION),))
                row = await (await conn.execute(self._sql.persistence)).fetchone()
        if row is not None and bool(row[0]) != s.unlogged:
            logger.warning(
                "table %s.messages is %s but the unlogged option is %s; the existing "
                "table is kept (change it with ALTER TABLE … SET %s)",
                s.schema,
                "UNLOGGED" if row[0] else "LOGGED",
                s.unlogged,
                "UNLOGGED" if s.unlogged else "LOGGED",
            )
        with _READY_LOCK:
            _READY.add(key)

    # -- primitives -------------------------------------------------------------------

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        """Count, insert and maybe NOTIFY in one autocommit statement; see :meth:`Backend.send`.

        Runs in the next auto-batch (see ``_batch``), merged with the batch's other
        sends into one multi-row statement. Capacity is checked in the statement; it
        is exact within one process, senders in several processes may overshoot it by
        their number (READ COMMITTED). Cancellation: stored entirely or not at all.
        """
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

    def _notify(self, queue: str) -> str | None:
        return self._channel(queue) if self._settings.notify else None

    async def _store(self, rows: list[Row]) -> list[bool]:
        with self._translate():
            stored = await self._batcher.send(rows)
        for row, ok in zip(rows, stored, strict=True):
            if ok:
                self._wake_local(row[0])
        return stored

    def _wake_local(self, queue: str) -> None:
        event = self._local.get(queue)
        if event is not None:
            event.set()

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        """Claim and delete up to ``limit`` rows, else wait for a wake-up or the poll.

        See :meth:`Backend.receive`. Each attempt is one autocommit ``DELETE …
        RETURNING`` whose claim skips rows other readers hold, so a payload is
        returned once at most. Cancellation while waiting loses nothing; a cancelled
        ``DELETE`` is rolled back by the server unless it had already committed, in
        which case its rows are lost (never duplicated).
        """
        deadline = time.monotonic() + timeout
        listener = self._listener
        channel = self._channel(queue)
        watch = None
        if listener is not None:
            watch = listener.watch(channel)
            event = watch.event
        else:
            event = self._local.setdefault(queue, asyncio.Event())
        try:
            if watch is not None and not watch.listening.is_set():
                # LISTEN before the first drain, or a send in between waits a poll.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(timeout, self._poll)):
                        await watch.listening.wait()
            if watch is not None and self._settings.notify and queue.endswith("!"):
                return await self._inbox_loop(queue, channel, limit, deadline, watch)
            return await self._claim_loop(queue, limit, event, deadline, watch)
        finally:
            if listener is not None:
                listener.release(channel)
            elif self._local.get(queue) is event:
                del self._local[queue]

    async def _claim_loop(
        self,
        queue: str,
        limit: int,
        event: asyncio.Event,
        deadline: float,
        watch: _Watch | None,
    ) -> list[bytes]:
        failures = 0
        # A queue the last claim drained holds nothing new until a NOTIFY sets the
        # event (cleared before that claim, so none is missed): wait for it first
        # instead of paying for a claim that finds nothing. Needs live wake-ups.
        wait_first = (
            watch is not None
            and watch.drained
            and self._settings.notify
            and watch.listening.is_set()
        )
        while True:
            if wait_first and not event.is_set():
                remaining = deadline - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self._poll)):
                        await event.wait()
                if not event.is_set() and deadline - time.monotonic() <= 0:
                    return []
            wait_first = False
            event.clear()
            if watch is not None:
                watch.drained = False
            try:
                with self._translate():
                    rows = await self._batcher.receive(queue, limit)
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
                watch.drained = len(rows) < limit
            if rows:
                return [payload for _, payload in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(min(remaining, self._poll)):
                    await event.wait()
            except TimeoutError:
                if deadline - time.monotonic() <= 0:
                    return []  # the caller's next receive drains first anyway

    # -- reply inboxes: delivery from NOTIFY payloads (see ``_inbox``) ------------------

    def _ledger(self, queue: str) -> _inbox.InboxLedger:
        led = self._ledgers.get(queue)
        if led is None:
            led = self._ledgers[queue] = _inbox.ledger(self._conninfo, self._settings.schema, queue)
        return led

    async def _inbox_loop(
        self, queue: str, channel: str, limit: int, deadline: float, watch: _Watch
    ) -> list[bytes]:
        """Receive from a reply inbox: from its notes when this instance owns them.

        The owner delivers carried payloads without a round trip and claims from
        the table only when a note says so, when rows may lack notes (``gap``), or
        when the poll interval passes. Any other instance claims. Every path goes
        through the ledger, so an id is delivered once. Nothing between taking
        notes and returning awaits: cancellation loses nothing there.
        """
        led = self._ledger(queue)
        owner = led.acquire(self)
        if owner and watch.notes is None:
            watch.notes = _inbox.Notes()
            watch.gap = True
        event = watch.event
        claim = not owner
        while True:
            event.clear()
            if owner and not (watch.gap or watch.need_claim):
                out = self._take_notes(queue, watch, led, limit)
                if out:
                    return out
            if claim or watch.gap or watch.need_claim:
                out = await self._claim_inbox(queue, channel, limit, watch, led, owner)
                if out:
                    return out
                claim = not owner
                if (owner and watch.notes and not watch.gap) or event.is_set():
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                async with asyncio.timeout(min(remaining, self._poll)):
                    await event.wait()
            except TimeoutError:
                if deadline - time.monotonic() <= 0:
                    return []
                claim = True  # the poll: a lost notification cannot strand a row

    def _take_notes(
        self, queue: str, watch: _Watch, led: _inbox.InboxLedger, limit: int
    ) -> list[bytes]:
        """Deliver up to ``limit`` carried payloads from the front of the notes."""
        notes = watch.notes
        out: list[bytes] = []
        ids: list[int] = []
        while notes and len(out) < limit:
            ident, data = notes.popleft()
            if ident == _inbox.CLAIM:
                watch.need_claim = True
                break
            if ident == _inbox.MARKER:
                if watch.discard_until == data:
                    watch.discard_until = None
                led.marker(data)  # type: ignore[arg-type]
                continue
            if watch.discard_until is None and led.take_note(ident):
                out.append(data)  # type: ignore[arg-type]
                ids.append(ident)
        if ids:
            self._delete_later(queue, led, ids)
        return out

    async def _claim_inbox(
        self,
        queue: str,
        channel: str,
        limit: int,
        watch: _Watch,
        led: _inbox.InboxLedger,
        owner: bool,
    ) -> list[bytes]:
        """Claim from the inbox's table rows, skipping ids already delivered."""
        generation = watch.generation
        listening = watch.listening.is_set()
        token = _inbox.new_token()
        started = led.begin_claim()
        rows: list[tuple[Any, ...]] | None = None
        try:
            rows = await self._query(
                self._sql.claim_inbox,
                {"queue": queue, "lim": limit, "channel": channel, "marker": f"m{token}"},
            )
        finally:
            claimed = sorted((int(r[0]), bytes(r[1])) for r in rows or () if r[0] is not None)
            keep = led.end_claim(token, started, [ident for ident, _ in claimed] if rows else None)
        if owner and len(claimed) < limit:
            watch.need_claim = False
            if listening and generation == watch.generation:
                watch.gap = False
        return [payload for (_, payload), ok in zip(claimed, keep, strict=True) if ok]

    def _delete_later(self, queue: str, led: _inbox.InboxLedger, ids: list[int]) -> None:
        self._to_delete.setdefault(queue, []).extend(ids)
        task = self._deleting.get(queue)
        if task is None or task.done():
            self._deleting[queue] = asyncio.get_running_loop().create_task(
                self._delete_loop(queue, led, _DELETE_DELAY), name="layers-postgres-delete"
            )

    async def _delete_loop(self, queue: str, led: _inbox.InboxLedger, delay: float) -> None:
        """Delete the delivered rows of ``queue`` in batches until none are left."""
        failures = 0
        while True:
            if delay:
                await asyncio.sleep(delay)
            ids = self._to_delete.pop(queue, None)
            if not ids:
                return
            try:
                rows = await self._query(self._sql.delete_ids, (queue, ids))
            except BackendError as exc:
                failures += 1
                if failures > 5:
                    # The ids stay in the ledger: a claim skips their rows until
                    # they expire.
                    logger.warning("deleting delivered reply rows failed: %s", exc)
                    return
                self._to_delete.setdefault(queue, []).extend(ids)
                delay = min(2.0, 0.1 * 2**failures)
                continue
            led.deleted(ids, {int(r[0]) for r in rows})

    async def _close_inboxes(self) -> None:
        """Delete what was delivered (best effort), then give up note ownership."""
        for task in list(self._deleting.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._deleting.clear()
        for queue in list(self._to_delete):
            led = self._ledgers.get(queue)
            if led is not None and self._pool is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self._delete_loop(queue, led, 0.0)
        self._to_delete.clear()
        for queue, led in self._ledgers.items():
            led.release(self)
            _inbox.drop_ledger(self._conninfo, self._settings.schema, queue, led)
        self._ledgers.clear()

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
        rows = await self._query(self._sql.group_send, params)
        stored, skipped = int(rows[0][0]), int(rows[0][1])
        if stored and self._local:
            # Poll-only mode: wake this process's own readers of the group's queues.
            for queue in list(self._local):
                self._wake_local(queue)
        return skipped

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        """Insert them below the queue's lowest id, in one statement; see ``Backend.restore``."""
        params = {
            "queue": queue,
            "payloads": [payload for payload, _ in payloads],
            "expiries": [float(expiry) for _, expiry in payloads],
            "channel": self._notify(queue),
        }
        await self._query(self._sql.restore, params)
        self._wake_local(queue)
        return True

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        """Upsert the membership with a new server-clock expiry; see :meth:`Backend.group_add`."""
        await self._query(self._sql.group_add, (group, channel, float(expiry)), rows=False)

    async def group_discard(self, group: str, channel: str) -> None:
        """Delete the membership row if any; see :meth:`Backend.group_discard`."""
        await self._query(self._sql.group_discard, (group, channel), rows=False)

    async def group_channels(self, group: str) -> list[str]:
        """Return the unexpired members; see :meth:`Backend.group_channels`."""
        return [row[0] for row in await self._query(self._sql.group_channels, (group,))]

    async def statistics(self) -> BackendStatistics:
        """Two read-only aggregate queries; see :meth:`Backend.statistics`."""
        queues = await self._query(self._sql.queue_statistics)
        groups = await self._query(self._sql.group_statistics)
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
        await self._query(self._sql.flush, rows=False)
        listener = self._listener
        if listener is None:
            return
        for queue, led in list(self._ledgers.items()):
            watch = listener.peek(self._channel(queue))
            if watch is None or watch.notes is None or led.owner is not self:
                continue
            token = _inbox.new_token()
            watch.notes.clear()
            watch.gap = True
            watch.discard_until = token
            await self._query(self._sql.notify, (self._channel(queue), f"m{token}"))

    # -- maintenance ------------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        """Delete expired rows in batches every ``cleanup_interval`` (with jitter)."""
        s = self._settings
        while True:
            await asyncio.sleep(s.cleanup_interval * random.uniform(0.8, 1.2))
            await self._release_idle()  # let the pool check, age and shrink them
            try:
                await self.cleanup()
            except BackendError as exc:
                logger.warning("cleanup of expired rows failed: %s", exc)

    async def cleanup(self, *, max_batches: int = 20) -> int:
        """Delete expired messages and memberships, ``cleanup_batch`` rows at a time.

        Returns how many message rows were deleted. Rows other sessions hold are
        skipped. Cancellation: batches already committed stay deleted.
        """
        batch = self._settings.cleanup_batch
        total = 0
        for _ in range(max_batches):
            deleted = await self._rowcount(self._sql.cleanup_messages, (batch,))
            total += deleted
            if deleted < batch:
                break
        for _ in range(max_batches):
            if await self._rowcount(self._sql.cleanup_groups, (batch,)) < batch:
                break
        return total

    async def _rowcount(self, query: bytes, params: _Params) -> int:
        with self._translate():
            result = await self._run(query, params, False)
        return result if isinstance(result, int) else 0


class PostgresChannelLayer(ChannelLayer):
    """A :class:`~layers.ChannelLayer` on PostgreSQL: a Django Channels ``BACKEND``.

    ``CONFIG`` takes the layer options plus the backend's (``url``, ``schema``...).
    """

    backend_class = PostgresBackend
