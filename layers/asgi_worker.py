"""The worker side of the interface server's HTTP messages (tier 3).

Workers answer :class:`~layers.interface.InterfaceServer`'s ``http.request`` messages
with these: :func:`request_body` reads a whole body, :func:`respond` sends a response
(chunked when large), and :class:`AsgiConsumer` runs an ordinary ASGI HTTP application
(a Django or Starlette app) as a worker's consumer. :mod:`layers.interface` re-exports
them; import them from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from layers.core.errors import ChannelFull
from layers.core.objects import Message, sync_safe

__all__ = ["CHUNK_SIZE", "AsgiConsumer", "headers_list", "request_body", "respond"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Default largest body chunk carried in one message (bytes).
CHUNK_SIZE = 256 * 1024


def headers_list(raw: Iterable[Iterable[Any]]) -> list[list[bytes]]:
    """ASGI header pairs (str or bytes) as the ``[name, value]`` byte lists messages carry."""
    out = []
    for name, value in raw:
        out.append(
            [
                name.encode("latin-1") if isinstance(name, str) else bytes(name),
                value.encode("latin-1") if isinstance(value, str) else bytes(value),
            ]
        )
    return out


async def request_body(message: Message, *, timeout: float = 30.0) -> bytes:
    """The whole body of an ``http.request`` message, reading its ``body_channel`` if any.

    Raises :class:`EOFError` when the client went away before the body was complete,
    :class:`TimeoutError` when a chunk takes longer than ``timeout``. Sync consumers call
    it through :func:`asgiref.sync.async_to_sync`.
    """
    parts = [message.content.get("body", b"")]
    channel = message.content.get("body_channel")
    if channel:
        layer = message.channel_layer
        while True:
            async with asyncio.timeout(timeout):
                chunk = await layer.receive(channel)
            if chunk.get("closed"):
                raise EOFError("the client closed the connection before the body was complete")
            parts.append(chunk.get("content", b""))
            if not chunk.get("more_content"):
                break
    return b"".join(parts)


@sync_safe
async def respond(
    message: Message,
    status: int = 200,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    body: bytes = b"",
    *,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """Answer an ``http.request`` message: status, headers and body, chunked when large.

    Safe from sync and async code (see :class:`~layers.Pending`). A chunk that finds the
    reply channel full is retried until it fits (the server drains it as the client reads).
    """
    reply = message.reply_channel
    if reply is None:
        raise ValueError("this message has no reply_channel")
    layer = reply.layer
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]
    for index, chunk in enumerate(chunks):
        content: dict[str, Any] = {"content": chunk, "more_content": index < len(chunks) - 1}
        if index == 0:
            content["status"] = status
            content["headers"] = headers_list(headers)
        while True:
            try:
                await layer.send(reply.name, content)
                break
            except ChannelFull:
                await asyncio.sleep(0.005)


class AsgiConsumer:
    """A worker consumer that runs an ASGI 3 HTTP application for ``http.request`` messages.

    Route ``"http.request": AsgiConsumer(app)``: the app sees an ordinary ``http`` scope
    and request body, and its response goes back through the interface server. Lets a
    Django (``get_asgi_application()``) or Starlette app run behind the three tiers.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, message: Message) -> None:
        """Run the application for one ``http.request`` message."""
        content = message.content
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": content.get("http_version", "1.1"),
            "method": content["method"],
            "scheme": content.get("scheme", "http"),
            "path": content["path"],
            "raw_path": content["path"].encode(),
            "query_string": content.get("query_string", b""),
            "root_path": content.get("root_path", ""),
            "headers": [(bytes(n), bytes(v)) for n, v in content.get("headers", [])],
            "client": tuple(content["client"]) if content.get("client") else None,
            "server": tuple(content["server"]) if content.get("server") else None,
        }
        body_sent = False
        start: dict[str, Any] = {}
        reply = message.reply_channel
        if reply is None:
            raise ValueError("this http.request has no reply_channel")

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if body_sent:
                await asyncio.Event().wait()  # no disconnect is ever reported here
            body_sent = True
            return {"type": "http.request", "body": await request_body(message)}

        async def send(event: MutableMapping[str, Any]) -> None:
            if event["type"] == "http.response.start":
                start.update(status=event["status"], headers=headers_list(event.get("headers", [])))
                return
            if event["type"] != "http.response.body":
                return
            out: dict[str, Any] = {
                "content": event.get("body", b""),
                "more_content": bool(event.get("more_body", False)),
            }
            if start:
                out.update(start)
                start.clear()
            await reply.send(out)

        await self.app(scope, receive, send)
