"""Consumers for the worker tests, run in ``layers worker`` child processes."""

from __future__ import annotations

import asyncio
import os
import time

from layers import Channel, Group, Message


def job(message: Message) -> None:
    """A plain function: reply with who handled it, without ``await``."""
    if message.get("sleep"):
        Channel("results.started").send({"id": message["id"]})
        time.sleep(message["sleep"])
    time.sleep(message.get("pause", 0))
    Channel("results").send({"id": message["id"], "pid": os.getpid()})


async def async_job(message: Message) -> None:
    """A coroutine consumer."""
    await asyncio.sleep(message.get("sleep", 0))
    await Channel("results").send({"id": message["id"], "pid": os.getpid(), "async": True})


def boom(message: Message) -> None:
    """Raises for ``{"boom": True}``, else replies."""
    if message.get("boom"):
        raise RuntimeError(f"consumer exploded on {message['id']}")
    assert message.reply_channel is not None
    message.reply_channel.send({"id": message["id"], "ok": True})


def join(message: Message) -> None:
    """The seed's connect consumer: join the group, then answer."""
    assert message.reply_channel is not None
    Group("tier.group").add(message.reply_channel)
    message.reply_channel.send({"joined": True})


channel_routing = {
    "jobs": job,
    "async.jobs": async_job,
    "boom": "tiers_app.boom",
    "join": join,
}


def stream(message: Message) -> None:
    """``/stream`` sends a first chunk, then hangs (to be killed); anything else is 200."""
    assert message.reply_channel is not None
    if message["path"] == "/stream":
        message.reply_channel.send(
            {"status": 200, "headers": [], "content": b"first chunk", "more_content": True}
        )
        time.sleep(60)
    message.reply_channel.send({"status": 200, "headers": [], "content": f"ok {os.getpid()}"})


http_routing = {"http.request": stream}
