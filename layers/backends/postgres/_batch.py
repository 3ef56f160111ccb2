"""Auto-batching of the hot statements: what one event loop issues together is one round trip.

``send`` and ``receive`` statements submitted while a batch is in flight wait in a
list; when the batch returns, the next one takes them all and runs them in one
psycopg pipeline: one network write, one Sync, so one implicit transaction. The
statements run in submission order, and each sees the effect of the earlier ones
(a receive finds a row sent in the same batch). One batch is in flight at a time,
so the per-queue order of sends is their submission order.

Failure rules (at-most-once):

* the batch fails with a SQL error (not a lost connection): the server rolled the
  whole transaction back, so no statement had any effect; each is run again on its
  own so that one bad statement fails alone;
* the connection fails: the outcome is unknown, every statement of the batch fails
  with the error and none is sent again.

Cancelling a caller before its statement left removes it from the batch; after
that, the statement runs (a send is stored or not, a receive's rows are lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["Batcher", "Lease", "Single"]

#: Lease a connection, run ``fn`` on it, give it back (see ``PostgresBackend._lease``).
Lease = Callable[[Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]], Awaitable[Any]]
#: Run one statement on its own: ``(query, params) -> rows`` (with error translation).
Single = Callable[[sql.Composed, Sequence[Any] | dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]

_MAX_BATCH = 256

_Params = Sequence[Any] | dict[str, Any]
_Rows = list[tuple[Any, ...]]
#: (statement, parameters, queues it sends to, the caller's future)
_Op = tuple[sql.Composed, _Params, tuple[str, ...], "asyncio.Future[_Rows]"]


class Batcher:
    """Coalesce statements submitted in one event loop into pipelined batches.

    Up to ``parallel`` batches are in flight at once (on as many connections); a
    send waits while a batch holding an earlier send to one of its queues is in
    flight, which keeps the per-queue order of sends.
    """

    def __init__(self, lease: Lease, single: Single, *, parallel: int = 2) -> None:
        self._lease = lease
        self._single = single
        self._parallel = max(1, parallel)
        self._pending: list[_Op] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: dict[str, int] = {}  # queue -> in-flight batches sending to it
        self._closed = False

    async def run(
        self, query: sql.Composed, params: _Params, queues: tuple[str, ...] = ()
    ) -> _Rows:
        """Run ``query`` (which sends to ``queues``) in the next batch; return its rows.

        Raises what the statement (or the batch's connection) raised. Cancellation
        before the batch leaves drops the statement; after, it runs anyway.
        """
        if self._closed:
            return await self._single(query, params)  # raises: the backend is closed
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Rows] = loop.create_future()
        self._pending.append((query, params, queues, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if self._pending and not self._closed and len(self._tasks) < self._parallel:
            task = asyncio.get_running_loop().create_task(
                self._flush(), name="layers-postgres-batch"
            )
            self._tasks.add(task)

    async def aclose(self) -> None:
        """Stop the flushing tasks; pending callers get :class:`asyncio.CancelledError`."""
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
                self._tasks.discard(task)
        pending, self._pending = self._pending, []
        for op in pending:
            op[3].cancel()

    def _take(self) -> list[_Op]:
        """Remove the next batch from the pending list (order-preserving per queue)."""
        taken: list[_Op] = []
        kept: list[_Op] = []
        blocked: set[str] = set()
        busy = self._busy
        for op in self._pending:
            if op[3].done():
                continue
            queues = op[2]
            if len(taken) >= _MAX_BATCH or any(q in busy or q in blocked for q in queues):
                blocked.update(queues)
                kept.append(op)
            else:
                taken.append(op)
        self._pending = kept
        for op in taken:
            for q in op[2]:
                busy[q] = busy.get(q, 0) + 1
        return taken

    def _done(self, ops: list[_Op]) -> None:
        busy = self._busy
        for op in ops:
            for q in op[2]:
                left = busy.get(q, 0) - 1
                if left > 0:
                    busy[q] = left
                else:
                    busy.pop(q, None)

    async def _flush(self) -> None:
        try:
            await self._flush_all()
        finally:
            # Synchronously (no await since the last look at the pending list), so a
            # statement submitted from now on starts a new task.
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)

    async def _flush_all(self) -> None:
        while self._pending:
            ops = self._take()
            if not ops:
                return  # what is left waits for a batch in flight; its end kicks
            try:
                if len(ops) == 1:
                    await self._alone(ops[0])
                else:
                    await self._batch(ops)
            except BaseException as exc:  # cancelled on close: fail what is left
                for op in ops:
                    future = op[3]
                    if not future.done():
                        if isinstance(exc, Exception):
                            future.set_exception(exc)
                        else:
                            future.cancel()
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._done(ops)
                if self._pending:
                    self._kick()

    async def _alone(self, op: _Op) -> None:
        query, params, _, future = op
        try:
            rows = await self._single(query, params)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(rows)

    async def _batch(self, ops: list[_Op]) -> None:
        async def pipelined(conn: psycopg.AsyncConnection[Any]) -> list[list[tuple[Any, ...]]]:
            cursors = []
            async with conn.pipeline():
                for query, params, _, _ in ops:
                    cur = conn.cursor(binary=True)
                    await cur.execute(query, params)
                    cursors.append(cur)
            return [await cur.fetchall() for cur in cursors]

        try:
            results = await self._lease(pipelined)
        except psycopg.OperationalError as exc:
            # Lost connection: outcome unknown, never re-run.
            for _, _, _, future in ops:
                if not future.done():
                    future.set_exception(exc)
            return
        except psycopg.Error:
            # The implicit transaction was rolled back: nothing happened; isolate.
            for op in ops:
                await self._alone(op)
            return
        for (_, _, _, future), rows in zip(ops, results, strict=True):
            if not future.done():
                future.set_result(rows)
