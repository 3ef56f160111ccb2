"""Send and receive, FIFO, reply channels: the first rules of the contract."""

from __future__ import annotations

import pytest

from layers.conformance_tests.plugin import LayerFactory, async_test


@async_test
async def test_send_then_receive(layer_factory: LayerFactory) -> None:
    async with layer_factory() as layer:
        await layer.send("conformance.basic", {"type": "test.message", "n": 1})
        assert await layer.receive("conformance.basic") == {"type": "test.message", "n": 1}


@async_test
async def test_fifo_one_writer_one_reader(layer_factory: LayerFactory) -> None:
    async with layer_factory(capacity=500) as layer:
        for i in range(200):
            await layer.send("conformance.fifo", {"i": i})
        got = [(await layer.receive("conformance.fifo"))["i"] for _ in range(200)]
        assert got == list(range(200))


@async_test
async def test_reply_channel_round_trip(layer_factory: LayerFactory) -> None:
    async with layer_factory() as layer:
        reply = await layer.new_channel()
        assert "!" in reply
        await layer.send(reply, {"answer": 42})
        assert await layer.receive(reply) == {"answer": 42}


def test_invalid_name_raises_type_error(layer_factory: LayerFactory) -> None:
    layer = layer_factory()
    with pytest.raises(TypeError):
        async_test(lambda: layer.send("bad name", {}))()
