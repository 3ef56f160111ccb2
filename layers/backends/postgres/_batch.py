"""Auto-batching of the hot statements: what one event loop issues together is one round trip.

Sends and receives submitted while a batch is in flight wait in a list; when the
batch returns, the next one takes them all and runs them as at most **two
statements**, pipelined (one network write, one Sync, so one implicit transaction):

* every send of the batch in one multi-row ``INSERT`` (``send_batch``), rows in
  submission order, each with its own capacity check (a running count per queue);
* then every receive in one ``DELETE … RETURNING`` (``receive_batch``) with a
  per-queue limit, which therefore sees the rows sent in the same batch.

A batch of receives alone is that one statement, run on libpq directly (``_direct``)
when its connection allows, without a pipeline; a batch with sends is a libpq
pipeline (``_direct.execute_pipeline``) of the lock, the insert and the claim.

Statement count, not row count, is what a round trip costs on both sides, so a busy
process pays two statements per batch instead of two per message. A lone send or
receive runs as its own single statement; so does a lone hand-off
(:meth:`Batcher.hand`, a send that a waiting claim of this process may take), which
in a batch is a send. One batch holding a send to a queue is in flight at a time, so
the per-queue order of sends is their submission order.

Failure rules (at-most-once):

* the batch fails with a SQL error (not a lost connection): the server rolled the
  whole transaction back, so nothing had any effect; each operation is run again on
  its own so that one bad operation fails alone;
* the connection fails: the outcome is unknown, every operation of the batch fails
  with the error and none is sent again.

Cancelling a caller before its batch left removes its operation from the batch;
after that, it runs: a send is stored or not; a receive waits for its batch and returns
the rows it claimed, the cancellation staying requested (see ``Backend.receive``). A
batch task cancelled itself (its event loop ending) reads its statements on libpq to
their end and hands the claims' rows out (with ``poll_only`` too: the statements are
then unnamed). Only a batch on a connection that was not idle runs through psycopg,
which cancels it on the server: its claimed rows are lost if it had already committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from layers.backends.postgres import _direct
from layers.backends.postgres._sql import Statements
from layers.core.wakeups import outlast

__all__ = ["Batcher", "Lease", "Row", "Single"]

#: Lease a connection, run ``fn`` on it, give it back (see ``Connections.lease``).
Lease = Callable[[Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]], Awaitable[Any]]
#: Run one statement on its own: ``(query, params) -> rows`` (with error translation).
Single = Callable[[bytes, Sequence[Any] | dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]
#: One send: (queue, payload, expiry seconds, capacity, NOTIFY channel or None).
Row = tuple[str, bytes, float, int, str | None]

_MAX_BATCH = 256
#: No outcome yet (an operation's result may be None).
_UNSET: Any = object()


@dataclass(slots=True)
class _Op:
    """One caller's operation: sends (``rows``) or a receive (``queue``, ``limit``)."""

    future: asyncio.Future[Any]
    rows: list[Row] | None = None
    queue: str = ""
    limit: int = 0
    #: A send that a waiting claim of this process may take (``Batcher.hand``).
    hand: bool = False
    #: The distinct queues ``rows`` send to (derived once, read on every batch step).
    sends_to: tuple[str, ...] = field(init=False, default=())
    #: The result, kept for a caller cancelled while its batch ran (``_UNSET`` until then).
    outcome: Any = field(init=False, default=_UNSET)
    #: Its batch has ended (whatever the outcome).
    ended: bool = field(init=False, default=False)
    #: Set by a caller cancelled while its batch ran: resolved when the batch ends.
    late: asyncio.Future[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.rows:
            self.sends_to = tuple(dict.fromkeys(row[0] for row in self.rows))

    def claimed(self) -> bool:
        """A receive that ended holding at least one claimed row."""
        return self.rows is None and self.outcome is not _UNSET and bool(self.outcome[0])

    def resolve(self, result: Any) -> None:
        """Give the caller ``result`` (kept too, should the caller have been cancelled)."""
        self.outcome = result
        if not self.future.done():
            self.future.set_result(result)
        late = self.late
        if late is not None and not late.done():
            late.set_result(None)


def _send_params(rows: Sequence[Row]) -> dict[str, Any]:
    return {
        "queues": [r[0] for r in rows],
        "payloads": [r[1] for r in rows],
        "expiries": [r[2] for r in rows],
        "caps": [r[3] for r in rows],
        "channels": [r[4] for r in rows],
    }


class Batcher:
    """Coalesce sends and receives submitted in one event loop into batches.

    Up to ``parallel`` batches are in flight at once (on as many connections); a
    send waits while a batch holding an earlier send to one of its queues is in
    flight, which keeps the per-queue order of sends.
    """

    def __init__(
        self,
        lease: Lease,
        single: Single,
        statements: Statements,
        *,
        parallel: int = 2,
        direct: Callable[[bytes], _direct.Direct | None] = lambda query: None,
    ) -> None:
        self._lease = lease
        self._single = single
        self._sql = statements
        # The batch statements on libpq directly (see ``_direct``), when allowed: a batch
        # of claims alone is one statement; sends are a pipeline of lock and insert.
        self._claims = direct(statements.receive_batch)
        lock, send = direct(statements.lock_queues), direct(statements.send_batch)
        self._lock_send = (lock, send) if lock is not None and send is not None else None
        self._parallel = max(1, parallel)
        self._pending: list[_Op] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: dict[str, int] = {}  # queue -> in-flight batches sending to it
        self._inline = 0  # operations running in their caller's task
        self._closed = False

    async def send(self, rows: list[Row]) -> list[bool]:
        """Store ``rows`` (in order) in the next batch; return which were stored.

        A row is not stored when its queue holds its capacity of unexpired rows,
        counting the rows before it in the same batch. Raises what the statement
        (or the batch's connection) raised. Cancellation: see the module docstring.
        """
        result: list[bool] = await self._submit(_Op(self._future(), rows=rows))
        return result

    async def hand(self, row: Row) -> tuple[bool, bool]:
        """Send ``row`` for a claim of this process that waits on its queue.

        Returns ``(handed, stored)``. When the operation runs alone and the queue
        holds no live row, nothing is stored and ``handed`` is True: the caller owns
        the payload and gives it to the waiting claim. Otherwise it is a send like
        :meth:`send` (in a batch, always), and ``handed`` is False.
        """
        result: tuple[bool, bool] = await self._submit(_Op(self._future(), rows=[row], hand=True))
        return result

    async def receive(self, queue: str, limit: int) -> tuple[list[tuple[int, bytes]], bool]:
        """Claim and delete up to ``limit`` rows of ``queue``.

        Returns their ``(id, payload)`` by id, and whether the queue may hold more: False
        means the claim saw no live row beyond those it took, so a row stored later is
        announced by a NOTIFY sent after the claim started.
        """
        result: tuple[list[tuple[int, bytes]], bool] = await self._submit(
            _Op(self._future(), queue=queue, limit=limit)
        )
        return result

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, op: _Op) -> Any:
        if self._closed:
            await self._alone(op)  # raises: the backend is closed
            return op.future.result()
        if not self._tasks and not self._pending and not self._inline:
            # Nothing in flight: run it here, without a hop through a flushing task.
            # What is submitted meanwhile queues up and leaves as the next batch.
            self._inline += 1
            self._mark_busy([op])
            try:
                await self._alone(op)
            except asyncio.CancelledError:
                # Cancelled once its claim had finished: the rows are in the future.
                if not op.claimed():
                    raise
            finally:
                self._inline -= 1
                self._done([op])
                self._kick()
            return op.future.result()
        self._pending.append(op)
        self._kick()
        try:
            return await op.future
        except asyncio.CancelledError:
            if op in self._pending:
                self._pending.remove(op)  # not sent: nothing happens
                op.future.cancel()
                raise
            if op.rows is not None:
                raise  # a send in flight: stored or not, as its batch goes
            # A claim in flight: its rows are this caller's (``resolve`` keeps them).
            # Wait for the batch; it ends by itself, its statements drained if its
            # own task is cancelled.
            if op.outcome is _UNSET and not op.ended:
                op.late = asyncio.get_running_loop().create_future()
                await outlast(op.late)
            if op.claimed():
                return op.outcome
            raise

    def _mark_busy(self, ops: list[_Op]) -> None:
        """Count ``ops`` as in flight for the queues they send to (undone by ``_done``)."""
        busy = self._busy
        for op in ops:
            for q in op.sends_to:
                busy[q] = busy.get(q, 0) + 1

    def _kick(self) -> None:
        if self._pending and not self._closed and len(self._tasks) + self._inline < self._parallel:
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
            op.future.cancel()

    def _take(self) -> list[_Op]:
        """Remove the next batch from the pending list (order-preserving per queue)."""
        taken: list[_Op] = []
        kept: list[_Op] = []
        blocked: set[str] = set()
        receiving: set[str] = set()
        busy = self._busy
        for op in self._pending:
            if op.future.done():
                # Cancelled while it waited (nothing else resolves a pending op): it
                # never runs. Ended, so its caller raises instead of waiting for it.
                op.ended = True
                continue
            if op.rows is None:
                # One receive per queue and batch: a second would claim the same rows.
                if len(taken) >= _MAX_BATCH or op.queue in receiving:
                    kept.append(op)
                else:
                    receiving.add(op.queue)
                    taken.append(op)
                continue
            queues = op.sends_to
            if len(taken) >= _MAX_BATCH or any(q in busy or q in blocked for q in queues):
                blocked.update(queues)
                kept.append(op)
            else:
                taken.append(op)
        self._pending = kept
        self._mark_busy(taken)
        return taken

    def _done(self, ops: list[_Op]) -> None:
        busy = self._busy
        for op in ops:
            op.ended = True
            late = op.late
            if late is not None and not late.done():
                late.set_result(None)  # ended without a result: the caller raises
            for q in op.sends_to:
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
                    if not op.future.done():
                        if isinstance(exc, Exception):
                            op.future.set_exception(exc)
                        else:
                            op.future.cancel()
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._done(ops)
                if self._pending:
                    self._kick()

    async def _alone(self, op: _Op) -> None:
        """Run one operation as its own statement (with the schema re-creation of ``single``)."""
        future = op.future
        try:
            if op.rows is None:
                try:
                    rows = await self._single(
                        self._sql.receive, {"queue": op.queue, "lim": op.limit}
                    )
                except _direct.Interrupted as exc:
                    op.resolve(_claim_result(exc.rows))
                    raise asyncio.CancelledError from None
                result: Any = _claim_result(rows)
            elif len(op.rows) == 1:
                queue, payload, expiry, cap, channel = op.rows[0]
                params = {
                    "queue": queue,
                    "payload": payload,
                    "expiry": expiry,
                    "cap": cap,
                    "channel": channel,
                }
                if op.hand:
                    rows = await self._single(self._sql.hand, params)
                    result = (bool(rows[0][0]), bool(rows[0][1]))
                else:
                    rows = await self._single(self._sql.send_locked, params)
                    result = [bool(rows[0][1])]
            else:
                rows = await self._locked(
                    self._sql.send_batch, _send_params(op.rows), [r[0] for r in op.rows]
                )
                result = [bool(r[1]) for r in rows]
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        op.resolve(result)

    async def _locked(
        self, query: bytes, params: dict[str, Any], queues: list[str]
    ) -> list[tuple[Any, ...]]:
        """Run a send statement after locking its queues, in one pipelined transaction.

        The lock makes the capacity check exact across processes. A missing schema (the
        first statement fails before anything happened) goes through ``single``, which
        re-creates it and runs the statement alone.
        """
        lock_send = self._lock_send if query == self._sql.send_batch else None

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            if lock_send is not None and _direct.usable(conn):
                lock, send = lock_send
                steps = [(lock, {"queues": queues}), (send, params)]
                return (await _direct.execute_pipeline(conn, steps))[1]
            async with conn.pipeline():
                await conn.execute(self._sql.lock_queues, {"queues": queues}, binary=True)
                cursor = conn.cursor(binary=True)
                await cursor.execute(query, params)
            return await cursor.fetchall()

        try:
            rows: list[tuple[Any, ...]] = await self._lease(run)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            rows = await self._single(query, params)
        return rows

    async def _batch(self, ops: list[_Op]) -> None:
        sends = [op for op in ops if op.rows is not None]
        receives = [op for op in ops if op.rows is None]
        rows = [row for op in sends for row in op.rows or ()]
        claim_params = {
            "queues": [op.queue for op in receives],
            "limits": [op.limit for op in receives],
        }

        async def pipelined(
            conn: psycopg.AsyncConnection[Any],
        ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            sent = claimed = None
            async with conn.pipeline():
                if rows:
                    queues = [row[0] for row in rows]
                    await conn.execute(self._sql.lock_queues, {"queues": queues}, binary=True)
                    sent = conn.cursor(binary=True)
                    await sent.execute(self._sql.send_batch, _send_params(rows))
                if receives:
                    claimed = conn.cursor(binary=True)
                    await claimed.execute(self._sql.receive_batch, claim_params)
            return (
                await sent.fetchall() if sent is not None else [],
                await claimed.fetchall() if claimed is not None else [],
            )

        run = pipelined
        claims, lock_send = self._claims, self._lock_send
        if claims is not None and not rows:

            async def claims_only(
                conn: psycopg.AsyncConnection[Any],
            ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
                # One statement: no pipeline needed, and libpq directly costs less.
                if not _direct.usable(conn):
                    return await pipelined(conn)
                try:
                    return [], await _direct.execute(conn, claims, claim_params)
                except _direct.Interrupted as exc:
                    raise _direct.Interrupted([[], exc.rows]) from None

            run = claims_only
        elif claims is not None and lock_send is not None:
            lock, send = lock_send

            async def mixed(
                conn: psycopg.AsyncConnection[Any],
            ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
                if not _direct.usable(conn):
                    return await pipelined(conn)
                queues = [row[0] for row in rows]
                steps: list[tuple[_direct.Direct, dict[str, Any]]] = [
                    (lock, {"queues": queues}),
                    (send, _send_params(rows)),
                ]
                if receives:
                    steps.append((claims, claim_params))
                try:
                    out = await _direct.execute_pipeline(conn, steps)
                except _direct.Interrupted as exc:
                    done = exc.rows
                    raise _direct.Interrupted([done[1], done[2] if receives else []]) from None
                return out[1], out[2] if receives else []

            run = mixed

        try:
            stored, taken = await self._lease(run)
        except _direct.Interrupted as exc:
            # This task was cancelled once its statements had committed: settle the
            # sends and hand the claims' rows to their callers (who wait), then stop.
            self._settle(sends, exc.rows[0])
            self._hand_out(receives, exc.rows[1])
            raise asyncio.CancelledError from None
        except psycopg.OperationalError as exc:
            # Lost connection: outcome unknown, never re-run.
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(exc)
            return
        except psycopg.Error:
            # The implicit transaction was rolled back: nothing happened; isolate.
            for op in ops:
                await self._alone(op)
            return
        self._settle(sends, stored)
        self._hand_out(receives, taken)

    @staticmethod
    def _settle(sends: list[_Op], stored: Sequence[tuple[Any, ...]]) -> None:
        """Give each send of a batch its rows' "stored" flags from ``send_batch``."""
        flags = [bool(r[1]) for r in stored]  # ordered by the rows' position
        start = 0
        for op in sends:
            count = len(op.rows or ())
            if not op.future.done():
                mine = flags[start : start + count]
                op.resolve((False, mine[0]) if op.hand else mine)
            start += count

    @staticmethod
    def _hand_out(receives: list[_Op], taken: Sequence[tuple[Any, ...]]) -> None:
        """Give each receive of a batch its rows of ``receive_batch``'s result."""
        by_queue: dict[str, list[tuple[int, bytes]]] = {}
        more: set[str] = set()
        for queue, ident, payload in taken:
            if ident is None:
                more.add(queue)
            else:
                by_queue.setdefault(queue, []).append((int(ident), bytes(payload)))
        for op in receives:
            op.resolve((sorted(by_queue.get(op.queue, ())), op.queue in more))


def _claim_result(rows: Sequence[tuple[Any, ...]]) -> tuple[list[tuple[int, bytes]], bool]:
    """A lone claim's rows by id, and whether its queue may hold more (see ``receive``)."""
    claimed = sorted((int(r[0]), bytes(r[1])) for r in rows if r[0] is not None)
    return claimed, len(claimed) < len(rows)
