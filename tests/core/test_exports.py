"""The public API is exactly what layers.__all__ lists."""

import asyncio
import json
import types
from collections.abc import Callable
from typing import Any

import layers


def test_all_is_sorted_and_unique() -> None:
    assert list(layers.__all__) == sorted(set(layers.__all__))


def test_every_public_name_is_exported() -> None:
    public = {
        name
        for name, value in vars(layers).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} == set(layers.__all__)


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in layers.__all__:
        value = getattr(layers, name)
        if callable(value):
            assert value.__doc__, f"layers.{name} has no docstring"


def test_a_serializer_plugin_needs_only_the_top_level_names() -> None:
    class Json:
        calls = 0

        def dumps(self, message: dict[str, Any]) -> bytes:
            Json.calls += 1
            return json.dumps(message).encode()

        def loads(self, data: bytes) -> dict[str, Any]:
            return dict(json.loads(data))

    factory: Callable[[], layers.Serializer] = Json
    layers.register_serializer("test-exports-json", factory)
    layer = layers.from_url("memory://", serializer_format="test-exports-json")

    async def round_trip() -> dict[str, Any]:
        await layer.send("exports", {"text": "hi"})
        return await layer.receive("exports")

    assert asyncio.run(round_trip()) == {"text": "hi"}
    assert Json.calls == 1


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("layers").joinpath("py.typed").is_file()
