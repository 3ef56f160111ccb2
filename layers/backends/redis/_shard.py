"""One Redis host as seen from one event loop: a batching writer and blocking readers.

Writes (every command except blocking pops) go through :meth:`Shard.execute`: the
commands issued by all tasks during one event-loop iteration are written as one
pipeline, so N concurrent ``send()`` calls cost one round trip (auto-pipelining).
Each host has **one** writing connection per event loop (a :class:`Pipe`): batches
are written in queue order while earlier replies are still being read, so the
server sees commands exactly in the order they were issued, cancelled or not.

A receive (:meth:`Shard.pop`) first pops without blocking through that same
pipeline (so pops of many queues share round trips); a pop cancelled in flight
leaves its payloads in a per-queue stash for the next call. Only when the queue is
empty does it block, on a **dedicated connection per queue**,
never on a pipelining connection, with a server-side timeout and a client read
timeout above it.

No command is ever re-sent after it was written: a connection lost mid-flight fails
the affected commands with :class:`~layers.BackendError`, because re-sending a
push whose reply was lost could store it twice. Only connecting is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from typing import Any

from redis.exceptions import RedisError, ResponseError

from layers.backends.redis._config import HostSpec
from layers.backends.redis._errors import NotSent, translate
from layers.backends.redis._pipe import Pipe
from layers.backends.redis._scripts import STAMP_WIDTH
from layers.core.errors import LayerClosed, LayerError
from layers.core.wakeups import cancel_requested, outlast

__all__ = ["Shard"]

logger = logging.getLogger("layers")

#: Idle blocking-reader connections kept per host (least recently used are closed).
MAX_IDLE_READERS = 64
#: How much longer than the server-side block the client waits for a reply.
READ_MARGIN = 5.0
#: How often the estimate of the server clock is refreshed, in seconds.
CLOCK_REFRESH = 30.0


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Shard:
    """Connections to one host for one event loop. Create and use it inside the loop."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.connector = spec.make_connector()
        self.pipe: Pipe | None = None
        self.busy: set[Pipe] = set()
        self.pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self.draining = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.readers: OrderedDict[str, Pipe] = OrderedDict()
        self.clock_offset = 0.0
        self.clock_checked = -math.inf
        self.blmpop = True
        self.closed = False
        self.stash: dict[str, list[bytes]] = {}

    # -- pipelined commands -----------------------------------------------------------

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command for the next pipeline; the future gets its reply.

        A Redis error reply is the *result* (a :class:`redis.ResponseError`), so the
        caller decides; a lost connection is the future's exception, a
        :class:`~layers.BackendError`. Cancelling the future does not unsend the
        command: it runs once or not at all, in the order it was queued.
        """
        if self.closed:
            raise LayerClosed("the channel layer was closed")
        future: asyncio.Future[Any] = self.loop.create_future()
        if not self.draining:
            self.draining = True
            pipe = self.pipe
            if pipe is not None and pipe.ready:
                # The first command of a loop iteration is written at once; the
                # others issued during this iteration are written together by
                # _flush_now on the next one (one pipeline, one round trip).
                pipe.write_nowait([(args, future)])
                self.loop.call_soon(self._flush_now)
                return future
            self._start_drain()
        self.pending.append((args, future))
        return future

    def _flush_now(self) -> None:
        pipe = self.pipe
        if pipe is None or not pipe.ready:
            self._start_drain()
            return
        batch, self.pending = self.pending, []
        self.draining = False
        if batch:
            pipe.write_nowait(batch)

    def _start_drain(self) -> None:
        task = self.loop.create_task(self._drain())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self) -> None:
        # One writer at a time per host: commands reach the server in queue order,
        # even when the caller of an earlier one was cancelled.
        try:
            while self.pending and not self.closed:
                pipe = self.pipe
                if pipe is None or pipe.broken:
                    if pipe is not None:
                        await pipe.close()
                    pipe = self.pipe = Pipe(self.connector)
                batch, self.pending = self.pending, []
                await pipe.write(batch)
        finally:
            self.draining = False

    async def call(self, *args: Any) -> Any:
        """Run one command through the pipeline; raise :class:`~layers.BackendError` on error."""
        reply = await self.execute(*args)
        if isinstance(reply, ResponseError):
            raise translate(reply, self.spec.id)
        return reply

    # -- blocking pops ----------------------------------------------------------------

    async def pop(self, key: str, timeout: float, limit: int) -> list[bytes]:
        """Pop up to ``limit`` unexpired payloads from ``key``, waiting up to ``timeout``.

        First a non-blocking ``LPOP`` through the shared pipeline, so the pops of
        many queues issued in one loop iteration cost one round trip; only if that
        finds nothing, a blocking pop on the queue's dedicated connection.
        Cancellation during the ``LPOP`` keeps what it pops in a per-queue stash for
        the next call; cancellation during the blocking pop closes that connection:
        a payload the server already popped is lost, never
        duplicated.
        """
        stashed = self.stash.get(key)
        if stashed:
            return self._take_stash(key, stashed, limit)
        live = await self.pop_now(key, limit)
        if live or timeout <= 0:
            return live
        return await self._pop_blocking(key, timeout, limit)

    async def server_ms(self) -> float:
        """The server's clock now (ms), estimated; re-read with ``TIME`` when stale.

        The estimate runs on the monotonic clock from the last ``TIME`` (to the round
        trip's half), so a jump of this host's wall clock does not move it.
        """
        if self.clock_stale():
            before = time.monotonic()
            seconds, micros = await self.call("TIME")
            self._set_clock(seconds, micros, before)
        return time.monotonic() * 1000.0 + self.clock_offset

    def clock_stale(self) -> bool:
        """True when the last ``TIME`` is :data:`CLOCK_REFRESH` old, or there was none."""
        return time.monotonic() >= self.clock_checked + CLOCK_REFRESH

    def clock_estimate(self) -> float | None:
        """The server's clock now (ms) from the last ``TIME``, however old; None before one."""
        if self.clock_checked == -math.inf:
            return None
        return time.monotonic() * 1000.0 + self.clock_offset

    def _set_clock(self, seconds: Any, micros: Any, before: float) -> None:
        after = time.monotonic()
        server_ms = int(seconds) * 1000.0 + int(micros) / 1000.0
        self.clock_offset = server_ms - (before + after) * 500.0
        self.clock_checked = after

    def _take_stash(self, key: str, stashed: list[bytes], limit: int) -> list[bytes]:
        taken, rest = stashed[:limit], stashed[limit:]
        if rest:
            self.stash[key] = rest
        else:
            del self.stash[key]
        return taken

    def _live(self, items: Any) -> list[bytes]:
        """The unexpired payloads of popped elements; a malformed element is logged, skipped."""
        now_ms = time.monotonic() * 1000.0 + self.clock_offset
        live = []
        for item in items or ():
            stamp = item[:STAMP_WIDTH]
            if len(stamp) == STAMP_WIDTH and stamp.isdigit():
                if int(stamp) > now_ms:
                    live.append(item[STAMP_WIDTH:])
            else:
                logger.warning(
                    "dropping a malformed queue element (no expiry stamp): %r", item[:40]
                )
        return live

    async def pop_now(self, key: str, limit: int, *, asking: bool = False) -> list[bytes]:
        """``LPOP key limit`` through the pipeline; unexpired payloads, stashed if cancelled.

        With ``asking``, ``ASKING`` goes right before it on the same connection (a
        cluster slot being imported by this node).
        """
        if self.clock_stale():
            await self.server_ms()
        if asking:
            self.execute("ASKING").add_done_callback(_ignore)
        future = self.execute("LPOP", key, limit)
        try:
            reply = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The pop is sent: wait for its reply, and return what it took rather
            # than lose it (see ``Backend.receive``). Failing that, the next call of
            # this instance gets it.
            reply = await self.reply_of_cancelled(future)
            if reply is not None and not isinstance(reply, ResponseError):
                live = self._live(reply)
                if live:
                    return self._merge(key, live, limit)
            future.add_done_callback(lambda f: self._stash_reply(key, f))
            raise
        if isinstance(reply, ResponseError):
            raise translate(reply, self.spec.id)
        return self._merge(key, self._live(reply), limit)

    def _merge(self, key: str, live: list[bytes], limit: int) -> list[bytes]:
        """Older payloads stashed meanwhile (by a cancelled call) go first."""
        stashed = self.stash.get(key)
        if not stashed:
            return live
        stashed.extend(live)
        return self._take_stash(key, stashed, limit)

    def _stash_reply(self, key: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None or self.closed:
            return
        reply = future.result()
        if isinstance(reply, ResponseError):
            return
        live = self._live(reply)
        if live:
            self.stash.setdefault(key, []).extend(live)

    async def _pop_blocking(self, key: str, timeout: float, limit: int) -> list[bytes]:
        """The blocking pop on the queue's dedicated connection (see :meth:`pop`)."""
        pipe = self.readers.pop(key, None)
        if pipe is not None and pipe.broken:
            # Its server went away while it sat idle: close its socket, not leave it to GC.
            await pipe.close()
            pipe = None
        if pipe is None:
            pipe = Pipe(self.connector)
        self.busy.add(pipe)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if pipe.reader is None:
                    try:
                        await pipe.connect()
                    except (RedisError, OSError) as exc:
                        raise NotSent(f"redis {self.spec.id}: {exc or type(exc).__name__}") from exc
                    await self._introduce(pipe)
                elif self.clock_stale():
                    await self._sync_clock(pipe)
                wait = max(0.0, deadline - time.monotonic())
                items = await self._pop_once(pipe, key, wait, limit)
                live = self._live(items)
                if live:
                    break
                if cancel_requested():
                    raise asyncio.CancelledError  # what it took had expired
                if time.monotonic() >= deadline:
                    break
        except (RedisError, OSError, ValueError, LayerError) as exc:
            self.busy.discard(pipe)
            await pipe.close()
            raise translate(exc, self.spec.id) from exc
        except BaseException:
            self.busy.discard(pipe)
            await pipe.close()
            raise
        self.busy.discard(pipe)
        await self._keep_reader(key, pipe)
        return self._merge(key, live, limit)

    async def _keep_reader(self, key: str, pipe: Pipe) -> None:
        if self.closed:
            await pipe.close()
            return
        self.readers[key] = pipe
        while len(self.readers) > MAX_IDLE_READERS:
            _, oldest = self.readers.popitem(last=False)
            await oldest.close()

    async def _command(self, pipe: Pipe, wait: float | None, *args: Any, pop: bool = False) -> Any:
        """One command on a dedicated pipe; a Redis error reply is raised.

        With ``wait``, gives up ``READ_MARGIN`` seconds after it (the caller then
        closes the pipe, so no reply is left unread on it). ``pop``: the command
        removes elements; cancelled, it is unblocked (``CLIENT UNBLOCK``) and its
        reply awaited, and what it took is returned, the cancellation staying
        requested; it raises ``CancelledError`` when it took nothing.
        """
        future: asyncio.Future[Any] = self.loop.create_future()
        pipe.write_nowait([(args, future)])
        try:
            if wait is None:
                reply = await asyncio.shield(future)
            else:
                async with asyncio.timeout(wait + READ_MARGIN):
                    reply = await asyncio.shield(future)
        except asyncio.CancelledError:
            if not pop:
                raise
            if wait is not None and pipe.client_id is not None and not future.done():
                with contextlib.suppress(Exception):
                    self.execute("CLIENT", "UNBLOCK", pipe.client_id).add_done_callback(_ignore)
            reply = await self.reply_of_cancelled(future)
            if not reply or isinstance(reply, ResponseError):
                raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def reply_of_cancelled(self, future: asyncio.Future[Any]) -> Any:
        """Wait (at most ``READ_MARGIN``, whatever cancels) for the reply of a sent command.

        None when it did not come (its connection failed, or too slow).
        """
        if not await outlast(future, READ_MARGIN):
            return None
        if future.cancelled() or future.exception() is not None:
            return None  # its failure (NotSent, a lost connection): no reply
        return future.result()

    async def _pop_once(self, conn: Pipe, key: str, wait: float, limit: int) -> list[bytes]:
        if wait <= 0:
            reply = await self._command(conn, None, "LPOP", key, limit, pop=True)
            return list(reply or ())
        if self.blmpop:
            try:
                reply = await self._command(
                    conn, wait, "BLMPOP", f"{wait:.3f}", 1, key, "LEFT", "COUNT", limit, pop=True
                )
                return list(reply[1]) if reply else []
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self.blmpop = False  # Redis 6.2: BLPOP, then LPOP for the rest
        reply = await self._command(conn, wait, "BLPOP", key, f"{wait:.3f}", pop=True)
        if not reply:
            return []
        items = [reply[1]]
        if limit > 1 and not cancel_requested():
            items.extend(await self._command(conn, None, "LPOP", key, limit - 1, pop=True) or ())
        return items

    async def _sync_clock(self, conn: Pipe) -> None:
        """Estimate server time minus local monotonic time (ms), to the round trip's half."""
        before = time.monotonic()
        seconds, micros = await self._command(conn, READ_MARGIN, "TIME")
        self._set_clock(seconds, micros, before)

    async def _introduce(self, conn: Pipe) -> None:
        """A new blocking connection's ``CLIENT ID`` and the clock, in one round trip.

        The id serves to unblock the connection's pop if it is cancelled. A server
        that refuses ``CLIENT ID`` (an ACL) leaves it unknown: a cancelled blocking pop
        then closes its connection, and may lose what the server popped.
        """
        ident: asyncio.Future[Any] = self.loop.create_future()
        clock: asyncio.Future[Any] = self.loop.create_future()
        before = time.monotonic()
        conn.write_nowait([(("CLIENT", "ID"), ident), (("TIME",), clock)])
        async with asyncio.timeout(READ_MARGIN):
            client_id = await asyncio.shield(ident)
            now = await asyncio.shield(clock)
        if not isinstance(client_id, ResponseError):
            conn.client_id = int(client_id)
        if isinstance(now, ResponseError):
            raise now
        self._set_clock(now[0], now[1], before)

    # -- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the pipelines, fail queued commands, close every connection. Idempotent."""
        self.closed = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for _, future in self.pending:
            if not future.done():
                future.set_exception(LayerClosed("the channel layer was closed"))
        self.pending.clear()
        self.stash.clear()
        if self.pipe is not None:
            await self.pipe.close()
        pipes = [*self.readers.values(), *self.busy]
        self.readers.clear()
        self.busy.clear()
        for pipe in pipes:
            await pipe.close()
        sentinel = self.connector.sentinel
        if sentinel is not None:
            close = getattr(sentinel, "aclose", None)
            if close is not None:
                await close()
            else:  # redis-py < 5.1: close the clients of the sentinels one by one
                for client in sentinel.sentinels:
                    await client.aclose()
