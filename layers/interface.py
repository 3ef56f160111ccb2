"""Tier 1: an ASGI application that turns HTTP and WebSocket connections into messages.

:class:`InterfaceServer` is an ASGI 3 application, run by any ASGI server (uvicorn,
daphne, hypercorn). It speaks the original ASGI 1.0 "www" message formats to workers
over a channel layer (see the *Message formats* page of the docs):

- each HTTP request becomes one ``http.request`` message with a ``reply_channel``; a body
  larger than ``chunk_size`` continues on a ``body_channel``; what workers send to the
  reply channel (``status``, ``headers``, ``content``, ``more_content``) is streamed back;
- each WebSocket becomes ``websocket.connect`` (answered with ``{"accept": True}`` or
  ``{"close": ...}``), ``websocket.receive`` and ``websocket.disconnect`` messages, each
  with an ``order`` counter; everything sent to its reply channel (``text``, ``bytes``,
  ``close``), group broadcasts included, goes to the client.

Backpressure and failure: a full ``http.request`` channel answers 503; a full
``websocket.connect`` or ``websocket.receive`` channel closes the socket with 1013; no
reply within ``timeout`` answers 504 (HTTP) or closes the socket (1011 after accept,
403 before). A client that disconnects stops the server reading its reply channel. The
server forwards one reply message at a time and waits for the ASGI server to take it, so
it never holds more than one message of unsent data per connection.

Workers answer with the helpers of :mod:`layers.asgi_worker`, re-exported here:
:func:`request_body` reads a whole body, :func:`respond` sends a response (chunked when
large), and :class:`AsgiConsumer` runs an ordinary ASGI HTTP application (a Django or
Starlette app) as a worker's consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from layers.asgi_worker import (
    CHUNK_SIZE,
    AsgiConsumer,
    Receive,
    Scope,
    Send,
    headers_list,
    request_body,
    respond,
)
from layers.core.errors import BackendError, ChannelFull
from layers.unanswered import Unanswered

__all__ = ["AsgiConsumer", "InterfaceServer", "request_body", "respond"]

logger = logging.getLogger("layers.interface")


def _request_fields(scope: Scope) -> dict[str, Any]:
    client, server = scope.get("client"), scope.get("server")
    return {
        "scheme": scope.get("scheme", "http"),
        "path": scope["path"],
        "query_string": scope.get("query_string", b""),
        "root_path": scope.get("root_path", ""),
        "headers": [[name, value] for name, value in scope.get("headers", [])],
        "client": list(client) if client else None,
        "server": list(server) if server else None,
    }


class InterfaceServer:
    """An ASGI application forwarding HTTP and WebSocket connections to workers.

    Args:
        layer: the channel layer (default: :func:`layers.get_channel_layer`, on first use).
        timeout: seconds to wait for a worker's reply (HTTP response start and each
            later chunk; WebSocket accept) before 504 or closing.
        chunk_size: the largest body chunk in one message, in bytes.
        routing: a routing table: also run a :class:`~layers.worker.Worker` in this
            process, started and stopped with the ASGI lifespan (development, and the
            memory backend, which cannot cross processes).
        worker_options: keyword arguments for that worker (``concurrency``...).
    """

    def __init__(
        self,
        layer: Any = None,
        *,
        timeout: float = 30.0,
        chunk_size: int = CHUNK_SIZE,
        routing: Mapping[str, Any] | str | None = None,
        worker_options: Mapping[str, Any] | None = None,
    ) -> None:
        from layers.core.errors import ConfigurationError

        if not timeout > 0:
            raise ConfigurationError("timeout", f"must be > 0, got {timeout!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigurationError("chunk_size", f"must be an int >= 1, got {chunk_size!r}")
        self._layer = layer
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.routing = routing
        self.worker_options = dict(worker_options or {})
        self._worker: Any = None
        self._worker_task: asyncio.Task[None] | None = None
        self._unanswered = Unanswered()
        #: HTTP requests and WebSockets being served now.
        self.connections = 0

    @property
    def layer(self) -> Any:
        """The channel layer this server sends to."""
        if self._layer is None:
            from layers.core.config import get_channel_layer

            self._layer = get_channel_layer()
        return self._layer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (``http``, ``websocket`` or ``lifespan``)."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        self.connections += 1
        try:
            if kind == "http":
                await self._http(scope, receive, send)
            elif kind == "websocket":
                await self._websocket(scope, receive, send)
        except BackendError as exc:
            # The store is unreachable: one line in the log, 503 to the client.
            logger.error("the channel layer failed (503): %s", " ".join(str(exc).split()))
            with contextlib.suppress(Exception):  # the response may have started already
                if kind == "http":
                    await _plain(send, 503, b"Service Unavailable: the channel layer failed\n")
                else:
                    await send({"type": "websocket.close", "code": 1011})
        finally:
            self.connections -= 1

    # -- lifespan ------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start the in-process worker, when ``routing`` was given."""
        if self.routing is not None and self._worker_task is None:
            from layers.worker import Worker

            self._worker = Worker(self.layer, self.routing, **self.worker_options)
            self._worker_task = asyncio.create_task(self._worker.run(close_layer=False))

    async def shutdown(self) -> None:
        """Stop the in-process worker (with its grace period) and close the layer."""
        if self._worker_task is not None:
            self._worker.stop()
            await self._worker_task
            self._worker_task = None
        if self._layer is not None:
            await self._layer.aclose()

    # -- HTTP ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        layer = self.layer
        body, more, leftover = await self._read(receive, self.chunk_size)
        reply = await layer.new_channel("http.response.")
        request = {
            "reply_channel": reply,
            "http_version": scope.get("http_version", "1.1"),
            "method": scope["method"],
            **_request_fields(scope),
            "body": body,
        }
        if more:
            request["body_channel"] = f"http.request.body.{secrets.token_hex(10)}"
        # Wait on the reply channel before sending, so the layer's reader for it is
        # already waiting when the worker answers.
        responding = asyncio.create_task(self._respond(reply, send))
        await asyncio.sleep(0)
        try:
            await layer.send("http.request", request)
        except (ChannelFull, BackendError) as exc:
            responding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await responding
            if not isinstance(exc, ChannelFull):
                raise  # answered 503 by __call__, with the cause in the log
            await _plain(send, 503, b"Service Unavailable: the http.request channel is full\n")
            return
        if more:
            streaming = asyncio.create_task(
                self._stream_body(receive, request["body_channel"], leftover)
            )
            await asyncio.wait([responding, streaming], return_when=asyncio.FIRST_EXCEPTION)
            if not streaming.done():
                streaming.cancel()
            try:
                await streaming
            except asyncio.CancelledError:
                pass
            except TimeoutError:
                logger.warning("the worker stopped reading the body of %r: abandoned", reply)
            await responding
            return
        watching = asyncio.create_task(_until_disconnect(receive))
        try:
            await asyncio.wait([responding, watching], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not responding.done():
                # The client went away: stop waiting for (and reading) the reply channel.
                responding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await responding

    async def _read(self, receive: Receive, limit: int) -> tuple[bytes, bool, bytes]:
        """Read up to ``limit`` body bytes: them, whether more follow, and bytes read past."""
        parts: list[bytes] = []
        size = 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return b"".join(parts), False, b""
            chunk = event.get("body", b"")
            parts.append(chunk)
            size += len(chunk)
            more = bool(event.get("more_body", False))
            if not more or size >= limit:
                data = b"".join(parts)
                if len(data) > limit:
                    return data[:limit], True, data[limit:]
                return data, more, b""

    async def _stream_body(self, receive: Receive, channel: str, pending: bytes) -> None:
        """Send the rest of a request body as chunks on ``channel``, waiting when it is full."""
        more = True
        while True:
            while len(pending) < self.chunk_size and more:
                event = await receive()
                if event["type"] == "http.disconnect":
                    await self._send_patiently(channel, {"content": b"", "closed": True})
                    return
                pending += event.get("body", b"")
                more = bool(event.get("more_body", False))
            chunk, pending = pending[: self.chunk_size], pending[self.chunk_size :]
            last = not more and not pending
            await self._send_patiently(
                channel, {"content": chunk, "closed": False, "more_content": not last}
            )
            if last:
                return

    async def _send_patiently(self, channel: str, content: dict[str, Any]) -> None:
        """Send to a body channel, waiting (up to ``timeout``) while the worker catches up."""
        async with asyncio.timeout(self.timeout):
            while True:
                try:
                    await self.layer.send(channel, content)
                    return
                except ChannelFull:
                    await asyncio.sleep(0.005)

    async def _respond(self, reply: str, send: Send) -> None:
        layer = self.layer
        try:
            async with asyncio.timeout(self.timeout):
                first = await layer.receive(reply)
        except TimeoutError:
            # Explained before answering: the client's disconnect cancels this task.
            why = await self._unanswered.why(layer, "http.request")
            logger.warning("no answer to a request in %s s (504): %s", self.timeout, why)
            await _plain(send, 504, b"Gateway Timeout: no worker answered in time\n")
            return
        await send(
            {
                "type": "http.response.start",
                "status": int(first.get("status", 200)),
                "headers": headers_list(first.get("headers", [])),
            }
        )
        message = first
        while True:
            more = bool(message.get("more_content", False))
            body = message.get("content", b"")
            if isinstance(body, str):
                body = body.encode()  # lenient: a worker's str content is sent as UTF-8
            await send({"type": "http.response.body", "body": body, "more_body": more})
            if not more:
                return
            try:
                async with asyncio.timeout(self.timeout):
                    message = await layer.receive(reply)
            except TimeoutError:
                logger.error("no response chunk on %r in %s s: aborting", reply, self.timeout)
                raise

    # -- WebSocket -----------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        layer = self.layer
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        reply = await layer.new_channel("websocket.send.")
        fields = _request_fields(scope)
        path = fields["path"]
        try:
            await layer.send("websocket.connect", {"reply_channel": reply, **fields, "order": 0})
        except ChannelFull:
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1013})
            return
        try:
            async with asyncio.timeout(self.timeout):
                answer = await layer.receive(reply)
        except TimeoutError:
            why = await self._unanswered.why(layer, "websocket.connect")
            logger.warning("no answer to websocket.connect in %s s: %s", self.timeout, why)
            await send({"type": "websocket.close", "code": 1011})
            return
        if answer.get("close") and not answer.get("accept"):
            await send({"type": "websocket.close", "code": _close_code(answer["close"])})
            return
        await send({"type": "websocket.accept"})
        outbound = asyncio.create_task(self._ws_outbound(reply, send, answer))
        inbound = asyncio.create_task(self._ws_inbound(receive, send, reply, path))
        try:
            await asyncio.wait([outbound, inbound], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (outbound, inbound):
                task.cancel()
            await asyncio.gather(outbound, inbound, return_exceptions=True)

    async def _ws_outbound(self, reply: str, send: Send, first: dict[str, Any]) -> None:
        message = first
        while True:
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            if message.get("close"):
                await send({"type": "websocket.close", "code": _close_code(message["close"])})
                return
            message = await self.layer.receive(reply)

    async def _ws_inbound(self, receive: Receive, send: Send, reply: str, path: str) -> None:
        order = 0
        while True:
            event = await receive()
            order += 1
            if event["type"] == "websocket.disconnect":
                goodbye = {
                    "reply_channel": reply,
                    "code": event.get("code", 1000),
                    "path": path,
                    "order": order,
                }
                try:
                    await self.layer.send("websocket.disconnect", goodbye)
                except ChannelFull:
                    logger.warning("websocket.disconnect is full: dropped the one for %r", reply)
                return
            message: dict[str, Any] = {"reply_channel": reply, "path": path, "order": order}
            if event.get("bytes") is not None:
                message["bytes"] = event["bytes"]
            else:
                message["text"] = event.get("text") or ""
            try:
                await self.layer.send("websocket.receive", message)
            except ChannelFull:
                await send({"type": "websocket.close", "code": 1013})
                with contextlib.suppress(ChannelFull):
                    await self.layer.send(
                        "websocket.disconnect",
                        {"reply_channel": reply, "code": 1013, "path": path, "order": order + 1},
                    )
                return


def _close_code(value: Any) -> int:
    return 1000 if value is True or not isinstance(value, int) else value


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


#: A ready application for ASGI servers (``uvicorn layers.interface:application``); its
#: layer is :func:`layers.get_channel_layer`, read on first use (``LAYERS_URL``, Django
#: ``CHANNEL_LAYERS`` or :func:`layers.configure`).
application = InterfaceServer()
