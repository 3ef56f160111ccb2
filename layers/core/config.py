"""One configuration path: URLs, Django ``CHANNEL_LAYERS`` and :func:`configure`.

Every form ends as ``ChannelLayer(backend=BackendClass, **options)``:

- a URL, ``layers.from_url("redis://localhost:6379/0?expiry=30")``: the scheme names
  the backend; the query parameters ``expiry``, ``group_expiry``, ``capacity``,
  ``max_message_size`` and ``serializer_format`` are layer options, the rest belong
  to the backend;
- Django settings, ``CHANNEL_LAYERS = {"default": {"BACKEND": ..., "CONFIG": {...}}}``
  where ``BACKEND`` is a dotted class path (as Django Channels expects) or a
  registered backend name (``"redis"``), and ``CONFIG`` may hold a ``url``;
- :func:`configure` for programs without Django, or the ``LAYERS_URL`` environment
  variable.

Options given twice
    One rule everywhere: an option given as a keyword argument (``from_url(url,
    expiry=10)``, ``ChannelLayer(url=..., capacity=5)``) or as a ``CONFIG`` key next
    to a ``url`` **overrides** the same option in the URL's query string. This holds
    for the layer options and for every backend option.

Unknown options
    Every option name is checked once, here, for every backend: an unknown one
    raises :class:`~layers.UnknownOption` naming the option, the backend, every
    valid name (layer options included) and the closest match.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from layers.core.backend import Backend
from layers.core.errors import ConfigurationError
from layers.core.layer import ChannelLayer
from layers.core.options import LAYER_OPTIONS, check_options, split_url
from layers.core.registry import import_string

__all__ = [
    "DEFAULT_ALIAS",
    "LAYER_OPTIONS",
    "check_options",
    "configure",
    "from_url",
    "get_channel_layer",
    "layer_from_config",
    "reset",
    "split_url",
]

DEFAULT_ALIAS = "default"


def from_url(url: str, **options: Any) -> ChannelLayer:
    """Make a layer from a URL: ``memory://``, ``redis://``, ``postgresql://``, ``sqlite:///``...

    Keyword options override the URL's query parameters.
    """
    return ChannelLayer(url=url, **options)


def layer_from_config(config: Mapping[str, Any], *, test: bool = False) -> Any:
    """Make a layer from one ``CHANNEL_LAYERS`` entry (``BACKEND``, ``CONFIG``, ``TEST_CONFIG``).

    ``BACKEND`` may be a registered name, a dotted path to a ``ChannelLayer``
    subclass, to a ``Backend`` subclass, or to any other Channels-compatible layer
    class (made with ``CONFIG`` as keyword arguments, as Channels does).
    """
    if not isinstance(config, Mapping):
        raise ConfigurationError("CHANNEL_LAYERS", f"each entry must be a dict, not {config!r}")
    if "ROUTING" in config:
        raise ConfigurationError("ROUTING", "routing is configured in the application, not here")
    key = "TEST_CONFIG" if test else "CONFIG"
    if test and key not in config:
        raise ConfigurationError("TEST_CONFIG", "this alias has no TEST_CONFIG")
    options = dict(config.get(key) or {})
    backend = config.get("BACKEND")
    if backend is None:
        if "url" not in options:
            raise ConfigurationError("BACKEND", "give BACKEND or a CONFIG 'url'")
        return ChannelLayer(**options)
    if isinstance(backend, str) and "." in backend and "+" not in backend:
        target = import_string(backend)
        if isinstance(target, type) and issubclass(target, Backend):
            return ChannelLayer(backend=target, **options)
        if callable(target):
            return target(**options)
        raise ConfigurationError("BACKEND", f"{backend!r} is not a layer or backend class")
    return ChannelLayer(backend=backend, **options)


_lock = threading.Lock()
_configured: dict[str, Any] | None = None
_instances: dict[str, Any] = {}


def configure(
    url: str | None = None, *, channel_layers: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Configure layers for programs without Django settings.

    Give a ``url`` for the default alias, or a full ``channel_layers`` mapping in
    the ``CHANNEL_LAYERS`` format. Clears the cached layers.
    """
    global _configured
    if (url is None) == (channel_layers is None):
        raise ConfigurationError("configure", "give exactly one of url= or channel_layers=")
    with _lock:
        _configured = (
            {DEFAULT_ALIAS: {"CONFIG": {"url": url}}}
            if url is not None
            else dict(channel_layers or {})
        )
        _instances.clear()


def reset() -> None:
    """Forget :func:`configure` and every cached layer (for tests)."""
    global _configured
    with _lock:
        _configured = None
        _instances.clear()


def _django_channel_layers() -> Mapping[str, Any] | None:
    try:
        from django.conf import settings
    except ImportError:
        return None
    if not settings.configured:
        return None
    value = getattr(settings, "CHANNEL_LAYERS", None)
    return value if isinstance(value, Mapping) else None


def _settings() -> Mapping[str, Any]:
    if _configured is not None:
        return _configured
    django_layers = _django_channel_layers()
    if django_layers is not None:
        return django_layers
    url = os.environ.get("LAYERS_URL")
    if url:
        return {DEFAULT_ALIAS: {"CONFIG": {"url": url}}}
    return {}


def _channels_layer(alias: str) -> Any:
    """Django Channels' own instance for ``alias``, when Channels is installed and can make it.

    Sharing it matters: a second instance of ``MemoryChannelLayer`` is a second, separate
    store, and on other backends a second set of connections.
    """
    if _django_channel_layers() is None:
        return None
    try:
        from channels.exceptions import InvalidChannelLayerError
        from channels.layers import channel_layers
    except ImportError:
        return None
    if alias not in channel_layers.configs:
        return None
    try:
        return channel_layers[alias]
    except InvalidChannelLayerError:
        # Channels cannot import this BACKEND (a registered name such as "redis"), so
        # no Channels code can hold another instance of it: ours is the only one.
        return None


def get_channel_layer(alias: str = DEFAULT_ALIAS, *, test: bool = False) -> Any:
    """Return the layer for ``alias`` (made once, then cached).

    Reads, in order: :func:`configure`, Django's ``CHANNEL_LAYERS`` when Django is
    configured, then the ``LAYERS_URL`` environment variable. With Django settings
    and Channels installed, the layer is Channels' own instance for the alias
    (``channels.layers.get_channel_layer(alias)``), so the object API and Channels'
    consumers share one layer. Unlike Channels, an unknown alias raises
    :class:`~layers.ConfigurationError` instead of returning None. ``test=True``
    builds from ``TEST_CONFIG``.
    """
    if not test and _configured is None:
        shared = _channels_layer(alias)
        if shared is not None:
            return shared
    cache_key = f"{alias}:test" if test else alias
    layer = _instances.get(cache_key)
    if layer is not None:
        return layer
    settings = _settings()
    if alias not in settings:
        known = ", ".join(sorted(settings)) or "none"
        raise ConfigurationError(
            "CHANNEL_LAYERS",
            f"no channel layer alias {alias!r} (configured: {known}); set CHANNEL_LAYERS, "
            "call layers.configure(), or set LAYERS_URL",
        )
    with _lock:
        layer = _instances.get(cache_key)
        if layer is None:
            layer = _instances[cache_key] = layer_from_config(settings[alias], test=test)
    return layer
