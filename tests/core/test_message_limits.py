"""Values at the edges: boxed-looking JSON data, deep or self-referencing messages, bad numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest

import layers
from layers.conformance_tests.plugin import async_test
from layers.core.errors import ConfigurationError, InvalidMessage
from layers.core.serializers import MAX_DEPTH, JSONSerializer, validate_message

ADVERSARIAL: list[dict[str, Any]] = [
    {"__bytes__": "aGVsbG8="},
    {"x": {"__bytes__": "aGVsbG8="}},
    {"x": {"___bytes__": "aGVsbG8="}},
    {"x": [{"____bytes__": b"raw"}]},
    {"x": {"__bytes__": "a", "other": 1}},
    {"__bytes__": b"\x00\xff"},
    {"x": {"_x__bytes__": 1}},
]


@pytest.mark.parametrize("message", ADVERSARIAL)
def test_json_never_mistakes_user_data_for_bytes(message: dict[str, Any]) -> None:
    serializer = JSONSerializer()
    assert serializer.loads(serializer.dumps(message)) == message


@pytest.mark.parametrize("message", ADVERSARIAL)
@async_test
async def test_json_layer_returns_what_was_sent(message: dict[str, Any]) -> None:
    async with layers.from_url("memory://?serializer_format=json") as layer:
        await layer.send("json.edge", message)
        assert await layer.receive("json.edge") == message


def _nested(depth: int) -> dict[str, Any]:
    message: dict[str, Any] = {}
    inner = message
    for _ in range(depth - 1):
        inner["x"] = {}
        inner = inner["x"]
    return message


def test_depth_limit() -> None:
    validate_message(_nested(MAX_DEPTH))
    with pytest.raises(InvalidMessage, match="deep"):
        validate_message(_nested(MAX_DEPTH + 1))
    with pytest.raises(InvalidMessage, match="deep"):
        validate_message(_nested(10_000))
    looped: dict[str, Any] = {"type": "loop"}
    looped["self"] = looped
    with pytest.raises(InvalidMessage):
        validate_message(looped)
    listed: list[Any] = []
    listed.append(listed)
    with pytest.raises(InvalidMessage):
        validate_message({"l": listed})


def test_ints_are_signed_64_bit() -> None:
    validate_message({"i": 2**63 - 1, "j": -(2**63)})
    for bad in (2**63, 2**64 - 1, -(2**63) - 1):
        with pytest.raises(InvalidMessage, match="signed 64-bit"):
            validate_message({"i": bad})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("expiry", math.nan),
        ("expiry", math.inf),
        ("expiry", 1e10),
        ("group_expiry", math.nan),
        ("group_expiry", -math.inf),
        ("capacity", 2**70),
        ("max_message_size", 2**40),
        ("prefetch", 0),
        ("channel_capacity", {"a.*": 2**40}),
    ],
)
def test_numbers_out_of_range_are_refused_when_the_layer_is_made(option: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=option) as info:
        layers.from_url("memory://", **{option: value})
    assert "from" in str(info.value)
