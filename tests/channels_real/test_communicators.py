"""Channels' WebsocketCommunicator / ApplicationCommunicator with group consumers."""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import channel_layers, get_channel_layer
from channels.testing import ApplicationCommunicator, WebsocketCommunicator
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory, override_settings

from layers.conformance_tests.plugin import async_test


def _settings(url: str) -> dict[str, Any]:
    return {
        "default": {"BACKEND": "layers.ChannelLayer", "CONFIG": {"url": url}},
    }


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Joins the room group on connect; relays what it receives to the group."""

    groups = ["room"]

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        await self.channel_layer.group_send("room", {"type": "chat.message", **content})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"]})


class EchoWorker(AsyncConsumer):  # type: ignore[misc]
    """A plain consumer: answers a ``ping`` on its channel to the channel named in it."""

    async def ping(self, message: dict[str, Any]) -> None:
        await self.channel_layer.send(
            message["reply_to"], {"type": "pong", "n": message["n"], "me": self.channel_name}
        )


def notify_view(request: HttpRequest) -> HttpResponse:
    """A sync Django view telling the room, the way Channels' docs show it."""
    layer = get_channel_layer()
    async_to_sync(layer.group_send)("room", {"type": "chat.message", "text": request.GET["t"]})
    return HttpResponse("sent")


async def _close_layer() -> None:
    layer = channel_layers.backends.get("default")
    if layer is not None:
        await layer.flush()
        await layer.aclose()


def test_websocket_group_chat_between_two_clients(backend_url: str) -> None:
    @async_test
    async def scenario() -> None:
        alice = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/room/")
        bob = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/room/")
        try:
            assert (await alice.connect(timeout=10))[0]
            assert (await bob.connect(timeout=10))[0]
            await alice.send_json_to({"text": "hi bob"})
            assert await bob.receive_json_from(timeout=10) == {"text": "hi bob"}
            assert await alice.receive_json_from(timeout=10) == {"text": "hi bob"}
            await bob.disconnect()
            await alice.send_json_to({"text": "alone"})
            assert await alice.receive_json_from(timeout=10) == {"text": "alone"}
            assert await bob.receive_nothing(timeout=0.3)
        finally:
            await alice.disconnect()
            await _close_layer()

    with override_settings(CHANNEL_LAYERS=_settings(backend_url)):
        scenario()


def test_application_communicator_with_a_channel_consumer(backend_url: str) -> None:
    @async_test
    async def scenario() -> None:
        layer = get_channel_layer()
        reply = await layer.new_channel()
        worker = ApplicationCommunicator(EchoWorker.as_asgi(), {"type": "channel"})
        try:
            await worker.send_input({"type": "ping", "n": 1, "reply_to": reply})
            first = await layer.receive(reply)
            assert (first["type"], first["n"]) == ("pong", 1)
            # now through the layer: the consumer listens on its own channel_name
            await layer.send(first["me"], {"type": "ping", "n": 2, "reply_to": reply})
            second = await layer.receive(reply)
            assert (second["n"], second["me"]) == (2, first["me"])
        finally:
            worker.stop(exceptions=False)
            await asyncio.sleep(0.05)  # let the cancelled consumer unwind
            await _close_layer()

    with override_settings(CHANNEL_LAYERS=_settings(backend_url)):
        scenario()


def test_sync_view_group_send_reaches_websocket_clients(backend_url: str) -> None:
    @async_test
    async def scenario() -> None:
        client = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/room/")
        try:
            assert (await client.connect(timeout=10))[0]
            request = RequestFactory().get("/notify/", {"t": "from a view"})
            response = await sync_to_async(notify_view)(request)
            assert response.content == b"sent"
            assert await client.receive_json_from(timeout=10) == {"text": "from a view"}
        finally:
            await client.disconnect()
            await _close_layer()

    with override_settings(CHANNEL_LAYERS=_settings(backend_url)):
        scenario()


def test_get_channel_layer_and_test_config(backend_url: str, tmp_path: object) -> None:
    settings = {
        "default": {
            "BACKEND": "layers.ChannelLayer",
            "CONFIG": {"url": backend_url, "capacity": 7},
            "TEST_CONFIG": {"url": backend_url, "capacity": 3, "expiry": 5},
        }
    }
    with override_settings(CHANNEL_LAYERS=settings):
        layer = get_channel_layer()
        assert layer is get_channel_layer()  # one per alias, as Channels caches it
        assert (layer.capacity, layer.expiry) == (7, 60)
        test_layer = channel_layers.make_test_backend("default")
        assert (test_layer.capacity, test_layer.expiry) == (3, 5)

        async def roundtrip() -> dict[str, Any]:
            await test_layer.send("tc.check", {"type": "x", "n": 1})
            try:
                return dict(await test_layer.receive("tc.check"))
            finally:
                await test_layer.flush()
                await test_layer.aclose()

        assert async_to_sync(roundtrip)() == {"type": "x", "n": 1}
