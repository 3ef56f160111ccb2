"""The handler the tier benchmarks serve, directly and through the three tiers."""

from __future__ import annotations

from typing import Any

from layers.interface import AsgiConsumer

BODY = b'{"hello": "world"}'


async def handler(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app: HTTP answers a small JSON body; WebSocket echoes."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": event.get("text")})
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"18")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def ws_connect(message: Any) -> None:
    await message.reply({"accept": True})


async def ws_receive(message: Any) -> None:
    await message.reply({"text": message["text"]})


channel_routing = {
    "http.request": AsgiConsumer(handler),
    "websocket.connect": ws_connect,
    "websocket.receive": ws_receive,
}
