"""Options of the PostgreSQL backend: URL query parameters, libpq keywords, Django.

Everything ends as one normalised dict (:func:`normalise`) whose ``conninfo`` is a
libpq connection string and whose other keys are :class:`Settings` fields.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from layers.core.errors import ConfigurationError

__all__ = ["Settings", "from_url", "libpq_keywords", "normalise", "option_names"]

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
_SYNC_VALUES = ("on", "off", "local", "remote_write", "remote_apply")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class Settings:
    """The backend's own settings (the connection itself is ``conninfo``)."""

    schema: str = "layers"
    unlogged: bool = False
    synchronous_commit: str | None = "off"
    poll_only: bool = False
    poll_interval: float | None = None
    notify: bool = True
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout: float = 10.0
    cleanup_interval: float = 30.0
    cleanup_batch: int = 1000
    vacuum_every: int = 5000

    def effective_poll_interval(self) -> float:
        """``poll_interval``, or its default: 1 s with LISTEN, 0.25 s in poll-only mode."""
        if self.poll_interval is not None:
            return self.poll_interval
        return 0.25 if self.poll_only else 1.0


_FIELD_NAMES = frozenset(f.name for f in fields(Settings))


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ConfigurationError(name, f"must be true or false, not {value!r}")


#: The largest number any setting takes (intervals in seconds, sizes and counts).
_MAXIMUM = 2**31 - 1
#: Schemas the layer must never create tables in or flush: PostgreSQL's own, and the
#: default schema every application's tables live in.
_RESERVED_SCHEMAS = frozenset({"public", "pg_catalog", "information_schema", "pg_toast"})


def _number(kind: type, minimum: float) -> Callable[[str, object], Any]:
    def convert(name: str, value: object) -> Any:
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError as exc:
                raise ConfigurationError(name, f"{value!r} is not a valid {kind.__name__}") from exc
        ok_types = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_types):
            raise ConfigurationError(name, f"must be a {kind.__name__}, not {value!r}")
        if not minimum <= value <= _MAXIMUM:  # NaN fails too
            raise ConfigurationError(
                name, f"must be a number from {minimum} to {_MAXIMUM}, not {value!r}"
            )
        return kind(value)

    return convert


def _schema(name: str, value: object) -> str:
    if not isinstance(value, str) or not _SCHEMA_RE.match(value):
        raise ConfigurationError(
            name, f"must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, ≤63), not {value!r}"
        )
    if value in _RESERVED_SCHEMAS or value.startswith("pg_"):
        raise ConfigurationError(
            name,
            f"{value!r} is reserved: flush() empties the layer's schema, so give the layer a "
            "schema of its own (the default is 'layers')",
        )
    return value


def _sync(name: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and value.lower() in ("", "default", "none")):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.lower() in _SYNC_VALUES:
        return value.lower()
    raise ConfigurationError(
        name,
        f"must be one of {', '.join(_SYNC_VALUES)}, or default (the server's own), not {value!r}",
    )


def _optional_poll(name: str, value: object) -> float | None:
    if value is None or value == "":
        return None
    return _number(float, 0.01)(name, value)  # type: ignore[no-any-return]


_CONVERTERS: dict[str, Callable[[str, object], Any]] = {
    "schema": _schema,
    "unlogged": _bool,
    "synchronous_commit": _sync,
    "poll_only": _bool,
    "poll_interval": _optional_poll,
    "notify": _bool,
    "pool_min_size": _number(int, 0),
    "pool_max_size": _number(int, 1),
    "pool_timeout": _number(float, 0.1),
    "cleanup_interval": _number(float, 0.1),
    "cleanup_batch": _number(int, 1),
    "vacuum_every": _number(int, 0),
}


@functools.cache
def libpq_keywords() -> frozenset[str]:
    """The connection keywords the installed libpq knows (``sslmode``, ``connect_timeout``...)."""
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def option_names(*, in_url: bool) -> frozenset[str]:
    """Every backend option: the settings, libpq keywords, and (as keywords) url/dsn/database."""
    extra = frozenset() if in_url else frozenset({"url", "dsn", "database"})
    return _FIELD_NAMES | libpq_keywords() | extra


def from_url(url: str) -> dict[str, Any]:
    """Split a ``postgresql://`` URL into backend settings and the libpq URL."""
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _FIELD_NAMES:
            options[key] = value
        elif key in ("database", "dsn", "url"):
            raise ConfigurationError(key, "cannot be given in the URL's query string")
        else:
            rest.append((key, value))
    scheme = "postgresql" if parts.scheme == "postgres" else parts.scheme
    options["url"] = urlunsplit(parts._replace(scheme=scheme, query=urlencode(rest)))
    return options


def _django_conninfo(alias: str) -> dict[str, Any]:
    """Return libpq keywords from Django's ``DATABASES[alias]`` (needs configured settings)."""
    try:
        from django.conf import settings
    except ImportError as exc:
        raise ConfigurationError("database", "needs Django installed and configured") from exc
    databases = getattr(settings, "DATABASES", {})
    if alias not in databases:
        raise ConfigurationError("database", f"no {alias!r} entry in settings.DATABASES")
    entry = databases[alias]
    keywords: dict[str, Any] = {
        "dbname": entry.get("NAME") or None,
        "user": entry.get("USER") or None,
        "password": entry.get("PASSWORD") or None,
        "host": entry.get("HOST") or None,
        "port": entry.get("PORT") or None,
    }
    for key, value in (entry.get("OPTIONS") or {}).items():
        try:  # keep libpq keywords only (Django also keeps psycopg options here)
            make_conninfo("", **{key: value})
        except psycopg.ProgrammingError:
            continue
        keywords[key] = value
    return {k: v for k, v in keywords.items() if v is not None}


def normalise(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``options``; return ``{"conninfo": str, "settings": Settings}``."""
    settings: dict[str, Any] = {}
    keywords: dict[str, Any] = {}
    sources = [k for k in ("url", "dsn", "database") if options.get(k) is not None]
    if len(sources) > 1:
        raise ConfigurationError(sources[1], f"give only one of url, dsn, database ({sources})")
    base = ""
    for key, value in options.items():
        if key in _FIELD_NAMES:
            settings[key] = _CONVERTERS[key](key, value)
        elif key in ("url", "dsn"):
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(key, f"must be a str, not {value!r}")
            base = value or ""
        elif key == "database":
            if value is not None:
                keywords.update(_django_conninfo(str(value)))
        else:
            keywords[key] = value
    try:
        if "application_name" not in conninfo_to_dict(base):
            keywords.setdefault("application_name", "channel-layers")
        conninfo = make_conninfo(base, **keywords)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError("url", f"not a valid libpq connection: {exc}") from exc
    result = Settings(**settings)
    if result.pool_min_size > result.pool_max_size:
        raise ConfigurationError("pool_min_size", "must not exceed pool_max_size")
    return {"conninfo": conninfo, "settings": result}
