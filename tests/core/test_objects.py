"""The object API: Channel, Group, Message, async and sync."""

from __future__ import annotations

import threading

import pytest

import layers
from layers import Channel, Group, Message
from layers.backends.memory import MemoryChannelLayer
from layers.conformance_tests.plugin import async_test


@async_test
async def test_channel_send_receive_and_reply() -> None:
    layer = MemoryChannelLayer()
    reply = await Channel.new(layer=layer)
    await Channel("jobs", layer=layer).send({"n": 3, "reply_channel": reply.name})
    message = await Channel("jobs", layer=layer).receive()
    assert isinstance(message, Message)
    assert message.content["n"] == 3
    assert message.channel == Channel("jobs", layer=layer)
    assert message.reply_channel == reply
    await message.reply({"square": 9})
    assert (await reply.receive()).content == {"square": 9}


@async_test
async def test_group_add_send_discard() -> None:
    layer = MemoryChannelLayer()
    a, b = await Channel.new(layer=layer), await Channel.new(layer=layer)
    group = Group("liveblog", layer=layer)
    await group.add(a)
    await group.add(b.name)
    await group.send({"text": "one"})
    assert (await a.receive()).content == {"text": "one"}
    assert (await b.receive()).content == {"text": "one"}
    await group.discard(b)
    await group.send({"text": "two"})
    assert (await a.receive()).content == {"text": "two"}


@async_test
async def test_message_without_reply_channel() -> None:
    message = Message(content={"x": 1}, channel=Channel("c"))
    assert message.reply_channel is None
    with pytest.raises(ValueError, match="no reply_channel"):
        await message.reply({})


def test_invalid_names_raise_type_error() -> None:
    with pytest.raises(TypeError):
        Channel("bad name")
    with pytest.raises(TypeError):
        Group("no!bang")


def test_sync_form_from_plain_code() -> None:
    layer = MemoryChannelLayer()
    channel = Channel("sync.jobs", layer=layer)
    channel.sync.send({"n": 1})
    Group("sync.group", layer=layer).sync.add("sync.jobs")
    Group("sync.group", layer=layer).sync.send({"n": 2})
    assert channel.sync.receive().content == {"n": 1}
    assert channel.sync.receive().content == {"n": 2}
    assert threading.active_count() < 50


def test_default_layer_comes_from_settings() -> None:
    layers.configure("memory://?capacity=2")
    try:
        channel = Channel("from.settings")
        assert channel.layer is layers.get_channel_layer()
    finally:
        from layers.core.config import reset

        reset()
