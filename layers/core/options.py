"""The layer's own options: which names exist, how a URL splits, what values are valid.

Shared by :class:`~layers.ChannelLayer` (which keeps the :class:`LayerSettings` that
:func:`layer_settings` checks and builds from what it is given) and
:mod:`layers.core.config` (which builds layers from URLs and settings); neither builds
a layer here, so the layer imports it without importing the builders.
"""

from __future__ import annotations

import difflib
import enum
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from layers.core.backend import Backend
from layers.core.errors import ConfigurationError, UnknownBackend, UnknownOption
from layers.core.redact import redact_url
from layers.core.registry import resolve_backend
from layers.core.serializers import InProcessSerializer, Serializer, get_serializer

__all__ = [
    "LAYER_OPTIONS",
    "MAX_COUNT",
    "MAX_EXPIRY",
    "UNSET",
    "LayerSettings",
    "Unset",
    "capacity_patterns",
    "check_number",
    "check_options",
    "compile_capacities",
    "layer_settings",
    "split_url",
    "url_query_names",
]


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
        shown = redact_url(url) if isinstance(url, str) else url
        raise ConfigurationError("url", f"expected a URL like 'redis://host:6379', got {shown!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a broken IPv6 host
        raise ConfigurationError("url", f"{redact_url(url)!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise ConfigurationError("url", f"the URL {redact_url(url)!r} has no scheme")
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


# -- values -----------------------------------------------------------------------------

#: The largest accepted expiry (ten years): every store's clock arithmetic fits.
MAX_EXPIRY = 10 * 365 * 86400
#: The largest accepted count (capacity, sizes): fits every store's 32-bit columns.
MAX_COUNT = 2**31 - 1

_LAYER_DEFAULTS: dict[str, Any] = {
    "expiry": 60,
    "group_expiry": 86400,
    "capacity": 100,
    "max_message_size": 8 * 1024 * 1024,
    "serializer_format": "msgpack",
    "prefetch": 1,
}


class Unset(enum.Enum):
    """The "not given" default of an option for which None means something."""

    UNSET = enum.auto()


UNSET = Unset.UNSET

Capacities = Mapping[Any, int] | Iterable[tuple[Any, int]]


def check_number(
    setting: str, value: object, *, minimum: float, maximum: float, integer: bool = False
) -> Any:
    """Return ``value`` if it is a number (an int with ``integer``) in the range.

    Else raise :class:`~layers.ConfigurationError` naming ``setting``; bools and NaN
    are refused.
    """
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(setting, f"must be {kind}, not {value!r}")
    if not minimum <= value <= maximum:  # type: ignore[operator]  # NaN fails both
        raise ConfigurationError(
            setting, f"must be a number from {minimum} to {maximum}, not {value!r}"
        )
    return value


def _check_shape(channel_capacity: object) -> None:
    """Refuse a ``channel_capacity`` that is neither a mapping nor an iterable of pairs."""
    if isinstance(channel_capacity, str | bytes) or not isinstance(
        channel_capacity, Mapping | Iterable
    ):
        raise ConfigurationError(
            "channel_capacity",
            "expected a mapping of patterns to capacities or (pattern, capacity) pairs, "
            f"got {channel_capacity!r}",
        )


def compile_capacities(channel_capacity: Capacities | None) -> list[tuple[re.Pattern[str], int]]:
    """``{pattern: capacity}`` or pairs (glob strings or compiled regexes), compiled in order."""
    if channel_capacity is None:
        return []
    _check_shape(channel_capacity)
    pairs = (
        list(channel_capacity.items())
        if isinstance(channel_capacity, Mapping)
        else list(channel_capacity)
    )
    compiled: list[tuple[re.Pattern[str], int]] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ConfigurationError(
                "channel_capacity", f"expected (pattern, capacity), got {pair!r}"
            )
        pattern, value = pair
        check_number("channel_capacity", value, minimum=1, maximum=MAX_COUNT, integer=True)
        if isinstance(pattern, str):
            compiled.append((re.compile(fnmatch.translate(pattern)), value))
        elif isinstance(pattern, re.Pattern):
            compiled.append((pattern, value))
        else:
            raise ConfigurationError(
                "channel_capacity",
                f"patterns must be glob strings or compiled regexes: {pattern!r}",
            )
    return compiled


# -- a layer's settings -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerSettings:
    """A layer's checked settings, from keywords, a URL and the backend's own options."""

    backend_class: type[Backend]
    #: What each per-loop backend instance is made with (``prepare_options``' result).
    backend_options: dict[str, Any]
    expiry: float
    group_expiry: float
    capacity: int
    channel_capacity: list[tuple[re.Pattern[str], int]]
    max_message_size: int | None
    prefetch: int
    serializer: Serializer
    #: The in-process serializer when messages are copied, not serialized (also ``serializer``).
    in_process: InProcessSerializer | None
    #: How each ``channel_capacity`` pattern was written, for error messages.
    capacity_labels: list[str]
    #: Where ``capacity`` came from, for :class:`~layers.ChannelFull` messages.
    capacity_origin: str

    def full_message(self, channel: str, capacity: int, wait: float | None) -> str:
        """Say which limit a full channel hit and which setting set it."""
        for (pattern, _value), label in zip(
            self.channel_capacity, self.capacity_labels, strict=True
        ):
            if pattern.match(channel):
                origin = f"channel_capacity pattern {label}"
                break
        else:
            origin = self.capacity_origin
        waited = f" after waiting {wait:g} s for room" if wait else ""
        hint = (
            "a consumer may be slow or gone, or the limit too low"
            if wait
            else "pass send(..., wait=SECONDS) to wait for room"
        )
        return (
            f"channel {channel!r} is full{waited}: it holds {capacity} unexpired "
            f"messages, the limit set by {origin} ({hint})"
        )


def layer_settings(
    bound: type[Backend] | None,
    backend: type[Backend] | str | None,
    given: Mapping[str, Any],
    *,
    channel_capacity: Capacities | None,
    symmetric_encryption_keys: Iterable[str | bytes] | None,
    backend_options: dict[str, Any],
) -> LayerSettings:
    """Check and combine everything :class:`~layers.ChannelLayer` is given.

    ``bound`` is the subclass's ``backend_class`` (None on ``ChannelLayer`` itself);
    ``given`` holds the layer options as keywords, None (or :data:`UNSET` for
    ``max_message_size``) meaning "not given"; ``backend_options`` may hold ``url``.
    One rule for options given twice: a keyword (or Django CONFIG key) wins over the
    same option in the URL's query string. Raises :class:`~layers.ConfigurationError`
    (or :class:`~layers.UnknownOption`) naming the first bad setting.
    """
    keywords = {
        key: value
        for key, value in given.items()
        if value is not (UNSET if key == "max_message_size" else None)
    }
    backend_class, url_backend_options, url_layer_options = _backend(
        bound, backend, backend_options
    )
    options = {**_LAYER_DEFAULTS, **url_layer_options, **keywords}
    capacity = options["capacity"]
    expiry = check_number("expiry", options["expiry"], minimum=0.001, maximum=MAX_EXPIRY)
    group_expiry = check_number(
        "group_expiry", options["group_expiry"], minimum=0.001, maximum=MAX_EXPIRY
    )
    check_number("capacity", capacity, minimum=1, maximum=MAX_COUNT, integer=True)
    compiled, labels = capacity_patterns(channel_capacity)
    size: Any = options["max_message_size"]
    if size is not None:
        check_number("max_message_size", size, minimum=1, maximum=MAX_COUNT, integer=True)
    prefetch = check_number(
        "prefetch", options["prefetch"], minimum=1, maximum=10_000, integer=True
    )
    serializer, in_process = _serializer(
        backend_class, options["serializer_format"], symmetric_encryption_keys, size
    )
    return LayerSettings(
        backend_class=backend_class,
        backend_options=backend_class.prepare_options({**url_backend_options, **backend_options}),
        expiry=expiry,
        group_expiry=group_expiry,
        capacity=capacity,
        channel_capacity=compiled,
        max_message_size=size,
        prefetch=prefetch,
        serializer=serializer,
        in_process=in_process,
        capacity_labels=labels,
        capacity_origin=_origin(capacity, keywords, url_layer_options),
    )


def _origin(capacity: int, keywords: Mapping[str, Any], in_url: Mapping[str, Any]) -> str:
    """Where ``capacity`` came from, as a :class:`~layers.ChannelFull` message names it."""
    if "capacity" in keywords:
        return f"capacity={capacity!r}"
    if "capacity" in in_url:
        return f"capacity={capacity!r} in the URL"
    return f"the default capacity ({capacity!r})"


def capacity_patterns(
    channel_capacity: Capacities | None,
) -> tuple[list[tuple[re.Pattern[str], int]], list[str]]:
    """The compiled ``channel_capacity`` and how each pattern was written (for messages).

    Raises :class:`~layers.ConfigurationError` naming ``channel_capacity`` on a bad pair.
    """
    if channel_capacity is not None and not isinstance(channel_capacity, Mapping):
        _check_shape(channel_capacity)
        channel_capacity = list(channel_capacity)  # read once, if an iterator
    return compile_capacities(channel_capacity), _labels(channel_capacity)


def _backend(
    bound: type[Backend] | None, backend: type[Backend] | str | None, options: dict[str, Any]
) -> tuple[type[Backend], dict[str, Any], dict[str, Any]]:
    """The backend class, the URL's backend options and the URL's layer options.

    Removes ``url`` from ``options`` and checks the remaining names.
    """
    url = options.pop("url", None)
    url_layer_options: dict[str, Any] = {}
    from_scheme = False
    if url is not None:
        scheme, url, url_layer_options = split_url(url)
        if backend is None and bound is None:
            backend, from_scheme = scheme, True
    if backend is not None:
        try:
            backend_class = resolve_backend(backend)
        except UnknownBackend as exc:
            if not from_scheme:
                raise
            raise UnknownBackend(exc.name, exc.installed, exc.suggestion, setting="url") from None
        if not issubclass(backend_class, Backend):
            raise ConfigurationError("backend", f"must be a Backend subclass, not {backend!r}")
    elif bound is None:
        raise ConfigurationError("backend", "give a backend (name or class) or a url")
    else:
        backend_class = bound
    check_options(backend_class, options)
    url_backend_options: dict[str, Any] = {}
    if url is not None:
        check_options(backend_class, url_query_names(url), in_url=True)
        try:
            url_backend_options = backend_class.options_from_url(url)
        except ConfigurationError:
            raise
        except ValueError as exc:  # urllib's own: a port out of range, a broken IPv6 host
            raise ConfigurationError(
                "url", f"{redact_url(url)!r} is not a valid URL: {exc}"
            ) from None
    return backend_class, url_backend_options, url_layer_options


def _labels(channel_capacity: Capacities | None) -> list[str]:
    """How each pattern was written: ``'chat.*'`` or ``re.compile('^chat')``."""
    patterns = (
        channel_capacity
        if isinstance(channel_capacity, Mapping)
        else [pair[0] for pair in channel_capacity or ()]
    )
    return [
        repr(p) if isinstance(p, str) else f"re.compile({getattr(p, 'pattern', p)!r})"
        for p in patterns
    ]


def _serializer(
    backend_class: type[Backend],
    name: object,
    keys: Iterable[str | bytes] | None,
    max_message_size: int | None,
) -> tuple[Serializer, InProcessSerializer | None]:
    """The layer's serializer, and the in-process one when messages are not serialized."""
    if not isinstance(name, str):
        raise ConfigurationError("serializer_format", "must be a serializer name (str)")
    serializer = get_serializer(name, symmetric_encryption_keys=keys)
    # In one process msgpack's round trip is only a deep copy: make the copy
    # directly, sharing immutable values (validated the same way).
    if backend_class.in_process and name == "msgpack" and keys is None:
        in_process = InProcessSerializer(max_message_size=max_message_size)
        return in_process, in_process
    return serializer, None
