"""Backend discovery: built-ins, register_backend(), entry points, and clear errors."""

from __future__ import annotations

import sys

import pytest

import layers
from layers.backends.memory import MemoryBackend
from layers.core import registry


def test_builtin_memory() -> None:
    assert layers.get_backend("memory") is MemoryBackend
    assert "memory" in layers.available_backends()


def test_unknown_backend_lists_installed_and_suggests() -> None:
    with pytest.raises(layers.UnknownBackend) as info:
        layers.get_backend("memroy")
    message = str(info.value)
    assert "Did you mean 'memory'?" in message
    for name in ("memory", "redis", "postgresql", "sqlite"):
        assert name in message
    assert isinstance(info.value, ValueError)


def test_unknown_url_scheme() -> None:
    with pytest.raises(layers.UnknownBackend, match="Installed backends"):
        layers.from_url("mongodb://localhost")


def test_an_unknown_backend_names_the_setting_it_came_from() -> None:
    """A URL's scheme is the ``url`` setting's fault; a named backend is ``BACKEND``'s."""
    with pytest.raises(layers.UnknownBackend) as from_url:
        layers.from_url("redos://127.0.0.1")
    assert from_url.value.setting == "url"
    assert str(from_url.value).startswith("url: unknown backend 'redos' (the URL's scheme).")
    assert "Did you mean 'redis'?" in str(from_url.value)
    with pytest.raises(layers.UnknownBackend) as named:
        layers.ChannelLayer(backend="redos")
    assert named.value.setting == "BACKEND"
    assert str(named.value).startswith("BACKEND: unknown backend 'redos'. Did you mean 'redis'?")
    with pytest.raises(layers.UnknownBackend) as in_settings:
        layers.layer_from_config({"CONFIG": {"url": "redos://127.0.0.1"}})
    assert in_settings.value.setting == "url"


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Hide the driver from the import system (the backend module is not loaded yet).
    monkeypatch.setitem(sys.modules, "aiosqlite", None)
    for name in [m for m in sys.modules if m.startswith("layers.backends.sqlite")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(registry, "_cache", {})
    with pytest.raises(layers.MissingDriver) as info:
        layers.get_backend("sqlite")
    assert "pip install 'channel-layers[sqlite]'" in str(info.value)
    assert isinstance(info.value, ImportError)


def test_register_backend_class_and_lazy_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "_cache", {})

    class Custom(MemoryBackend):
        name = "custom"

    layers.register_backend("custom", Custom)
    assert layers.get_backend("custom") is Custom
    layers.register_backend("lazy", "layers.backends.memory:MemoryBackend")
    assert layers.get_backend("lazy") is MemoryBackend
    assert layers.from_url("custom://").backend_class is Custom


def test_builtins_cannot_be_taken_over_by_accident(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "_cache", {})
    with pytest.raises(layers.ConfigurationError, match="replace=True"):
        layers.register_backend("memory", MemoryBackend)
    layers.register_backend("memory", MemoryBackend, replace=True)


def test_registering_a_non_backend_fails_on_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "_cache", {})
    layers.register_backend("bogus", "layers.core.errors:LayerError")
    with pytest.raises(layers.ConfigurationError, match="not a Backend"):
        layers.get_backend("bogus")


def test_incomplete_backend_fails_when_created() -> None:
    class Incomplete(layers.Backend):
        async def aclose(self) -> None:
            return None

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]
