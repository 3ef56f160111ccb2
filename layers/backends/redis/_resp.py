"""RESP2, the Redis protocol: commands encoded, replies parsed (hiredis or pure Python).

:func:`pack_command` encodes the argument types the backend sends. :func:`new_reader`
returns ``hiredis.Reader`` when hiredis is installed, else a :class:`PythonReader`;
both parse every complete reply in what was fed to them, an error reply being a
*value* (a :class:`redis.ResponseError`, subclassed by :func:`reply_error`).
"""

from __future__ import annotations

import importlib
from typing import Any

from redis.exceptions import InvalidResponse

from layers.backends.redis._errors import reply_error

_hiredis: Any
try:
    _hiredis = importlib.import_module("hiredis")
except ImportError:  # pragma: no cover - the pure-Python reader is used instead
    _hiredis = None
HiredisReader: Any = getattr(_hiredis, "Reader", None)

__all__ = ["HiredisReader", "PythonReader", "new_reader", "pack_command", "pack_into"]


#: Arguments at least this long are kept as their own piece, never formatted into
#: a new string: a 64 KB payload is then copied once, when the batch is joined.
_BIG_ARG = 1024


def pack_command(args: tuple[Any, ...]) -> bytes:
    """Encode one command in RESP: ``str`` as UTF-8, ``int`` and ``float`` as text.

    A lean equivalent of redis-py's packer for the argument types this backend
    sends (``bytes``, ``str``, ``int``, ``float``); anything else is a ``TypeError``.
    """
    parts: list[bytes] = []
    pack_into(args, parts)
    return b"".join(parts)


def pack_into(args: tuple[Any, ...], parts: list[bytes]) -> None:
    """Append the RESP pieces of one command to ``parts`` (see :func:`pack_command`)."""
    append = parts.append
    append(b"*%d\r\n" % len(args))
    for arg in args:
        kind = type(arg)
        if kind is str:
            piece = _STR_PIECES.get(arg)
            if piece is None:
                data = arg.encode()
                piece = b"$%d\r\n%b\r\n" % (len(data), data)
                if len(_STR_PIECES) >= _STR_PIECES_MAX:
                    _STR_PIECES.clear()
                _STR_PIECES[arg] = piece
            append(piece)
            continue
        if kind is bytes:
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = bytes(arg)
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send a {type(arg).__name__} to redis")
        if len(data) >= _BIG_ARG:
            append(b"$%d\r\n" % len(data))
            append(data)
            append(b"\r\n")
        else:
            append(b"$%d\r\n%b\r\n" % (len(data), data))


#: Encoded ``str`` arguments (command names, script hashes, keys), reused.
_STR_PIECES: dict[str, bytes] = {}
_STR_PIECES_MAX = 4096


def new_reader() -> Any:
    """A reply parser: ``hiredis.Reader`` if installed, else a :class:`PythonReader`."""
    if HiredisReader is not None:
        return HiredisReader(protocolError=InvalidResponse, replyError=reply_error)
    return PythonReader()


#: ``gets`` found no complete line or bulk string yet.
_MORE: Any = object()
#: ``gets`` opened an array: its elements follow.
_OPENED: Any = object()
#: Parsed bytes kept before the buffer is compacted.
_COMPACT_AFTER = 65536


class PythonReader:
    """A RESP2 reply parser with the interface of ``hiredis.Reader`` (``feed``, ``gets``).

    ``gets()`` returns the next complete reply, or ``False`` until one is complete.
    Replies: simple strings and bulk strings as ``bytes``, integers as ``int``,
    arrays as ``list`` (nested), nil as ``None``, error replies as the value of
    :func:`reply_error`. A malformed reply raises :class:`redis.InvalidResponse`.
    An array split across reads keeps its parsed elements: nothing is parsed twice.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._open: list[tuple[list[Any], int]] = []  # arrays being filled, innermost last

    def feed(self, data: bytes) -> None:
        """Append bytes received from the server."""
        self._buffer += data

    def gets(self, *_: object) -> Any:
        """The next complete reply, or ``False`` if more bytes are needed."""
        stack = self._open
        while True:
            value = self._next()
            if value is _MORE:
                self._compact()
                return False
            if value is _OPENED:
                continue
            while stack:
                items, size = stack[-1]
                items.append(value)
                if len(items) < size:
                    break
                stack.pop()
                value = items
            else:
                self._compact()
                return value

    def _compact(self) -> None:
        if self._pos >= len(self._buffer):
            self._buffer.clear()
            self._pos = 0
        elif self._pos > _COMPACT_AFTER:
            del self._buffer[: self._pos]
            self._pos = 0

    def _next(self) -> Any:
        """One scalar reply, an opened array (``_OPENED``) or ``_MORE``."""
        buffer, start = self._buffer, self._pos
        end = buffer.find(b"\r\n", start)
        if end < 0:
            return _MORE
        kind, body = buffer[start], bytes(buffer[start + 1 : end])
        self._pos = end + 2
        if kind == 36:  # $ bulk string
            size = _number(body)
            if size < 0:
                return None
            stop = self._pos + size
            if stop + 2 > len(buffer):
                self._pos = start
                return _MORE
            if buffer[stop : stop + 2] != b"\r\n":
                raise InvalidResponse("Protocol error: a bulk string does not end with CRLF")
            data = bytes(buffer[self._pos : stop])
            self._pos = stop + 2
            return data
        if kind == 42:  # * array
            size = _number(body)
            if size < 0:
                return None
            if size == 0:
                return []
            self._open.append(([], size))
            return _OPENED
        if kind == 58:  # : integer
            return _number(body)
        if kind == 43:  # + simple string
            return body
        if kind == 45:  # - error
            return reply_error(body.decode("utf-8", "replace"))
        raise InvalidResponse(f"Protocol error, got {chr(kind)!r} as reply type byte")


def _number(body: bytes) -> int:
    try:
        return int(body)
    except ValueError:
        raise InvalidResponse(f"Protocol error: {body[:20]!r} is not a number") from None
