"""The liveblog's consumers: plain functions, run by ``layers worker``.

- ``http.request``: ``GET /`` serves the page; ``POST /posts`` (form field or JSON ``text``)
  publishes a post to every open page with ``Group("liveblog").send(...)``.
- ``websocket.connect``: the page's socket joins the ``liveblog`` group and is accepted.
- ``websocket.disconnect``: it leaves the group.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync

from layers import Group, Message
from layers.interface import request_body, respond

PAGE = (Path(__file__).parent / "page.html").read_bytes()
HTML = [("content-type", "text/html; charset=utf-8")]
JSON = [("content-type", "application/json")]


def http_consumer(message: Message) -> None:
    """The classic flow: ``http.request`` in, a view, ``http.response`` out."""
    method, path = message["method"], message["path"]
    if method == "GET" and path == "/":
        respond(message, 200, HTML, PAGE)
    elif method == "POST" and path == "/posts":
        publish(message)
    else:
        respond(message, 404, JSON, b'{"error": "not found"}')


def publish(message: Message) -> None:
    """Send a post to every reader, then answer the writer."""
    body = async_to_sync(request_body)(message)
    headers = dict(message["headers"])
    if headers.get(b"content-type", b"").startswith(b"application/json"):
        text = json.loads(body).get("text", "")
    else:
        text = parse_qs(body.decode()).get("text", [""])[0]
    if not text.strip():
        respond(message, 400, JSON, b'{"error": "empty post"}')
        return
    post = json.dumps({"text": text})
    Group("liveblog").send({"text": post})
    respond(message, 201, JSON, post.encode())


def ws_connect(message: Message) -> None:
    """A reader's page connected: join the group, then accept."""
    Group("liveblog").add(message.reply_channel)
    message.reply({"accept": True})


def ws_disconnect(message: Message) -> None:
    """A reader left: leave the group."""
    Group("liveblog").discard(message.reply_channel)
