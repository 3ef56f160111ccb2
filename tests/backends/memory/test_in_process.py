"""The memory backend copies messages instead of serializing them, sharing immutables.

An in-process backend gets :class:`~layers.core.serializers.InProcessSerializer`
instead of msgpack, and the store holds each message copy itself. These tests pin
what that must keep: the receiver gets a copy of the containers (a change after
``send`` changes nothing), the immutable values are shared rather than copied,
group receivers get separate objects, bad messages still fail at ``send``, and
copies of messages nobody receives do not pile up.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

import layers
from layers.backends.memory import MemoryBackend, MemoryChannelLayer
from layers.conformance_tests.plugin import async_test
from layers.core.serializers import (
    MAX_DEPTH,
    InProcessSerializer,
    MsgpackSerializer,
    copy_message,
    validate_message,
)


def test_only_an_in_process_backend_with_the_default_format_copies_instead_of_serializing() -> None:
    assert isinstance(MemoryChannelLayer()._serializer, InProcessSerializer)
    assert not isinstance(
        MemoryChannelLayer(serializer_format="json")._serializer, InProcessSerializer
    )

    class OutOfProcess(MemoryBackend):
        in_process = False

    assert isinstance(layers.ChannelLayer(backend=OutOfProcess)._serializer, MsgpackSerializer)


@async_test
async def test_immutable_values_are_shared_and_containers_copied() -> None:
    layer = MemoryChannelLayer()
    data = b"x" * 65536
    text = "y" * 1000
    message: dict[str, Any] = {"data": data, "text": text, "nested": {"list": [1, (2, 3)]}}
    await layer.send("ref", message)
    message["nested"]["list"].append(4)
    got = await layer.receive("ref")
    assert got["data"] is data  # never copied
    assert got["text"] is text
    assert got["nested"] == {"list": [1, [2, 3]]}  # tuples arrive as lists, as with msgpack
    assert got is not message
    assert got["nested"] is not message["nested"]


def test_copy_matches_a_msgpack_round_trip() -> None:
    class Text(str):
        pass

    class Blob(bytes):
        pass

    message = {
        "s": Text("sub"),
        "b": Blob(b"sub"),
        "t": (1, [2.5, None, True], {"k": b"v"}),
        "i": 2**63 - 1,
        "n": -(2**63),
    }
    packer = MsgpackSerializer()
    copy, size = copy_message(message)
    assert copy == packer.loads(packer.dumps(message))
    assert type(copy["s"]) is str
    assert type(copy["b"]) is bytes
    assert size == len("sub") + len(b"sub") + len(b"v")


SELF: dict[str, Any] = {"a": []}
SELF["a"].append(SELF)
DEEP: dict[str, Any] = {}
_level = DEEP
for _ in range(MAX_DEPTH):
    _level["x"] = {}
    _level = _level["x"]


@pytest.mark.parametrize(
    "bad",
    [
        {1: "x"},
        {"x": object()},
        {"x": [2**63]},
        {"x": {"y": {3}}},
        {"__asgi_channel__": "c"},
        [],
        SELF,
        DEEP,
    ],
)
def test_copy_refuses_what_validation_refuses(bad: Any) -> None:
    with pytest.raises(layers.InvalidMessage):
        validate_message(bad)
    with pytest.raises(layers.InvalidMessage):
        copy_message(bad)


@async_test
async def test_group_receivers_get_separate_objects() -> None:
    layer = MemoryChannelLayer()
    await layer.group_add("g", "a")
    await layer.group_add("g", "b")
    await layer.group_send("g", {"list": [1]})
    first = await layer.receive("a")
    first["list"].append(2)
    assert await layer.receive("b") == {"list": [1]}


@async_test
async def test_refused_and_expired_messages_leave_no_copy_behind() -> None:
    # The copies share their bytes with the sender's message, so the reference count
    # of those bytes tells whether any copy is still held anywhere.
    layer = MemoryChannelLayer(capacity=1, expiry=0.05)
    kept = b"k" * 1000
    refused = b"r" * 1000
    baseline = sys.getrefcount(kept), sys.getrefcount(refused)
    await layer.send("full", {"data": kept})
    assert sys.getrefcount(kept) == baseline[0] + 1  # the stored copy
    for _ in range(20):
        with pytest.raises(layers.ChannelFull):
            await layer.send("full", {"data": refused})
    assert sys.getrefcount(refused) == baseline[1]  # a refused send keeps nothing
    await asyncio.sleep(0.1)
    await layer.send("full", {"data": b"new"})  # the expired message goes: room again
    assert sys.getrefcount(kept) == baseline[0]
    assert await layer.receive("full") == {"data": b"new"}


@async_test
async def test_max_message_size_counts_str_and_bytes() -> None:
    layer = MemoryChannelLayer(max_message_size=1000)
    with pytest.raises(layers.MessageTooLarge):
        await layer.send("big", {"data": "x" * 600, "more": b"y" * 600})
    with pytest.raises(layers.MessageTooLarge):
        await layer.group_send("g", {"data": b"x" * 2000})
    await layer.send("big", {"data": "x" * 900})
    assert (await layer.receive("big"))["data"] == "x" * 900


@async_test
async def test_named_stores_share_references_between_layers() -> None:
    one = layers.from_url("memory://in-process-shared")
    two = layers.from_url("memory://in-process-shared")
    data = b"z" * 100
    await one.send("shared.ch", {"data": data})
    got = await two.receive("shared.ch")
    assert got["data"] is data
