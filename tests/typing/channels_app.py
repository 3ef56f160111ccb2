"""Application code typed against Channels' own stubs (types-channels), run on our layers.

Checked by ``mypy --strict`` in the ``typecheck`` session; never imported by tests.
"""

from __future__ import annotations

import contextlib
from typing import Any

from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import InMemoryChannelLayer, get_channel_layer

import layers
from layers import SupportsChannelLayer
from layers.backends.memory import MemoryChannelLayer
from layers.backends.redis import RedisChannelLayer


class RoomConsumer(AsyncJsonWebsocketConsumer):
    """A consumer as Channels' docs write it: self.channel_layer comes from the stubs."""

    groups = ["room"]

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        assert self.channel_layer is not None
        try:
            await self.channel_layer.send("jobs", {"type": "job.run", "text": content["text"]})
        except ChannelFull:
            await self.send_json({"error": "busy, try again"})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"]})


def notify_room(text: str) -> None:
    """A sync view helper, as in Channels' docs."""
    layer = get_channel_layer()
    assert layer is not None
    async_to_sync(layer.group_send)("room", {"type": "chat.message", "text": text})


async def relay(layer: SupportsChannelLayer, text: str) -> dict[str, Any]:
    """Library code that takes any Channels-compatible layer: ours or Channels' own."""
    reply = await layer.new_channel()
    await layer.send(reply, {"type": "echo", "text": text})
    return await layer.receive(reply)


async def main() -> None:
    ours = layers.from_url("memory://")
    theirs = InMemoryChannelLayer()
    await relay(ours, "hello")
    await relay(theirs, "hello")
    await relay(MemoryChannelLayer(), "hello")
    await relay(RedisChannelLayer(hosts=["redis://127.0.0.1:6379/0"]), "hello")
    with contextlib.suppress(ChannelFull):  # our ChannelFull is Channels' ChannelFull
        await ours.send("jobs", {"type": "job.run"}, wait=5)
    await ours.close_pools()
    assert ours.require_valid_channel_name("jobs")
    assert ours.get_capacity("jobs") == ours.capacity
