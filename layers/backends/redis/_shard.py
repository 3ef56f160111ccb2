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
import importlib
import logging
import math
import time
from collections import OrderedDict, deque
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import (
    AskError,
    ClusterDownError,
    InvalidResponse,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from layers.backends.redis._config import HostSpec
from layers.backends.redis._scripts import STAMP_WIDTH
from layers.core.errors import BackendError, BackendUnavailable, LayerClosed, LayerError

_hiredis: Any
try:
    _hiredis = importlib.import_module("hiredis")
except ImportError:  # pragma: no cover - the generic redis-py parser is used instead
    _hiredis = None
HiredisReader: Any = getattr(_hiredis, "Reader", None)

__all__ = [
    "ClusterRedirect",
    "NotSent",
    "Pipe",
    "Shard",
    "pack_command",
    "redirect_of",
    "reply_error",
    "translate",
]

logger = logging.getLogger("layers")

#: Idle blocking-reader connections kept per host (least recently used are closed).
MAX_IDLE_READERS = 64
#: How much longer than the server-side block the client waits for a reply.
READ_MARGIN = 5.0
#: How often the estimate of the server clock is refreshed, in seconds.
CLOCK_REFRESH = 30.0


class NotSent(BackendUnavailable):
    """The command was never written (the connection could not be opened): resending is safe."""


class ClusterRedirect(BackendError):
    """A cluster node refused the command: ``MOVED``, ``ASK``, ``TRYAGAIN`` or ``CLUSTERDOWN``.

    The command was not executed, so resending it (elsewhere, or later) is safe.
    ``kind`` is the reply's code; ``slot``, ``host`` and ``port`` are set for
    ``MOVED`` and ``ASK``.
    """

    def __init__(
        self, message: str, kind: str, slot: int = -1, host: str = "", port: int = 0
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.slot = slot
        self.host = host
        self.port = port


def redirect_of(exc: BaseException) -> ClusterRedirect | None:
    """The :class:`ClusterRedirect` that an error reply means, or ``None`` for other errors."""
    if isinstance(exc, ClusterRedirect):
        return exc
    if not isinstance(exc, ResponseError):
        return None
    if isinstance(exc, AskError):  # MovedError is a subclass
        kind = "MOVED" if isinstance(exc, MovedError) else "ASK"
        return ClusterRedirect(str(exc), kind, exc.slot_id, exc.host, exc.port)
    text = str(exc)
    code, _, rest = text.partition(" ")
    if isinstance(exc, TryAgainError) or code == "TRYAGAIN":
        return ClusterRedirect(text, "TRYAGAIN")
    if isinstance(exc, ClusterDownError) or code == "CLUSTERDOWN":
        return ClusterRedirect(text, "CLUSTERDOWN")
    if code in ("MOVED", "ASK"):
        slot, _, address = rest.partition(" ")
        host, _, port = address.rpartition(":")
        if slot.isdigit() and port.isdigit():
            return ClusterRedirect(text, code, int(slot), host.strip("[]"), int(port))
    return None


_ERROR_CLASSES: dict[str, type[ResponseError]] = {
    "NOSCRIPT": NoScriptError,
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
}


def reply_error(message: str) -> ResponseError:
    """An error reply as the exception redis-py's parsers give (public classes only)."""
    code, _, rest = message.partition(" ")
    kind = _ERROR_CLASSES.get(code)
    if kind is None:
        return ResponseError(message)
    try:
        return kind(rest)
    except (TypeError, ValueError):  # a malformed MOVED/ASK reply
        return ResponseError(message)


def translate(exc: BaseException, where: str) -> LayerError:
    """Return our error for a driver failure, chained to it (``__cause__``).

    A cluster redirection becomes a :class:`ClusterRedirect` whose message says how
    to configure a cluster (seen only when a non-cluster URL points at a cluster node).
    """
    if isinstance(exc, LayerError):
        return exc
    error: LayerError
    redirect = redirect_of(exc)
    if isinstance(exc, asyncio.CancelledError):
        error = LayerClosed("the channel layer was closed")
    elif redirect is not None:
        redirect.args = (
            f"redis {where} is a Redis Cluster node and did not run the command "
            f"({redirect.kind} {exc}); use a redis+cluster:// URL "
            "(layers.backends.redis.cluster.RedisClusterChannelLayer) for a cluster",
        )
        error = redirect
    elif isinstance(exc, ResponseError):
        error = BackendError(f"redis {where}: {exc}")
    else:
        error = BackendUnavailable(f"redis {where}: {exc or type(exc).__name__}")
    error.__cause__ = exc
    return error


#: Arguments at least this long are kept as their own piece, never formatted into
#: a new string: a 64 KB payload is then copied once, when the batch is joined.
_BIG_ARG = 1024


def pack_command(args: tuple[Any, ...]) -> bytes:
    """Encode one command in RESP: ``str`` as UTF-8, ``int`` and ``float`` as text.

    A lean equivalent of redis-py's packer for the argument types this backend
    sends (``bytes``, ``str``, ``int``, ``float``); anything else is a ``TypeError``.
    """
    parts: list[bytes] = []
    pack_into(args, parts)
    return b"".join(parts)


def pack_into(args: tuple[Any, ...], parts: list[bytes]) -> None:
    """Append the RESP pieces of one command to ``parts`` (see :func:`pack_command`)."""
    append = parts.append
    append(b"*%d\r\n" % len(args))
    for arg in args:
        kind = type(arg)
        if kind is str:
            piece = _STR_PIECES.get(arg)
            if piece is None:
                data = arg.encode()
                piece = b"$%d\r\n%b\r\n" % (len(data), data)
                if len(_STR_PIECES) >= _STR_PIECES_MAX:
                    _STR_PIECES.clear()
                _STR_PIECES[arg] = piece
            append(piece)
            continue
        if kind is bytes:
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = bytes(arg)
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send a {type(arg).__name__} to redis")
        if len(data) >= _BIG_ARG:
            append(b"$%d\r\n" % len(data))
            append(data)
            append(b"\r\n")
        else:
            append(b"$%d\r\n%b\r\n" % (len(data), data))


#: Encoded ``str`` arguments (command names, script hashes, keys), reused.
_STR_PIECES: dict[str, bytes] = {}
_STR_PIECES_MAX = 4096


class Pipe:
    """One connection carrying pipelined commands: written in order, replies read in order.

    One task or callback writes at a time; a reader task, started on connect, reads
    every reply and resolves the oldest command in flight. Any connection failure
    breaks the pipe and fails every command in flight with
    :class:`~layers.BackendError` (none is re-sent).
    """

    def __init__(self, conn: AbstractConnection, where: str) -> None:
        self.conn = conn
        self.where = where
        self.loop = asyncio.get_running_loop()
        self.inflight: deque[asyncio.Future[Any]] = deque()
        self.broken = False
        self.reader: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    @property
    def ready(self) -> bool:
        """Connected and unbroken: :meth:`write_nowait` may be used."""
        return self.writer is not None and not self.broken and self.conn.is_connected

    async def connect(self) -> None:
        """Connect (redis-py retries connecting with backoff) and start the reader."""
        await self.conn.connect()  # type: ignore[no-untyped-call]
        # redis-py's stream writer, used to write without an extra task switch.
        self.writer = getattr(self.conn, "_writer", None)
        self.reader = self.loop.create_task(self._read())

    def write_nowait(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        """Write ``batch`` as one pipeline now (the transport buffers it)."""
        try:
            if self.writer is None or self.broken:
                raise ConnectionError("the pipelining connection is closed")
            parts: list[bytes] = []
            for args, _ in batch:
                pack_into(args, parts)
            self.writer.write(b"".join(parts))
        except (RedisError, OSError, TypeError) as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(translate(exc, self.where))
            self.fail(exc)
            return
        self.inflight.extend(future for _, future in batch)

    async def write(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        """Connect if needed, write ``batch``, and wait while the socket buffer is full."""
        try:
            if self.reader is None:
                await self.connect()
        except (RedisError, OSError) as exc:
            # Nothing of the batch was written: say so, so a router may resend it.
            for _, future in batch:
                if not future.done():
                    error = NotSent(f"redis {self.where}: {exc or type(exc).__name__}")
                    error.__cause__ = exc
                    future.set_exception(error)
            self.fail(exc)
            return
        self.write_nowait(batch)
        if self.writer is not None and not self.broken:
            try:
                await self.writer.drain()
            except OSError as exc:
                self.fail(exc)

    async def _read(self) -> None:
        conn, inflight = self.conn, self.inflight
        stream = getattr(conn, "_reader", None)
        try:
            if HiredisReader is not None and isinstance(stream, asyncio.StreamReader):
                await self._read_batches(stream)
            while not self.broken:
                try:
                    reply = await conn.read_response(disable_decoding=True, timeout=math.inf)
                except ResponseError as exc:
                    reply = exc
                if inflight:
                    future = inflight.popleft()
                    if not future.done():
                        future.set_result(reply)
        except (RedisError, OSError, asyncio.CancelledError) as exc:
            self.fail(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _read_batches(self, stream: asyncio.StreamReader) -> None:
        """Parse every reply already received per socket read (hiredis, no await per reply).

        Error replies are values (:class:`redis.ResponseError`, subclassed as
        redis-py does), exactly as on the generic path.
        """
        parser = HiredisReader(protocolError=InvalidResponse, replyError=reply_error)
        gets, feed, inflight = parser.gets, parser.feed, self.inflight
        while not self.broken:
            reply = gets(False)
            if reply is False:
                data = await stream.read(65536)
                if not data:
                    raise RedisConnectionError("the server closed the connection")
                feed(data)
                continue
            if isinstance(reply, RedisConnectionError):
                raise reply
            if inflight:
                future = inflight.popleft()
                if not future.done():
                    future.set_result(reply)

    def fail(self, exc: BaseException) -> None:
        """Mark the pipe broken and fail every command in flight."""
        self.broken = True
        while self.inflight:
            future = self.inflight.popleft()
            if not future.done():
                future.set_exception(translate(exc, self.where))

    async def close(self) -> None:
        """Stop reading, fail what is in flight, close the connection. Idempotent."""
        self.broken = True
        reader, self.reader = self.reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        self.fail(asyncio.CancelledError())
        with contextlib.suppress(RedisError, OSError):
            await self.conn.disconnect()


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Shard:
    """Connections to one host for one event loop. Create and use it inside the loop."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.pool: ConnectionPool
        self.sentinel: Sentinel | None
        self.pool, self.sentinel = spec.make_pool()
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
                    pipe = self.pipe = Pipe(
                        self.pool.make_connection(),  # type: ignore[no-untyped-call]
                        self.spec.id,
                    )
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
        the next call; cancellation during the blocking pop closes that connection
        (redis-py does): a payload the server already popped is lost, never
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
        """The server's clock now (ms), estimated; re-read with ``TIME`` when stale."""
        if time.monotonic() >= self.clock_checked + CLOCK_REFRESH:
            before = time.time()
            seconds, micros = await self.call("TIME")
            after = time.time()
            server_ms = int(seconds) * 1000.0 + int(micros) / 1000.0
            self.clock_offset = server_ms - (before + after) * 500.0
            self.clock_checked = time.monotonic()
        return time.time() * 1000.0 + self.clock_offset

    def _take_stash(self, key: str, stashed: list[bytes], limit: int) -> list[bytes]:
        taken, rest = stashed[:limit], stashed[limit:]
        if rest:
            self.stash[key] = rest
        else:
            del self.stash[key]
        return taken

    def _live(self, items: Any) -> list[bytes]:
        """The unexpired payloads of popped elements; a malformed element is logged, skipped."""
        now_ms = time.time() * 1000.0 + self.clock_offset
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
        if time.monotonic() >= self.clock_checked + CLOCK_REFRESH:
            await self.server_ms()
        if asking:
            self.execute("ASKING").add_done_callback(_ignore)
        future = self.execute("LPOP", key, limit)
        try:
            reply = await asyncio.shield(future)
        except asyncio.CancelledError:
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
            pipe = Pipe(self.pool.make_connection(), self.spec.id)  # type: ignore[no-untyped-call]
        self.busy.add(pipe)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if pipe.reader is None:
                    try:
                        await pipe.connect()
                    except (RedisError, OSError) as exc:
                        raise NotSent(f"redis {self.spec.id}: {exc or type(exc).__name__}") from exc
                    await self._sync_clock(pipe)
                elif time.monotonic() >= self.clock_checked + CLOCK_REFRESH:
                    await self._sync_clock(pipe)
                wait = max(0.0, deadline - time.monotonic())
                items = await self._pop_once(pipe, key, wait, limit)
                live = self._live(items)
                if live or time.monotonic() >= deadline:
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

    async def _command(self, pipe: Pipe, wait: float | None, *args: Any) -> Any:
        """One command on a dedicated pipe; a Redis error reply is raised.

        With ``wait``, gives up ``READ_MARGIN`` seconds after it (the caller then
        closes the pipe, so no reply is left unread on it).
        """
        future: asyncio.Future[Any] = self.loop.create_future()
        pipe.write_nowait([(args, future)])
        if wait is None:
            reply = await future
        else:
            async with asyncio.timeout(wait + READ_MARGIN):
                reply = await future
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _pop_once(self, conn: Pipe, key: str, wait: float, limit: int) -> list[bytes]:
        if wait <= 0:
            reply = await self._command(conn, None, "LPOP", key, limit)
            return list(reply or ())
        if self.blmpop:
            try:
                reply = await self._command(
                    conn, wait, "BLMPOP", f"{wait:.3f}", 1, key, "LEFT", "COUNT", limit
                )
                return list(reply[1]) if reply else []
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self.blmpop = False  # Redis 6.2: BLPOP, then LPOP for the rest
        reply = await self._command(conn, wait, "BLPOP", key, f"{wait:.3f}")
        if not reply:
            return []
        items = [reply[1]]
        if limit > 1:
            items.extend(await self._command(conn, None, "LPOP", key, limit - 1) or ())
        return items

    async def _sync_clock(self, conn: Pipe) -> None:
        """Estimate server time minus local wall time (ms), to the round trip's half."""
        before = time.time()
        seconds, micros = await self._command(conn, READ_MARGIN, "TIME")
        after = time.time()
        server_ms = int(seconds) * 1000.0 + int(micros) / 1000.0
        self.clock_offset = server_ms - (before + after) * 500.0
        self.clock_checked = time.monotonic()

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
        await self.pool.disconnect()
        if self.sentinel is not None:
            close = getattr(self.sentinel, "aclose", None)
            if close is not None:
                await close()
            else:  # redis-py < 5.1: close the clients of the sentinels one by one
                for client in self.sentinel.sentinels:
                    await client.aclose()
