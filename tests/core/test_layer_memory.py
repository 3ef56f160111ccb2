"""What a layer remembers between calls: validated names, bounded, and capacities kept current."""

from __future__ import annotations

import asyncio

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

    asyncio.run(main())
