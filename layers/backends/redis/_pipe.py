"""One connection carrying pipelined commands: written in order, replies read in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from layers.backends.redis._connection import Connection, Connector
from layers.backends.redis._errors import NotSent, translate
from layers.backends.redis._resp import pack_into

__all__ = ["Pipe"]

#: Bytes asked of the socket per read; every complete reply in them is parsed at once.
READ_SIZE = 65536
#: How long a reader cancelled from outside keeps reading the replies in flight.
DRAIN_TIMEOUT = 2.0


class Pipe:
    """One connection carrying pipelined commands: written in order, replies read in order.

    One task or callback writes at a time; a reader task, started on connect, reads
    every reply and resolves the oldest command in flight. Any connection failure
    breaks the pipe and fails every command in flight with
    :class:`~layers.BackendError` (none is re-sent).
    """

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.where = connector.where
        self.loop = asyncio.get_running_loop()
        self.inflight: deque[asyncio.Future[Any]] = deque()
        self.broken = False
        self.conn: Connection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: The server's id of this connection (``CLIENT ID``), when asked for.
        self.client_id: int | None = None

    @property
    def ready(self) -> bool:
        """Connected and unbroken: :meth:`write_nowait` may be used."""
        return self.writer is not None and not self.broken and not self.writer.is_closing()

    async def connect(self) -> None:
        """Connect (retried with backoff, see :class:`Connector`) and start the reader.

        Cancellation leaves the pipe unconnected (a half-open socket is closed).
        """
        self.client_id = None
        self.conn = conn = await self.connector.open()
        self.writer = conn.writer
        self.reader = self.loop.create_task(self._read(conn))

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

    async def _read(self, conn: Connection) -> None:
        try:
            await self._read_batches(conn)
        except (RedisError, OSError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not self.broken and self.inflight:
                # Cancelled from outside (its event loop ends), not by close(): read
                # the replies already on their way, so a pop the server made is seen by
                # the caller that waits for it, not dropped with the connection.
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with asyncio.timeout(DRAIN_TIMEOUT):
                        await self._read_batches(conn, until_idle=True)
            self.fail(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _read_batches(self, conn: Connection, *, until_idle: bool = False) -> None:
        """Parse every reply already received per socket read (no await per reply).

        Error replies are values (:class:`redis.ResponseError`, subclassed by
        :func:`~layers.backends.redis._errors.reply_error`). On a master found
        through Sentinel, ``READONLY`` means it was demoted: the pipe breaks, so
        the next command connects to the new master.
        """
        parser, stream, sentinel = conn.parser, conn.reader, conn.sentinel
        gets, feed, inflight = parser.gets, parser.feed, self.inflight
        while not self.broken and (inflight or not until_idle):
            reply = gets(False)
            if reply is False:
                data = await stream.read(READ_SIZE)
                if not data:
                    raise RedisConnectionError("the server closed the connection")
                feed(data)
                continue
            if sentinel and isinstance(reply, ResponseError) and str(reply).startswith("READONLY"):
                raise RedisConnectionError("the previous master is now a replica")
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
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()
