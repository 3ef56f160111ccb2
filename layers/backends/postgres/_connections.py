"""The connections of one PostgreSQL backend instance: pool, leasing, errors and schema.

:class:`Connections` owns the :class:`psycopg_pool.AsyncConnectionPool` (autocommit
connections), keeps connections checked out between uses (a pool round trip costs
as much as a short query), maps driver errors to ours, and creates or migrates the
schema once per process under an advisory lock. Construction does no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from layers.backends.postgres import _direct, _options, _sql
from layers.backends.postgres._tasks import stop
from layers.core.errors import BackendError, BackendUnavailable, ConfigurationError

__all__ = ["Connections", "Params"]

logger = logging.getLogger("layers.postgres")

# (conninfo, schema) pairs whose schema this process has already checked.
_READY: set[tuple[str, str]] = set()
_READY_LOCK = threading.Lock()

#: The parameters of one statement.
Params = Sequence[Any] | Mapping[str, Any] | None
_IDLE = psycopg.pq.TransactionStatus.IDLE


class Connections:
    """The pool of one backend instance, and the connections it keeps leased.

    ``conninfo``, ``settings`` and ``statements`` are the backend's, read-only.
    """

    def __init__(
        self, *, conninfo: str, settings: _options.Settings, statements: _sql.Statements
    ) -> None:
        self.conninfo = conninfo
        self.settings = settings
        self.statements = statements
        self._pool: AsyncConnectionPool[Any] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._waiting = 0  # tasks blocked in pool.getconn()
        #: The hot statements run on libpq directly, by their psycopg text; unnamed for a
        #: transaction pooler, which keeps no prepared statement between transactions.
        self._direct: dict[bytes, _direct.Direct] = {
            d.query: d for d in _sql.direct_statements(statements, prepared=not settings.poll_only)
        }

    def direct(self, query: bytes) -> _direct.Direct | None:
        """The direct form of ``query`` (see ``_direct``), or None if it runs through psycopg."""
        return self._direct.get(query)

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`aclose` has not run since."""
        return self._pool is not None

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool, wait for its first connection, and check the schema.

        See :meth:`PostgresBackend.open`. A cancelled or failed ``open`` closes what
        it opened.
        """
        s = self.settings
        kwargs: dict[str, Any] = {"autocommit": True}
        if s.poll_only:
            kwargs["prepare_threshold"] = None  # transaction poolers: no named statements
        # A transaction pooler keeps no session setting: its statements are planned
        # at each run (unnamed), and send_one sets the plan guard itself.
        configure = None if s.poll_only else self._configure
        if (self.conninfo, s.schema) not in _READY:
            # The first open in this process connects once by itself, so a wrong
            # database, bad credentials or a refused connection fail at once with
            # the server's message (the pool would retry in the background until
            # pool_timeout and log the cause instead).
            await self._probe(kwargs)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.conninfo,
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
            with self.translate():
                await pool.open(wait=True, timeout=s.pool_timeout)
            self._pool = pool
            await self._ensure_schema()
        except BaseException:
            self._pool = None
            await pool.close(timeout=1.0)
            raise

    async def _probe(self, kwargs: dict[str, Any]) -> None:
        """Connect once, outside the pool; raise :class:`BackendUnavailable` with the cause."""
        timeout = self.settings.pool_timeout
        try:
            async with asyncio.timeout(timeout):
                conn = await psycopg.AsyncConnection.connect(self.conninfo, **kwargs)
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"cannot connect to PostgreSQL: no answer within pool_timeout={timeout:g} s"
            ) from exc
        except psycopg.Error as exc:
            raise BackendUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        await conn.close()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Set up a new pooled connection: the plan guard, and ``synchronous_commit``.

        The plan guard is ``enable_seqscan = off`` and ``enable_bitmapscan = off``.
        This session plans its statements once and keeps the plans (prepared
        statements, send_one's PL/pgSQL). A plan made while the messages table is
        empty (as right after a vacuum) scans the whole table. It is kept when the
        table fills up again, and then reads every row of every queue: 12 ms per send
        behind a 50,000-row backlog, instead of 0.25 ms. A plan made on a new table
        (which the planner guesses at ten pages) is a bitmap scan: each claim reads
        and sorts every index entry of its queue, live and dead, instead of stopping
        at the first live one. Every hot statement has an index to walk in order; the
        statistics, which read the whole table, allow a sequential scan again for
        their own transaction.
        """
        commands: list[sql.Composable] = [
            sql.SQL("SET enable_seqscan = off"),
            sql.SQL("SET enable_bitmapscan = off"),
        ]
        value = self.settings.synchronous_commit
        if value is not None:
            commands.append(sql.SQL("SET synchronous_commit TO {}").format(sql.Literal(value)))
        await conn.execute(sql.SQL("; ").join(commands))

    async def stop_checking(self) -> None:
        """Cancel a background pool check, if one runs. Never raises."""
        task, self._checking = self._checking, None
        await stop(task)

    async def aclose(self) -> None:
        """Close the pool and the connections it lent. Idempotent, never raises."""
        await self.stop_checking()
        pool, self._pool = self._pool, None
        held, self._idle[:] = list(self._idle), []
        if pool is None:
            return
        # Take the pool's idle connections out first and hand them back once it is
        # closed (putconn then closes them): when asyncio.run() has already cancelled
        # the pool's workers (the end of an async_to_sync call), pool.close() stops
        # before closing its idle connections, which would stay open on the server
        # until garbage-collected.
        for _ in range(pool.get_stats().get("pool_available", 0)):
            try:
                held.append(await pool.getconn(timeout=0.1))
            except Exception:
                break
        try:
            await pool.close(timeout=2.0)
        except asyncio.CancelledError:
            # asyncio.run() cancels the pool's worker tasks before the layer closes
            # with the loop; only re-raise a cancellation of aclose itself.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except Exception:
            logger.debug("error closing the pool", exc_info=True)
        finally:
            for conn in held:
                with contextlib.suppress(Exception):
                    await pool.putconn(conn)

    # -- statements -------------------------------------------------------------------

    @contextlib.contextmanager
    def translate(self) -> Iterator[None]:
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
                    await self.release_idle()
                    await pool.check()

            self._checking = asyncio.get_running_loop().create_task(check())

    async def query(
        self,
        query: bytes,
        params: Params = None,
        *,
        rows: bool = True,
        scan: bool = False,
        settles: bool = False,
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a pooled connection; re-create a dropped schema once.

        Returns its rows (none when ``rows`` is false). ``scan``: the statement reads
        the whole table (statistics), so it runs in a transaction that allows a
        sequential scan again (see :meth:`_configure`). ``settles``: a caller
        cancelled while it waits for a connection gets :class:`_direct.NotRun` (see
        :attr:`_direct.Direct.settles`). Raises :class:`layers.BackendError` (or
        ``BackendUnavailable``) for driver errors.
        """
        for attempt in (0, 1):
            try:
                with self.translate():
                    result = await (
                        self._scan(query) if scan else self._run(query, params, rows, settles)
                    )
                    return result if isinstance(result, list) else []
            except BackendError as exc:
                missing = (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName)
                if attempt or not isinstance(exc.__cause__, missing):
                    raise
            # The statement failed before doing anything: safe to run it again.
            self._forget_schema()
            await self._ensure_schema()
        raise AssertionError("unreachable")  # pragma: no cover

    async def rowcount(self, query: bytes, params: Params) -> int:
        """Run one statement on a pooled connection and return its row count."""
        with self.translate():
            result = await self._run(query, params, False)
        return result if isinstance(result, int) else 0

    async def _run(
        self, query: bytes, params: Params, rows: bool, settles: bool = False
    ) -> list[tuple[Any, ...]] | int:
        """Execute on a leased connection: rows if ``rows``, else the row count."""
        named = params if rows and isinstance(params, Mapping) else None
        fast = self._direct.get(query) if named is not None else None

        async def execute(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]] | int:
            if fast is not None and named is not None and _direct.usable(conn):
                return await _direct.execute(conn, fast, named)
            cur = await conn.execute(query, params, binary=params is not None)
            return await cur.fetchall() if rows else int(cur.rowcount)

        result: list[tuple[Any, ...]] | int = await self.lease(execute, settles=settles)
        return result

    async def _scan(self, query: bytes) -> list[tuple[Any, ...]]:
        async def execute(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            async with conn.transaction():
                await conn.execute(b"SET LOCAL enable_seqscan = on")
                return await (await conn.execute(query)).fetchall()

        result: list[tuple[Any, ...]] = await self.lease(execute)
        return result

    # -- leasing ----------------------------------------------------------------------

    async def lease(
        self,
        fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]],
        *,
        settles: bool = False,
    ) -> Any:
        """Run ``fn`` on a connection kept checked out of the pool between uses.

        A pool round trip costs as much as a short query; a connection that failed
        or is not idle goes back to the pool, which repairs or replaces it. With
        ``settles``, a cancellation while waiting for a connection raises
        :class:`_direct.NotRun`: ``fn`` never ran.
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
            except asyncio.CancelledError:
                if settles:
                    raise _direct.NotRun from None
                raise
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

    async def release_idle(self) -> None:
        """Give leased idle connections back to the pool (for its health checks)."""
        pool, idle = self._pool, self._idle
        while idle:
            conn = idle.pop()
            if pool is not None:
                with contextlib.suppress(Exception):
                    await pool.putconn(conn)

    # -- schema -----------------------------------------------------------------------

    def _forget_schema(self) -> None:
        with _READY_LOCK:
            _READY.discard((self.conninfo, self.settings.schema))

    async def _ensure_schema(self) -> None:
        """Create or migrate the schema once per process, under an advisory lock."""
        key = (self.conninfo, self.settings.schema)
        if key in _READY or self._pool is None:
            return
        with self.translate():
            async with self._pool.connection() as conn:
                # A current schema needs nothing more: a role allowed only to use the
                # tables (not to create a schema in the database) can run the layer.
                if await self._version(conn) != _sql.SCHEMA_VERSION:
                    async with conn.transaction():
                        await conn.execute(self.statements.lock)
                        await conn.execute(self.statements.create_schema)
                        await conn.execute(self.statements.create_meta)
                        row = await (await conn.execute(self.statements.read_version)).fetchone()
                        await self._migrate(conn, int(row[0]) if row else 0)
                row = await (await conn.execute(self.statements.persistence)).fetchone()
        s = self.settings
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

    async def _version(self, conn: psycopg.AsyncConnection[Any]) -> int | None:
        """The schema's recorded version, or None when it has no ``meta`` table yet."""
        try:
            row = await (await conn.execute(self.statements.read_version)).fetchone()
        except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName):
            return None  # autocommit: the failed statement left no transaction behind
        return int(row[0]) if row else None

    async def _migrate(self, conn: psycopg.AsyncConnection[Any], version: int) -> None:
        """Migrate from ``version`` in the caller's transaction; refuse a newer schema."""
        s = self.settings
        if version > _sql.SCHEMA_VERSION:
            raise ConfigurationError(
                "schema",
                f"{s.schema!r} has schema version {version}, newer than this "
                f"release's {_sql.SCHEMA_VERSION}: upgrade channel-layers",
            )
        if version == _sql.SCHEMA_VERSION:
            return
        steps = _sql.migrations(s.schema, unlogged=s.unlogged)
        for step in range(version + 1, _sql.SCHEMA_VERSION + 1):
            for statement in steps.get(step, ()):
                await conn.execute(statement)
        for statement in _sql.functions(s.schema):
            await conn.execute(statement)
        await conn.execute(self.statements.write_version, (str(_sql.SCHEMA_VERSION),))
