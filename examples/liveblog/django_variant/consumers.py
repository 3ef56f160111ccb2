"""Consumers: the page, ``POST /posts`` saving a ``Post``, and the group membership."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync

from layers import Message
from layers.interface import request_body, respond

from ..consumers import HTML, JSON, PAGE, ws_connect, ws_disconnect
from .models import Post

__all__ = ["http_consumer", "ws_connect", "ws_disconnect"]


def http_consumer(message: Message) -> None:
    """``GET /`` serves the page; ``POST /posts`` saves a Post (its post_save publishes it)."""
    if message["method"] == "GET" and message["path"] == "/":
        respond(message, 200, HTML, PAGE)
    elif message["method"] == "POST" and message["path"] == "/posts":
        body = async_to_sync(request_body)(message)
        text = parse_qs(body.decode()).get("text", [""])[0]
        post = Post.objects.create(text=text)  # the ORM, in the worker's thread
        respond(message, 201, JSON, json.dumps({"id": post.pk, "text": post.text}).encode())
    else:
        respond(message, 404, JSON, b'{"error": "not found"}')
