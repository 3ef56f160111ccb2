"""One configuration path: URLs, options, Django settings, configure() and errors."""

from __future__ import annotations

import re

import pytest

import layers
from layers.backends.memory import MemoryBackend, MemoryChannelLayer
from layers.conformance_tests.plugin import async_test
from layers.core import config


@pytest.fixture(autouse=True)
def _reset() -> None:
    config.reset()
    yield
    config.reset()


def test_url_query_sets_layer_options() -> None:
    layer = layers.from_url("memory://?expiry=12.5&capacity=7&group_expiry=30")
    assert (layer.expiry, layer.capacity, layer.group_expiry) == (12.5, 7, 30)
    assert layer.backend_class is MemoryBackend


def test_keyword_overrides_the_url_query() -> None:
    # The documented rule (tests/core/test_option_rules.py checks every option).
    assert layers.from_url("memory://?expiry=5", expiry=9).expiry == 9


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"expiry": "soon"}, "expiry"),
        ({"expiry": 0}, "expiry"),
        ({"group_expiry": -1}, "group_expiry"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"channel_capacity": {"a.*": 0}}, "channel_capacity"),
        ({"channel_capacity": {42: 5}}, "channel_capacity"),
        ({"channel_capacity": [("a", 1, 2)]}, "channel_capacity"),
        ({"channel_capacity": "a.*"}, "channel_capacity"),
        ({"serializer_format": "pickle"}, "serializer_format"),
        ({"symmetric_encryption_keys": "one-key-not-a-list"}, "symmetric_encryption_keys"),
        ({"max_message_size": 0}, "max_message_size"),
        ({"hosts": ["redis://x"]}, "hosts"),
    ],
)
def test_bad_option_names_the_setting(options: dict[str, object], setting: str) -> None:
    with pytest.raises(layers.ConfigurationError) as info:
        MemoryChannelLayer(**options)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert info.value.setting == setting
    assert setting in str(info.value)


def test_bad_url_value_names_the_setting() -> None:
    with pytest.raises(layers.ConfigurationError, match="capacity"):
        layers.from_url("memory://?capacity=lots")


def test_not_a_url() -> None:
    with pytest.raises(layers.ConfigurationError, match="url"):
        layers.from_url("localhost:6379")


def test_channel_capacity_globs_and_regexes_first_match_wins() -> None:
    layer = MemoryChannelLayer(
        capacity=10,
        channel_capacity={"http.request": 200, re.compile(r"^http\..*"): 3, "http.*": 99},
    )
    assert layer.get_capacity("http.request") == 200
    assert layer.get_capacity("http.response!abc") == 3
    assert layer.get_capacity("websocket.send") == 10


def test_extensions_derive_from_capabilities() -> None:
    assert MemoryChannelLayer().extensions == ["groups", "flush"]


def test_django_dotted_path_and_config() -> None:
    layer = layers.get_channel_layer()
    assert isinstance(layer, MemoryChannelLayer)
    assert (layer.expiry, layer.capacity) == (30, 50)
    assert layers.get_channel_layer() is layer  # cached


def test_django_backend_by_registered_name_and_by_url() -> None:
    assert layers.get_channel_layer("by-name").capacity == 7
    by_url = layers.get_channel_layer("by-url")
    assert by_url.expiry == 9
    assert by_url.backend_class is MemoryBackend


def test_django_test_config() -> None:
    assert layers.get_channel_layer(test=True).expiry == 5
    with pytest.raises(layers.ConfigurationError, match="TEST_CONFIG"):
        layers.get_channel_layer("by-name", test=True)


def test_unknown_alias_is_an_error_not_none() -> None:
    with pytest.raises(layers.ConfigurationError, match="no channel layer alias 'nope'"):
        layers.get_channel_layer("nope")


def test_configure_takes_precedence_and_resets_cache() -> None:
    layers.configure("memory://?capacity=3")
    assert layers.get_channel_layer().capacity == 3
    layers.configure(channel_layers={"default": {"BACKEND": "memory", "CONFIG": {"capacity": 4}}})
    assert layers.get_channel_layer().capacity == 4


def test_layers_url_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_django_channel_layers", lambda: None)
    monkeypatch.setenv("LAYERS_URL", "memory://?capacity=11")
    assert layers.get_channel_layer().capacity == 11


def test_routing_key_is_rejected() -> None:
    with pytest.raises(layers.ConfigurationError, match="ROUTING"):
        layers.layer_from_config({"BACKEND": "memory", "ROUTING": "x.routing"})


def test_foreign_layer_classes_are_built_like_channels_does() -> None:
    from channels.layers import InMemoryChannelLayer

    layer = layers.layer_from_config(
        {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 5}}
    )
    assert isinstance(layer, InMemoryChannelLayer)


def test_unimportable_backend_path() -> None:
    with pytest.raises(layers.ConfigurationError, match="cannot import"):
        layers.layer_from_config({"BACKEND": "no.such.module.Layer"})


@async_test
async def test_encryption_round_trip_and_rotation() -> None:
    pytest.importorskip("cryptography")
    old = MemoryChannelLayer(store="crypto", symmetric_encryption_keys=["old-key"])
    rotated = MemoryChannelLayer(store="crypto", symmetric_encryption_keys=["new-key", "old-key"])
    new_only = MemoryChannelLayer(store="crypto", symmetric_encryption_keys=["new-key"])
    await old.send("secret", {"text": "hi", "raw": b"\x00\xff"})
    assert await rotated.receive("secret") == {"text": "hi", "raw": b"\x00\xff"}
    # Stored payloads are encrypted: the plaintext never reaches the store.
    await rotated.send("secret", {"text": "plaintext-marker"})
    store = rotated._backend_options["store"]
    stored = b"".join(payload for _, payload in store.queues["secret"])
    assert b"plaintext-marker" not in stored
    # The first key encrypts: a layer holding only the new key reads it.
    assert await new_only.receive("secret") == {"text": "plaintext-marker"}
    for layer in (old, rotated, new_only):
        await layer.aclose()


@async_test
async def test_json_serializer_keeps_bytes() -> None:
    layer = MemoryChannelLayer(serializer_format="json")
    await layer.send("j", {"b": b"\x00\x01", "s": "x", "n": [1, 2.5, None, True]})
    assert await layer.receive("j") == {"b": b"\x00\x01", "s": "x", "n": [1, 2.5, None, True]}


@async_test
async def test_message_too_large() -> None:
    layer = MemoryChannelLayer(max_message_size=1000)
    with pytest.raises(layers.MessageTooLarge):
        await layer.send("big", {"data": b"x" * 2000})
    await layer.send("big", {"data": b"x" * 10})  # the layer stays usable
    assert (await layer.receive("big"))["data"] == b"x" * 10


def test_require_names_missing_capabilities() -> None:
    layer = MemoryChannelLayer()
    layer.require("groups", layers.Capability.FLUSH)
    with pytest.raises(layers.ConfigurationError, match="cross_process"):
        layer.require(layers.Capability.CROSS_PROCESS)
