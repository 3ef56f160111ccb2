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


# -- sync safety: the same calls from sync code, from a loop thread, awaited -------------


def test_send_from_plain_sync_code_is_sent_when_it_returns() -> None:
    layer = MemoryChannelLayer()
    Channel("plain.jobs", layer=layer).send({"n": 1})  # no await: sync code
    Group("plain.group", layer=layer).add("plain.jobs")
    Group("plain.group", layer=layer).send({"n": 2})
    message = Channel("plain.jobs", layer=layer).sync.receive()
    assert message.reply_channel is None
    assert message.content == {"n": 1}
    assert Channel("plain.jobs", layer=layer).sync.receive().content == {"n": 2}
    Group("plain.group", layer=layer).discard("plain.jobs")
    Group("plain.group", layer=layer).send({"n": 3})
    Channel("plain.jobs", layer=layer).send({"n": 4})
    assert Channel("plain.jobs", layer=layer).sync.receive().content == {"n": 4}


def test_sync_errors_raise_in_the_caller() -> None:
    layer = MemoryChannelLayer(capacity=1)
    Channel("full.one", layer=layer).send({"n": 1})
    with pytest.raises(layers.ChannelFull):
        Channel("full.one", layer=layer).send({"n": 2})
    with pytest.raises(ValueError, match="no reply_channel"):
        Message(content={}, channel=Channel("c", layer=layer)).reply({})


def test_sync_code_in_a_worker_thread_uses_the_callers_loop() -> None:
    """A sync consumer run with sync_to_async sends through the running loop's layer state."""
    from asgiref.sync import sync_to_async

    layer = MemoryChannelLayer()

    def consumer(message: Message) -> None:
        assert message.reply_channel is not None
        message.reply_channel.send({"echo": message.content["n"]})
        Group("thread.group", layer=layer).add(message.reply_channel)

    async def main() -> None:
        reply = await Channel.new(layer=layer)
        await Channel("thread.jobs", layer=layer).send({"n": 5, "reply_channel": reply.name})
        message = await Channel("thread.jobs", layer=layer).receive()
        await sync_to_async(consumer, thread_sensitive=False)(message)
        assert (await reply.receive()).content == {"echo": 5}
        await Group("thread.group", layer=layer).send({"g": 1})
        assert (await reply.receive()).content == {"g": 1}

    import asyncio

    asyncio.run(main())


@async_test
async def test_unawaited_calls_in_a_loop_thread_still_run_in_order() -> None:
    """Sync code called on the loop thread (a signal handler in an async view) cannot block."""
    layer = MemoryChannelLayer()

    def signal_handler(n: int) -> None:
        Channel("loop.jobs", layer=layer).send({"n": n})  # forgot (could not) await

    for n in range(20):
        signal_handler(n)
    received = [(await Channel("loop.jobs", layer=layer).receive()).content["n"] for _ in range(20)]
    assert received == list(range(20))


@async_test
async def test_awaited_call_runs_inline_and_raises() -> None:
    layer = MemoryChannelLayer(capacity=1)
    pending = Channel("inline.one", layer=layer).send({"n": 1})
    assert isinstance(pending, layers.Pending)
    await pending
    assert await layer.receive("inline.one") == {"n": 1}
    await Channel("inline.one", layer=layer).send({"n": 2})
    with pytest.raises(layers.ChannelFull):
        await Channel("inline.one", layer=layer).send({"n": 3})


@async_test
async def test_unawaited_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    layer = MemoryChannelLayer(capacity=1)
    await Channel("logged.one", layer=layer).send({"n": 1})
    Channel("logged.one", layer=layer).send({"n": 2})  # full: fails in the background
    for _ in range(5):
        await asyncio.sleep(0)
    assert any(
        "never awaited, failed" in r.getMessage() and "logged.one" in r.getMessage()
        for r in caplog.records
    ), caplog.text


# -- one layer with Django Channels -------------------------------------------------------


def test_default_layer_is_channels_own_instance() -> None:
    from channels.layers import get_channel_layer as channels_get_channel_layer

    assert layers.get_channel_layer() is channels_get_channel_layer()
    assert Channel("shared.jobs").layer is channels_get_channel_layer()


def test_group_send_from_a_post_save_style_handler_reaches_a_channels_receiver() -> None:
    """The seed's ``Group("liveblog").send(...)`` in a sync signal handler, Channels reading."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer as channels_get_channel_layer

    channels_layer = channels_get_channel_layer()
    reply = async_to_sync(channels_layer.new_channel)()
    async_to_sync(channels_layer.group_add)("seed.liveblog", reply)

    def post_save_handler() -> None:
        Group("seed.liveblog").send({"type": "post.saved", "text": "hello"})

    post_save_handler()
    assert async_to_sync(channels_layer.receive)(reply) == {"type": "post.saved", "text": "hello"}
