"""Message validation, serialization and optional encryption at rest.

Every message is checked at ``send`` time: a dict with str keys whose values are the
ASGI types (``bytes``, ``str``, ``int`` in the signed 64-bit range, ``float``,
``bool``, ``None``, ``list`` and ``dict``; tuples are accepted and arrive as lists),
nested at most :data:`MAX_DEPTH` containers deep (so a message that contains
itself is refused too).
Anything else raises :class:`layers.InvalidMessage`, a :class:`TypeError`, before
any I/O, so the error shows where the message was made.

Serializers are registered by name (``serializer_format``): ``"msgpack"`` (the
default; keeps bytes and str apart) and ``"json"`` (boxes bytes as base64). A backend
that declares ``in_process`` (the memory backend) gets :class:`InProcessSerializer`
instead of msgpack: a validated copy of the message's containers that shares its
immutable values, stored as it is, with the same result as a msgpack round trip. With
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

from layers.core.errors import ConfigurationError, InvalidMessage, MessageTooLarge, MissingDriver

__all__ = [
    "MAX_DEPTH",
    "EncryptingSerializer",
    "InProcessSerializer",
    "JSONSerializer",
    "MsgpackSerializer",
    "Serializer",
    "copy_message",
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

# The types the per-message casts name, made once: ``cast(dict[str, Any], x)`` builds
# the generic alias on every call (about 0.3 µs, on every send and receive).
_Message = dict[str, Any]
_AnyDict = dict[Any, Any]
_ObjectDict = dict[object, object]
_Objects = Iterable[object]


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
        for name, item in cast(_ObjectDict, value).items():
            if type(name) is not str:
                raise InvalidMessage(
                    f"message keys must be str; {path} has key {name!r} ({type(name).__name__})"
                )
            if type(item) not in _FLAT:  # containers, ints and anything invalid
                _check_value(item, path, name, depth + 1)
    elif kind is list or kind is tuple:
        path = _where(parent, key)
        for index, item in enumerate(cast(_Objects, value)):
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
    msg = cast(_Message, message)
    if "__asgi_channel__" in msg or "__asgi_group__" in msg:
        raise InvalidMessage("message keys '__asgi_channel__'/'__asgi_group__' are reserved")
    _check_value(msg, "message")
    return msg


class _Refused(Exception):
    """Raised inside :func:`copy_message` to fall back to :func:`validate_message`'s error."""


_SHARED = frozenset({str, bytes, float, bool, type(None)})


def _copy_list(items: Iterable[Any], size: list[int], depth: int) -> list[Any]:
    if depth > MAX_DEPTH:
        raise _Refused
    out: list[Any] = []
    append = out.append
    for item in items:
        kind = type(item)
        if kind is bytes or kind is str:
            size[0] += len(item)
            append(item)
        elif kind in _SHARED:
            append(item)
        elif kind is int:
            if not _INT_MIN <= item <= _INT_MAX:
                raise _Refused
            append(item)
        elif kind is dict:
            append(_copy_dict(item, size, depth + 1))
        elif kind is list or kind is tuple:
            append(_copy_list(item, size, depth + 1))
        else:
            plain = _plain_scalar(item)
            if type(plain) is not bool and type(plain) is not float:
                size[0] += len(plain)  # type: ignore[arg-type]
            append(plain)
    return out


def _copy_dict(mapping: dict[Any, Any], size: list[int], depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise _Refused
    out: dict[str, Any] = {}
    for key, item in mapping.items():
        if type(key) is not str:
            raise _Refused
        kind = type(item)
        if kind is bytes or kind is str:
            size[0] += len(item)
            out[key] = item
        elif kind in _SHARED:
            out[key] = item
        elif kind is int:
            if not _INT_MIN <= item <= _INT_MAX:
                raise _Refused
            out[key] = item
        elif kind is dict:
            out[key] = _copy_dict(item, size, depth + 1)
        elif kind is list or kind is tuple:
            out[key] = _copy_list(item, size, depth + 1)
        else:
            plain = _plain_scalar(item)
            if type(plain) is not bool and type(plain) is not float:
                size[0] += len(plain)  # type: ignore[arg-type]
            out[key] = plain
    return out


def _plain_scalar(value: object) -> object:
    """A subclass of an accepted scalar, as the base type msgpack would give back."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return value[:]  # slicing a str subclass gives an exact str
    if isinstance(value, bytes):
        return value[:]
    if isinstance(value, float):
        return float.__float__(value)
    raise _Refused


def copy_message(message: object) -> tuple[dict[str, Any], int]:
    """A validated copy of ``message`` and its size, as msgpack would round-trip it.

    Containers are copied (tuples become lists); ``str``, ``bytes``, numbers, ``bool``
    and ``None`` are immutable and shared, never copied, so a 64 KB ``bytes`` costs
    nothing. Changing ``message`` afterwards changes nothing in the copy. The size
    is the total length of its ``str`` and ``bytes`` values (what ``max_message_size``
    is checked against on an in-process backend). Raises :class:`InvalidMessage`
    exactly where :func:`validate_message` does.
    """
    if type(message) is not dict or "__asgi_channel__" in message or "__asgi_group__" in message:
        validate_message(message)
    size = [0]
    try:
        return _copy_dict(cast(_AnyDict, message), size, 1), size[0]
    except _Refused:
        validate_message(message)
        raise InvalidMessage("message cannot be copied") from None  # pragma: no cover


class Serializer(Protocol):
    """Turns a validated message dict into bytes and back: what a serializer factory makes.

    Register a factory with :func:`layers.register_serializer`; each layer calls it once.
    ``loads(dumps(message))`` must give back ``message`` (a tuple may come back as a
    list) for every message the layer accepts; the layer validates them first (str
    keys; bytes, str, int, float, bool, None, lists, tuples and dicts as values). Both
    methods run synchronously and without I/O, maybe
    from several threads at once, so nothing can cancel them part-way.
    """

    def dumps(self, message: dict[str, Any]) -> bytes:
        """Serialize a validated message."""
        ...

    def loads(self, data: bytes) -> dict[str, Any]:
        """Deserialize bytes made by :meth:`dumps`."""
        ...


class MsgpackSerializer:
    """msgpack: compact, fast, keeps bytes and str distinct. The default."""

    def dumps(self, message: dict[str, Any]) -> bytes:
        """Serialize with msgpack (bin type for bytes)."""
        try:
            return cast(bytes, msgpack.packb(message, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:  # pragma: no cover - validated
            raise InvalidMessage(f"message cannot be serialized: {exc}") from exc

    def loads(self, data: bytes) -> dict[str, Any]:
        """Deserialize msgpack bytes (str keys only)."""
        return cast(_Message, msgpack.unpackb(data, raw=False, strict_map_key=True))


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
        return cast(_Message, json.loads(data, object_hook=_unbox))


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


_MSGPACK = b"\x01"


class InProcessSerializer:
    """Passes a validated copy of each message itself: for in-process backends.

    :meth:`dumps` returns a :func:`copy_message` copy of the message, not bytes: the
    layer wraps it in an in-process envelope (:func:`layers.core.envelope.pack_local`)
    that the backend stores as it is, and :meth:`loads` gives the copy back. Each
    copy is stored once and popped once, so it reaches one receiver (a ``send`` has
    one). A body meant for several receivers (``group_send``) is made by
    :meth:`dumps_shared`, as msgpack bytes, so every receiver gets its own objects.
    Nothing is kept outside the store: a copy nobody receives goes when the store
    drops its message (expired, flushed, refused as full). Works across the layers of
    one process (the memory backend's named stores), never across processes.
    """

    def __init__(self, *, max_message_size: int | None) -> None:
        self._max = max_message_size
        self._packer = MsgpackSerializer()

    def dumps(self, message: dict[str, Any]) -> bytes:
        """Validate and copy ``message``; return the copy (typed as a body, it is a dict)."""
        copy, size = copy_message(message)
        if self._max is not None and size > self._max:
            raise MessageTooLarge(
                f"the message holds {size} bytes of str and bytes; max_message_size is {self._max}"
            )
        return cast(bytes, copy)

    def dumps_shared(self, message: dict[str, Any]) -> bytes:
        """Serialize ``message`` for several receivers (msgpack); validates it first."""
        body = self._packer.dumps(validate_message(message))
        if self._max is not None and len(body) > self._max:
            raise MessageTooLarge(
                f"the message is {len(body)} bytes serialized; max_message_size is {self._max}"
            )
        return _MSGPACK + body

    def loads(self, data: bytes) -> dict[str, Any]:
        """Return the copy :meth:`dumps` made, or unpack a shared body anew."""
        body: object = data  # the copy itself, or shared msgpack bytes
        if type(body) is dict:
            return body
        if data[:1] != _MSGPACK:
            raise ValueError("not a message body of the in-process serializer")
        return self._packer.loads(data[1:])


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
