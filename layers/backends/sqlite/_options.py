"""Options of the SQLite backend: the URL forms and the checks made at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from layers.core.errors import ConfigurationError
from layers.core.redact import redact_url

__all__ = ["DEFAULTS", "options_from_url", "prepare_options"]

#: Option name -> default. ``path`` has none: it is required.
DEFAULTS: dict[str, float] = {
    "poll_interval": 0.002,
    "busy_timeout": 5.0,
    "cleanup_interval": 5.0,
}

#: (smallest, largest) accepted value of each numeric option, in seconds.
_RANGES: dict[str, tuple[float, float]] = {
    "poll_interval": (0.0005, 10.0),
    "busy_timeout": (0.0, 3600.0),
    "cleanup_interval": (0.01, 86400.0),
}

_MEMORY_HINT = (
    "an in-memory SQLite database cannot be shared between processes; use memory:// "
    "for one process, or a file path such as sqlite:///app.db"
)


def options_from_url(url: str) -> dict[str, Any]:
    """Map ``sqlite:///relative.db`` / ``sqlite:////abs/path.db?poll_interval=0.005``.

    The path is everything after ``sqlite://`` minus one slash (SQLAlchemy's
    convention), percent-decoded. Query parameters are backend options; unknown
    ones raise :class:`~layers.ConfigurationError` naming them.
    """
    parts = urlsplit(url)
    if parts.netloc == ":memory:":
        raise ConfigurationError("url", _MEMORY_HINT)
    if parts.netloc:
        # urllib.parse.urlunsplit() rewrites sqlite:////abs/path.db as
        # sqlite://abs/path.db (it knows no netloc for this scheme), so a URL that
        # went through it arrives with the first folder as a "host". Undo that;
        # anything that looks like a real host (port, user) is refused.
        if any(c in parts.netloc for c in ":@[]"):
            raise ConfigurationError(
                "url",
                f"sqlite URLs take no host ({redact_url(url)!r}); write sqlite:///relative.db "
                "or sqlite:////absolute/path.db",
            )
        path = "/" + unquote(parts.netloc + parts.path)
    else:
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    options: dict[str, Any] = {"path": path}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in DEFAULTS:
            raise ConfigurationError(
                key,
                f"unknown option in the sqlite URL (known: {', '.join(sorted(DEFAULTS))}; "
                "layer options: expiry, group_expiry, capacity, ...)",
            )
        options[key] = value
    return options


def _number(key: str, value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigurationError(key, f"must be a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(key, f"must be a number of seconds, not {value!r}")
    low, high = _RANGES[key]
    if not low <= value <= high:
        raise ConfigurationError(key, f"must be between {low} and {high} seconds, not {value!r}")
    return float(value)


def _path(value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            "path", f"give the database file, e.g. sqlite:///app.db, not {value!r}"
        )
    if value == ":memory:" or value.startswith("file::memory:") or "mode=memory" in value:
        raise ConfigurationError("path", _MEMORY_HINT)
    if value.startswith("file:"):
        raise ConfigurationError("path", "give a file path, not a SQLite 'file:' URI")
    # Resolve now, so a later chdir() cannot make two instances use two files.
    path = os.path.abspath(os.path.expanduser(value))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigurationError(
            "path",
            f"the directory of {path!r} does not exist (the file is created, not its folder)",
        )
    if os.path.isdir(path):
        raise ConfigurationError("path", f"{path!r} is a directory, not a database file")
    return path


def prepare_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check every option and return them complete, with an absolute ``path``."""
    for key in options:
        if key != "path" and key not in DEFAULTS:
            raise ConfigurationError(
                key,
                f"unknown option for the sqlite backend (known: path, "
                f"{', '.join(sorted(DEFAULTS))})",
            )
    if "path" not in options:
        raise ConfigurationError("path", "the sqlite backend needs a database file path")
    prepared: dict[str, Any] = {"path": _path(options["path"])}
    for key, default in DEFAULTS.items():
        prepared[key] = _number(key, options.get(key, default))
    return prepared
