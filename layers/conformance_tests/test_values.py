"""Names and messages: accepted names, exact round-trip of ASGI values, clear errors."""

from __future__ import annotations

import math
from typing import Any

import pytest

from layers.conformance_tests.helpers import expect_nothing, receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability
from layers.core.errors import InvalidMessage
from layers.core.layer import ChannelLayer

ASGI_VALUES: dict[str, Any] = {
    "type": "websocket.receive",
    "bytes": b"\x00\x01\xfe\xff binary",
    "empty_bytes": b"",
    "text": "plain ascii",
    "unicode": "héllo wörld ✓ 日本語 🎉",
    "empty": "",
    "int": 42,
    "int_max": 2**63 - 1,
    "int_min": -(2**63),
    "zero": 0,
    "float": 3.141592653589793,
    "neg_float": -2.5e-300,
    "big_float": 1.7976931348623157e308,
    "true": True,
    "false": False,
    "none": None,
    "list": [1, "two", b"three", 4.0, None, [5, [6]]],
    "dict": {"nested": {"deeper": {"bytes": b"\x80", "text": "ü"}}, "empty": {}},
    "empty_list": [],
    "unicode_key_é": "value",
}


def _same(expected: Any, actual: Any, path: str = "message") -> None:
    assert type(actual) is type(expected), f"{path}: {type(expected)} became {type(actual)}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected) or set(actual) == set(expected), path
        for key in expected:
            _same(expected[key], actual[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _same(e, a, f"{path}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), path
    else:
        assert actual == expected, f"{path}: {expected!r} became {actual!r}"


@async_test
async def test_every_asgi_value_type_round_trips(layer_factory: LayerFactory) -> None:
    """bytes stay bytes, str stays str, 64-bit ints, floats, bools, None, nesting, non-ASCII."""
    channel = unique()
    async with layer_factory() as layer:
        await layer.send(channel, ASGI_VALUES)
        _same(ASGI_VALUES, await receive_within(layer, channel))
        reply = await layer.new_channel()
        await layer.send(reply, ASGI_VALUES)
        _same(ASGI_VALUES, await receive_within(layer, reply))


@requires(Capability.GROUPS)
@async_test
async def test_group_message_values_round_trip(layer_factory: LayerFactory) -> None:
    """Values survive ``group_send`` exactly too."""
    group, channel = unique("grp"), unique()
    async with layer_factory() as layer:
        await layer.group_add(group, channel)
        await layer.group_send(group, ASGI_VALUES)
        _same(ASGI_VALUES, await receive_within(layer, channel))


@async_test
async def test_one_megabyte_message(layer_factory: LayerFactory) -> None:
    """A 1 MB message (the spec's limit) is delivered intact."""
    channel = unique()
    payload = bytes(range(256)) * 4096
    async with layer_factory() as layer:
        await layer.send(channel, {"data": payload, "text": "x" * 1000})
        got = await receive_within(layer, channel)
        assert type(got["data"]) is bytes
        assert got["data"] == payload


@async_test
async def test_hundred_character_names_accepted(layer_factory: LayerFactory) -> None:
    """Channel names of 100 characters are accepted; 101 are rejected with TypeError."""
    long_name = ("conf.long." + "x" * 100)[:100]
    async with layer_factory() as layer:
        await layer.send(long_name, {"long": True})
        assert await receive_within(layer, long_name) == {"long": True}
        with pytest.raises(TypeError):
            await layer.send(long_name + "y", {"too": "long"})
        with pytest.raises(TypeError):
            await layer.receive(long_name + "y")
        await expect_nothing(layer, long_name)


BAD_NAMES: list[Any] = [
    "",
    "has space",
    "tab\tname",
    "ünïcode",
    "two!bangs!here",
    "a!b!",
    "x" * 101,
    "slash/name",
    "colon:name",
    123,
    None,
    b"bytes.name",
]


async def _still_usable(layer: ChannelLayer) -> None:
    channel = unique()
    await layer.send(channel, {"ok": True})
    assert await receive_within(layer, channel) == {"ok": True}


@async_test
async def test_bad_channel_names_raise_type_error(layer_factory: LayerFactory) -> None:
    """Invalid channel names raise TypeError on send and receive; the layer stays usable."""
    async with layer_factory() as layer:
        for bad in BAD_NAMES:
            with pytest.raises(TypeError):
                await layer.send(bad, {"x": 1})
            with pytest.raises(TypeError):
                await layer.receive(bad)
        await _still_usable(layer)


BAD_MESSAGES: list[Any] = [
    None,
    "a string",
    b"bytes",
    ["a", "list"],
    42,
    {1: "int key"},
    {b"bytes": "key"},
    {"nested": {2: "int key"}},
    {"set": {1, 2}},
    {"object": object()},
    {"nested": [{"deep": object()}]},
    {"int": 2**64},
    {"int": 2**63},
    {"int": -(2**63) - 1},
    {"complex": 1j},
]


@async_test
async def test_bad_messages_raise_invalid_message(layer_factory: LayerFactory) -> None:
    """Non-dicts, non-str keys, unserialisable values raise InvalidMessage (a TypeError) at send."""
    channel = unique()
    async with layer_factory() as layer:
        for bad in BAD_MESSAGES:
            with pytest.raises(InvalidMessage):
                await layer.send(channel, bad)
        await expect_nothing(layer, channel)
        await _still_usable(layer)
    assert issubclass(InvalidMessage, TypeError)


@requires(Capability.GROUPS)
@async_test
async def test_bad_group_messages_raise_invalid_message(layer_factory: LayerFactory) -> None:
    """``group_send`` refuses bad messages the same way, before touching the store."""
    group, channel = unique("grp"), unique()
    async with layer_factory() as layer:
        await layer.group_add(group, channel)
        for bad in BAD_MESSAGES:
            with pytest.raises(InvalidMessage):
                await layer.group_send(group, bad)
        await expect_nothing(layer, channel)
        await layer.group_send(group, {"good": True})
        assert await receive_within(layer, channel) == {"good": True}


@async_test
async def test_messages_are_copies(layer_factory: LayerFactory) -> None:
    """Changing a message after ``send`` does not change what is received."""
    channel = unique()
    message: dict[str, Any] = {"list": [1, 2], "dict": {"a": 1}}
    async with layer_factory() as layer:
        await layer.send(channel, message)
        message["list"].append(3)
        message["dict"]["b"] = 2
        assert await receive_within(layer, channel) == {"list": [1, 2], "dict": {"a": 1}}
