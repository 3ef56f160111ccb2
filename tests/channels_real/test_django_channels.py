"""Django Channels itself, on MemoryChannelLayer: its get_channel_layer and a consumer."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import channel_layers
from channels.layers import get_channel_layer as channels_get_channel_layer
from channels.testing import WebsocketCommunicator

from layers.backends.memory import MemoryChannelLayer
from layers.conformance_tests.plugin import async_test


class RoomConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    groups = ["room"]

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"], "raw": event["raw"].hex()})


def test_channels_builds_our_layer_from_settings() -> None:
    layer = channels_get_channel_layer()
    assert isinstance(layer, MemoryChannelLayer)
    assert layer.capacity == 50
    assert layer.extensions == ["groups", "flush"]


@async_test
async def test_consumer_joins_group_and_receives_group_send() -> None:
    channel_layers.backends.clear()  # a fresh layer for this event loop's test
    communicator = WebsocketCommunicator(RoomConsumer.as_asgi(), "/ws/room/")
    connected, _ = await communicator.connect()
    assert connected
    layer = channels_get_channel_layer()
    await layer.group_send("room", {"type": "chat.message", "text": "hello", "raw": b"\x01"})
    assert await communicator.receive_json_from(timeout=5) == {"text": "hello", "raw": "01"}
    await communicator.disconnect()
