"""Consumers and routing tables for the interface-server tests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from asgiref.sync import async_to_sync

from layers import Group, Message
from layers.interface import AsgiConsumer, request_body, respond


def http_echo(message: Message) -> None:
    """A sync consumer: answer with what the request carried (a body digest for big ones)."""
    body = async_to_sync(request_body)(message)
    if message["path"] == "/big":
        respond(message, 200, [("content-type", "application/octet-stream")], body[::-1])
        return
    fields = {
        key: message[key].decode() if isinstance(message[key], bytes) else message[key]
        for key in ("method", "path", "query_string", "scheme", "http_version", "client")
    }
    fields["headers"] = {n.decode(): v.decode() for n, v in message["headers"]}
    fields["length"] = len(body)
    fields["sha256"] = hashlib.sha256(body).hexdigest()
    fields["chunked"] = "body_channel" in message
    respond(message, 201, [("content-type", "application/json")], json.dumps(fields).encode())


async def ws_connect(message: Message) -> None:
    """Refuse ``/refuse``; else join the group and accept."""
    if message["path"] == "/refuse":
        await message.reply({"close": True})
        return
    await Group("ws.tests").add(message.reply_channel)
    await message.reply({"accept": True})


def ws_receive(message: Message) -> None:
    """Echo with the order counter; ``broadcast ...`` goes to the whole group."""
    assert message.reply_channel is not None
    text = message.get("text") or ""
    if text.startswith("broadcast "):
        Group("ws.tests").send({"text": text.removeprefix("broadcast ")})
    elif text == "close":
        message.reply_channel.send({"close": 4001})
    elif message.get("bytes") is not None:
        message.reply_channel.send({"bytes": message["bytes"][::-1]})
    else:
        message.reply_channel.send({"text": json.dumps({"echo": text, "order": message["order"]})})


DISCONNECTS: list[dict[str, Any]] = []


def ws_disconnect(message: Message) -> None:
    DISCONNECTS.append(dict(message.content))
    Group("ws.tests").discard(message.reply_channel)


async def plain_asgi_app(scope: Any, receive: Any, send: Any) -> None:
    """An ordinary ASGI HTTP app, to run behind the tiers with AsgiConsumer."""
    event = await receive()
    body = b"asgi app saw " + scope["method"].encode() + b" " + scope["path"].encode()
    body += b" with " + str(len(event.get("body", b""))).encode() + b" bytes"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"yes")]})
    await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b"!"})


channel_routing = {
    "http.request": http_echo,
    "websocket.connect": ws_connect,
    "websocket.receive": ws_receive,
    "websocket.disconnect": ws_disconnect,
}

asgi_routing = {"http.request": AsgiConsumer(plain_asgi_app)}
