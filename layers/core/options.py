"""The layer's own options and the URL query: which names exist, and how a URL splits.

Shared by :class:`~layers.ChannelLayer` (which validates what it is given) and
:mod:`layers.core.config` (which builds layers from URLs and settings); neither builds
anything here, so the layer imports it without importing the builders.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from layers.core.backend import Backend
from layers.core.errors import ConfigurationError, UnknownOption

__all__ = ["LAYER_OPTIONS", "check_options", "split_url", "url_query_names"]


_LAYER_QUERY_OPTIONS: dict[str, type] = {
    "expiry": float,
    "group_expiry": float,
    "capacity": int,
    "max_message_size": int,
    "serializer_format": str,
    "prefetch": int,
}


#: The options :class:`~layers.ChannelLayer` itself takes, on every backend.
LAYER_OPTIONS: frozenset[str] = frozenset(
    {
        "capacity",
        "channel_capacity",
        "expiry",
        "group_expiry",
        "max_message_size",
        "prefetch",
        "serializer_format",
        "symmetric_encryption_keys",
        "url",
    }
)


def check_options(backend: type[Backend], names: Iterable[str], *, in_url: bool = False) -> None:
    """Raise :class:`~layers.UnknownOption` for the first name ``backend`` does not take.

    ``names`` are backend options given as keywords (or, with ``in_url``, the query
    parameters left once the layer options are removed from a URL). The check uses
    :meth:`Backend.option_names` / :meth:`Backend.url_option_names`; a backend that
    answers None takes any name and checks them itself.
    """
    valid = backend.url_option_names() if in_url else backend.option_names()
    if valid is None:
        return
    layer_names = set(_LAYER_QUERY_OPTIONS) if in_url else set(LAYER_OPTIONS)
    for name in names:
        if name in valid:
            continue
        everything = sorted(layer_names | set(valid))
        close = difflib.get_close_matches(name, everything, n=1, cutoff=0.6)
        shown = [n for n in everything if not (n.startswith("sentinel_") and n[9:] in valid)]
        if len(shown) < len(everything):
            shown.append("sentinel_<option>")
        raise UnknownOption(
            name,
            backend.name or backend.__name__,
            shown,
            close[0] if close else None,
            where="in the URL" if in_url else "",
        )


def url_query_names(url: str) -> list[str]:
    """The names in ``url``'s query string, in order."""
    query = url.partition("?")[2].partition("#")[0]
    return [key for key, _ in parse_qsl(query, keep_blank_values=True)]


def split_url(url: str) -> tuple[str, str, dict[str, Any]]:
    """Return ``(scheme, url without layer options, layer options)`` for a layer URL."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError("url", f"expected a URL like 'redis://host:6379', got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme:
        raise ConfigurationError("url", f"the URL {url!r} has no scheme")
    layer_options: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _LAYER_QUERY_OPTIONS.get(key)
        if kind is None:
            rest.append((key, value))
            continue
        try:
            layer_options[key] = kind(value)
        except ValueError:
            raise ConfigurationError(
                key, f"{value!r} in the URL is not a valid {kind.__name__}"
            ) from None
    # Replace only the query string: re-assembling the URL from its parts would turn
    # sqlite:////abs/path.db into sqlite://abs/path.db.
    base, _, tail = url.partition("?")
    fragment = tail.partition("#")[2] if tail else url.partition("#")[2]
    base = base.partition("#")[0]
    stripped = base + (f"?{urlencode(rest)}" if rest else "") + (f"#{fragment}" if fragment else "")
    return scheme, stripped, layer_options
