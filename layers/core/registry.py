"""Backend discovery: built-ins, then :func:`register_backend`, then entry points.

A backend name is also a URL scheme (``redis://``, ``postgresql://``). Lookup order:

1. the built-in names (imported lazily, so an unused driver is never imported);
2. names registered in this process with :func:`register_backend`;
3. the ``layers.backends`` entry point group of installed distributions
   (``importlib.metadata``), the way a third-party package ships a backend::

       [project.entry-points."layers.backends"]
       mystore = "layers_mystore:MyStoreBackend"

Built-ins win over the others unless ``register_backend(..., replace=True)``. An
unknown name raises :class:`~layers.UnknownBackend` listing what is installed, with a
close-match suggestion; a missing driver raises :class:`~layers.MissingDriver` naming
the extra to install.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import threading
from dataclasses import dataclass
from typing import Any

from layers.core.backend import Backend
from layers.core.errors import ConfigurationError, MissingDriver, UnknownBackend

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_backends",
    "get_backend",
    "import_string",
    "register_backend",
    "resolve_backend",
]

ENTRY_POINT_GROUP = "layers.backends"


@dataclass(frozen=True)
class _Builtin:
    target: str  # "module:attr"
    extra: str | None  # the pip extra that installs the driver
    driver: str | None  # the driver's top-level module


_CLUSTER = "layers.backends.redis.cluster:RedisClusterBackend"
_BUILTINS: dict[str, _Builtin] = {
    "memory": _Builtin("layers.backends.memory:MemoryBackend", None, None),
    "redis": _Builtin("layers.backends.redis:RedisBackend", "redis", "redis"),
    "rediss": _Builtin("layers.backends.redis:RedisBackend", "redis", "redis"),
    "unix": _Builtin("layers.backends.redis:RedisBackend", "redis", "redis"),
    "redis+sentinel": _Builtin("layers.backends.redis:RedisBackend", "redis", "redis"),
    "redis+cluster": _Builtin(_CLUSTER, "redis", "redis"),
    "rediss+cluster": _Builtin(_CLUSTER, "redis", "redis"),
    "postgresql": _Builtin("layers.backends.postgres:PostgresBackend", "postgres", "psycopg"),
    "postgres": _Builtin("layers.backends.postgres:PostgresBackend", "postgres", "psycopg"),
    "sqlite": _Builtin("layers.backends.sqlite:SqliteBackend", "sqlite", "aiosqlite"),
}

_registered: dict[str, type[Backend] | str] = {}
_cache: dict[str, type[Backend]] = {}
_lock = threading.Lock()


def register_backend(name: str, backend: type[Backend] | str, *, replace: bool = False) -> None:
    """Register ``backend`` (a class, or a lazy ``"module:Class"`` string) as ``name``.

    ``name`` is also the URL scheme. Without ``replace=True`` a built-in name cannot
    be taken over, which keeps ``redis://`` meaning our Redis backend.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError("name", "a backend name must be a non-empty str")
    with _lock:
        if name in _BUILTINS and not replace:
            raise ConfigurationError(
                "name", f"{name!r} is a built-in backend; pass replace=True to override it"
            )
        _registered[name] = backend
        _cache.pop(name, None)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)  # the first distribution found wins
    return found


def available_backends() -> list[str]:
    """Return every backend name that can be looked up (installed or not yet imported)."""
    return sorted(set(_BUILTINS) | set(_registered) | set(_entry_points()))


def _load(target: str, name: str) -> object:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def _check(name: str, obj: object) -> type[Backend]:
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise ConfigurationError("BACKEND", f"backend {name!r} resolved to {obj!r}, not a Backend")
    return obj


def get_backend(name: str) -> type[Backend]:
    """Return the backend class registered as ``name`` (a URL scheme or alias)."""
    cached = _cache.get(name)
    if cached is not None:
        return cached
    builtin = _BUILTINS.get(name)
    if name in _registered:
        entry = _registered[name]
        backend = _check(name, _load(entry, name) if isinstance(entry, str) else entry)
    elif builtin is not None:
        try:
            backend = _check(name, _load(builtin.target, name))
        except ImportError as exc:
            if isinstance(exc, MissingDriver):
                raise
            missing = getattr(exc, "name", None)
            if builtin.driver and missing and missing.split(".")[0] == builtin.driver:
                raise MissingDriver(name, builtin.extra or name, builtin.driver) from exc
            raise
    else:
        entry_points = _entry_points()
        if name not in entry_points:
            installed = available_backends()
            close = difflib.get_close_matches(name, installed, n=1)
            raise UnknownBackend(name, installed, close[0] if close else None)
        backend = _check(name, entry_points[name].load())
    with _lock:
        _cache[name] = backend
    return backend


def resolve_backend(backend: type[Backend] | str) -> type[Backend]:
    """Return a backend class from a class, a registered name or a dotted path."""
    if isinstance(backend, type):
        return backend
    if not isinstance(backend, str):
        raise ConfigurationError("BACKEND", f"expected a backend name or class, got {backend!r}")
    if "." in backend and ":" not in backend and "+" not in backend:
        imported = import_string(backend)
        if isinstance(imported, type) and issubclass(imported, Backend):
            return imported
        raise ConfigurationError("BACKEND", f"{backend!r} is not a Backend subclass")
    return get_backend(backend)


def import_string(path: str) -> Any:
    """Import ``module.attr`` (a dotted path), as a :class:`~layers.ConfigurationError`."""
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError("BACKEND", f"cannot import {path!r}: {exc}") from exc
