"""What a layer remembers between calls: validated names, bounded, and capacities kept current."""

from __future__ import annotations

import asyncio
import gc
import re
import weakref

import pytest

import layers
from layers.core import layer as layer_module


def test_a_layer_remembers_validated_names_within_a_bound() -> None:
    """Sends and receives check a name once; the memory of names stays bounded."""

    async def main() -> None:
        async with layers.from_url("memory://") as layer:
            for i in range(layer_module._TARGETS_KEPT + 10):
                reply = await layer.new_channel()
                await layer.send(reply, {"i": i})
                assert (await layer.receive(reply))["i"] == i
            assert len(layer._targets) <= layer_module._TARGETS_KEPT
            assert len(layer._receivable) <= layer_module._TARGETS_KEPT
            for _ in range(2):  # a bad name is refused every time, never remembered
                with pytest.raises(TypeError):
                    await layer.send("bad name", {})
                with pytest.raises(TypeError):
                    await layer.receive("bad name")
                with pytest.raises(TypeError):
                    await layer.send(["unhashable"], {})  # type: ignore[arg-type]

    asyncio.run(main())


def test_changing_a_layers_capacity_applies_to_channels_already_sent_to() -> None:
    async def main() -> None:
        async with layers.from_url("memory://?capacity=1") as layer:
            await layer.send("cap", {})
            with pytest.raises(layers.ChannelFull):
                await layer.send("cap", {})
            layer.capacity = 2
            await layer.send("cap", {})
            with pytest.raises(layers.ChannelFull, match="capacity attribute"):
                await layer.send("cap", {})
            layer.channel_capacity = layers.core.options.compile_capacities({"cap": 3})
            await layer.send("cap", {})
            with pytest.raises(layers.ChannelFull, match="channel_capacity pattern"):
                await layer.send("cap", {})
            # What the setting takes works here too: a mapping of globs, pairs.
            layer.channel_capacity = {"ca*": 4}
            await layer.send("cap", {})
            with pytest.raises(layers.ChannelFull, match="'ca\\*'"):
                await layer.send("cap", {})
            layer.channel_capacity = [(re.compile("^c"), 5)]
            await layer.send("cap", {})
            with pytest.raises(layers.ChannelFull, match="channel_capacity pattern"):
                await layer.send("cap", {})
            assert layer.get_capacity("other") == 2

    asyncio.run(main())


@pytest.mark.parametrize(
    ("attribute", "value", "words"),
    [
        ("capacity", 0, "from 1"),
        ("capacity", 2.5, "an integer"),
        ("capacity", True, "an integer"),
        ("capacity", "10", "an integer"),
        ("channel_capacity", {"a*": 0}, "from 1"),
        ("channel_capacity", {3: 1}, "glob strings or compiled regexes"),
        ("channel_capacity", ["a*"], "expected (pattern, capacity)"),
        ("channel_capacity", "a*", "expected a mapping of patterns to capacities"),
        ("channel_capacity", 5, "expected a mapping of patterns to capacities"),
    ],
)
def test_a_bad_capacity_set_on_a_layer_is_refused_and_changes_nothing(
    attribute: str, value: object, words: str
) -> None:
    layer = layers.from_url("memory://?capacity=7", channel_capacity={"x*": 3})
    with pytest.raises(layers.ConfigurationError, match=re.escape(words)) as caught:
        setattr(layer, attribute, value)
    assert attribute in str(caught.value)
    assert (layer.capacity, layer.get_capacity("xy"), layer.get_capacity("z")) == (7, 3, 7)


def test_round_trips_on_fresh_reply_channels_leave_nothing_for_the_garbage_collector() -> None:
    """A request/reply loop leaves no tracked objects behind, so it never wakes the collector.

    Each container object that outlives a call counts towards the next collection,
    which pauses the loop for tens of microseconds (hundreds for an older
    generation): a remembered ``(queue, [local], capacity)`` per reply channel made
    the request/reply p99 of the memory backend a fifth worse than Channels' own.
    """

    async def serve(layer: layers.ChannelLayer) -> None:
        while True:
            request = await layer.receive("rpc")
            await layer.send(request["reply"], {"i": request["i"]})

    async def round_trips(layer: layers.ChannelLayer, count: int) -> None:
        for i in range(count):
            reply = await layer.new_channel()
            await layer.send("rpc", {"i": i, "reply": reply})
            assert (await layer.receive(reply))["i"] == i

    async def main() -> int:
        async with layers.from_url("memory://") as layer:
            server = asyncio.create_task(serve(layer))
            await round_trips(layer, 200)  # warm: timers, mailboxes, caches
            gc.collect()
            gc.disable()
            try:
                before = len(gc.get_objects())
                await round_trips(layer, 1000)
                grown = len(gc.get_objects()) - before
            finally:
                gc.enable()
                server.cancel()
            return grown

    assert asyncio.run(main()) < 100  # was about 2,000: a tuple and a list per round trip


def test_a_layer_dropped_without_closing_leaves_no_pending_task_behind() -> None:
    """A layer used in a loop, then dropped unclosed, is collected without an asyncio error.

    Each loop a layer runs in has a guard task that closes the layer when ``asyncio.run``
    cancels the loop's tasks. It must not keep a dropped layer alive, nor be destroyed
    pending ("Task was destroyed but it is pending!") when the layer is collected.
    """
    reported: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        for _ in range(3):
            layer = layers.from_url("memory://")
            await layer.send("work", {"n": 1})
            assert (await layer.receive("work")) == {"n": 1}
            del layer
            gc.collect()
            for _ in range(3):
                await asyncio.sleep(0)
        guards = [t for t in asyncio.all_tasks() if t.get_name() == "layers-loop-guard"]
        assert guards == []

    asyncio.run(main())
    gc.collect()
    assert [ctx.get("message") for ctx in reported] == []


def test_loops_closed_by_hand_are_released_with_their_guards() -> None:
    """``run_until_complete`` then ``loop.close()``, as older sync wrappers do, frees the loop.

    Closing the loop closes the layer's state for it; nothing of the layer's (its guard
    task included) may keep the closed loop alive afterwards.
    """
    layer = layers.from_url("memory://")
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    reported: list[dict[str, object]] = []
    for i in range(5):
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _, ctx: reported.append(ctx))
        loop.run_until_complete(layer.send("work", {"i": i}))
        assert loop.run_until_complete(layer.receive("work")) == {"i": i}
        loop.close()
        loops.append(weakref.ref(loop))
        del loop
    gc.collect()
    assert [ref for ref in loops if ref() is not None] == []
    assert reported == []
