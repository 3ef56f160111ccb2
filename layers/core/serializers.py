"""Message validation, serialization and optional encryption at rest.

Every message is checked at ``send`` time: a dict with str keys whose values are the
ASGI types (``bytes``, ``str``, ``int`` in the signed 64-bit range, ``float``,
``bool``, ``None``, ``list`` and ``dict``; tuples are accepted and arrive as lists),
nested at most :data:`MAX_DEPTH` containers deep (so a message that contains
itself is refused too).
Anything else raises :class:`layers.InvalidMessage`, a :class:`TypeError`, before
any I/O, so the error shows where the message was made.

Serializers are registered by name (``serializer_format``): ``"msgpack"`` (the
default; keeps bytes and str apart) and ``"json"`` (boxes bytes as base64). With
``symmetric_encryption_keys`` the serialized bytes are encrypted with
:class:`cryptography.fernet.MultiFernet`: the first key encrypts, every key decrypts,
which allows key rotation. Channel and group names stay in plain text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

import msgpack

from layers.core.errors import ConfigurationError, InvalidMessage, MissingDriver

__all__ = [
    "MAX_DEPTH",
    "EncryptingSerializer",
    "JSONSerializer",
    "MsgpackSerializer",
    "Serializer",
    "get_serializer",
    "register_serializer",
    "validate_message",
]

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
#: How many containers (dicts and lists) a message may nest, the message itself included.
MAX_DEPTH = 100
_SCALARS = (str, bytes, float, bool, type(None))
# Exact types that need no further check (subclasses of them take the slow path).
_FLAT = frozenset({str, bytes, float, bool, type(None)})


_ROOT = object()


def _where(parent: str, key: object) -> str:
    """The path of an item, built only when needed (an error, a nested container)."""
    return parent if key is _ROOT else f"{parent}[{key!r}]"


def _check_value(value: object, parent: str, key: object = _ROOT, depth: int = 1) -> None:
    kind = type(value)
    if kind is int:
        if not _INT_MIN <= cast(int, value) <= _INT_MAX:
            raise InvalidMessage(
                f"{_where(parent, key)} = {value} does not fit in a signed 64-bit integer"
            )
        return
    if depth > MAX_DEPTH and (kind is dict or kind is list or kind is tuple):
        raise InvalidMessage(
            f"the message nests more than {MAX_DEPTH} containers deep (or contains itself)"
        )
    if kind is dict:
        path = _where(parent, key)
        for name, item in cast(dict[object, object], value).items():
            if type(name) is not str:
                raise InvalidMessage(
                    f"message keys must be str; {path} has key {name!r} ({type(name).__name__})"
                )
            if type(item) not in _FLAT:  # containers, ints and anything invalid
                _check_value(item, path, name, depth + 1)
    elif kind is list or kind is tuple:
        path = _where(parent, key)
        for index, item in enumerate(cast(Iterable[object], value)):
            if type(item) not in _FLAT:
                _check_value(item, path, index, depth + 1)
    elif not isinstance(value, _SCALARS):
        raise InvalidMessage(
            f"{_where(parent, key)} is of type {kind.__name__}; messages may hold only bytes, str, "
            "int, float, bool, None, list and dict"
        )


def validate_message(message: object) -> dict[str, Any]:
    """Return ``message`` if it is a valid ASGI message, else raise InvalidMessage."""
    if type(message) is not dict:
        raise InvalidMessage(f"a message must be a dict, not {type(message).__name__}")
    msg = cast(dict[str, Any], message)
    if "__asgi_channel__" in msg or "__asgi_group__" in msg:
        raise InvalidMessage("message keys '__asgi_channel__'/'__asgi_group__' are reserved")
    _check_value(msg, "message")
    return msg


class Serializer(Protocol):
    """Turns a validated message dict into bytes and back."""

    def dumps(self, message: dict[str, Any]) -> bytes:
        """Serialize a validated message."""
        ...

    def loads(self, data: bytes) -> dict[str, Any]:
        """Deserialize bytes made by :meth:`dumps`."""
        ...


class MsgpackSerializer:
    """msgpack: compact, fast, keeps bytes and str distinct. The default."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)

    def dumps(self, message: dict[str, Any]) -> bytes:
        """Serialize with msgpack (bin type for bytes)."""
        try:
            return cast(bytes, msgpack.packb(message, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:  # pragma: no cover - validated
            raise InvalidMessage(f"message cannot be serialized: {exc}") from exc

    def loads(self, data: bytes) -> dict[str, Any]:
        """Deserialize msgpack bytes (str keys only)."""
        return cast(dict[str, Any], msgpack.unpackb(data, raw=False, strict_map_key=True))


_BYTES_MARK = "__bytes__"
# A one-key user dict whose key is the mark, with any number of extra leading
# underscores, is written with one more underscore and read back with one fewer, so
# no user value can be mistaken for boxed bytes.
_ESCAPED = re.compile(r"_*__bytes__")


def _box(value: Any) -> Any:
    if isinstance(value, bytes):
        return {_BYTES_MARK: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, item),) = value.items()
            if _ESCAPED.fullmatch(key):
                return {"_" + key: _box(item)}
        return {k: _box(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_box(v) for v in value]
    return value


def _unbox(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, item),) = obj.items()
        if key == _BYTES_MARK:
            return base64.b64decode(item)
        if _ESCAPED.fullmatch(key):
            return {key[1:]: item}
    return obj


class JSONSerializer:
    """JSON with bytes boxed as ``{"__bytes__": base64}`` so they stay bytes.

    A user dict that looks like a box (one key ``__bytes__``, with any number of
    extra leading underscores) is escaped with one more underscore, so every
    message reads back exactly as it was sent.
    """

    def dumps(self, message: dict[str, Any]) -> bytes:
        """Serialize as compact UTF-8 JSON; NaN and infinities are refused."""
        try:
            return json.dumps(_box(message), separators=(",", ":"), allow_nan=False).encode()
        except ValueError as exc:
            raise InvalidMessage(f"message cannot be serialized as JSON: {exc}") from exc

    def loads(self, data: bytes) -> dict[str, Any]:
        """Deserialize JSON, unboxing bytes."""
        return cast(dict[str, Any], json.loads(data, object_hook=_unbox))


class EncryptingSerializer:
    """Wraps a serializer with MultiFernet encryption (``symmetric_encryption_keys``).

    Each key is any string; it is hashed with SHA-256 into a Fernet key, as
    channels_redis does, so the same key strings read each other's messages.
    """

    def __init__(self, inner: Serializer, keys: Iterable[str | bytes]) -> None:
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError as exc:
            raise MissingDriver("encryption", "crypto", "cryptography") from exc
        key_list = list(keys)
        if not key_list:
            raise ConfigurationError("symmetric_encryption_keys", "give at least one key")
        fernets = []
        for key in key_list:
            if not isinstance(key, str | bytes) or not key:
                raise ConfigurationError(
                    "symmetric_encryption_keys", "each key must be a non-empty str or bytes"
                )
            raw = key.encode() if isinstance(key, str) else key
            fernets.append(Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
        self._inner = inner
        self._fernet = MultiFernet(fernets)

    def dumps(self, message: dict[str, Any]) -> bytes:
        """Serialize, then encrypt with the first key."""
        return self._fernet.encrypt(self._inner.dumps(message))

    def loads(self, data: bytes) -> dict[str, Any]:
        """Decrypt with any key, then deserialize."""
        return self._inner.loads(self._fernet.decrypt(data))


_REGISTRY: dict[str, Callable[[], Serializer]] = {
    "msgpack": MsgpackSerializer,
    "json": JSONSerializer,
}


def register_serializer(name: str, factory: Callable[[], Serializer]) -> None:
    """Register a serializer factory under ``name`` for ``serializer_format``."""
    _REGISTRY[name] = factory


def get_serializer(
    name: str = "msgpack", *, symmetric_encryption_keys: Iterable[str | bytes] | None = None
) -> Serializer:
    """Return the serializer called ``name``, wrapped with encryption if keys are given."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigurationError(
            "serializer_format",
            f"unknown serializer {name!r} (registered: {', '.join(sorted(_REGISTRY))})",
        ) from None
    serializer = factory()
    if symmetric_encryption_keys is not None:
        if isinstance(symmetric_encryption_keys, str | bytes):
            raise ConfigurationError(
                "symmetric_encryption_keys", "must be a list of keys, not a single string"
            )
        serializer = EncryptingSerializer(serializer, symmetric_encryption_keys)
    return serializer
