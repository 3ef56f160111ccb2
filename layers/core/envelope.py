"""The wire envelope: what the core stores for every message, in one versioned format.

A backend stores opaque payloads; the core wraps each serialized message body in an
envelope that says which reply channels of an inbox it is for and when it expires::

    version 1, normal channel:  0x01 | deadline (big-endian double) | body
    version 1, reply channels:  0x02 | deadline | local,local,... | 0x0A | body

The first byte is the kind *and* the format version: a later format takes new kind
bytes, so a payload stored by another release is recognised, or refused with a clear
error (:func:`unpack`), never misread. The PostgreSQL backend builds the same bytes in
SQL for ``group_send`` (see :class:`~layers.GroupPayload`).

A backend that declares ``in_process`` (its store never leaves the process) gets an
*in-process envelope* for each ``send`` instead: the tuple ``(targets, deadline,
body)`` with the message copy as ``body`` (:func:`pack_local`), which it stores as it
is. Nothing is encoded or decoded on that path; :func:`unpack` reads both forms.
"""

from __future__ import annotations

import struct
from typing import Any

from layers.core.backend import GroupPayload

__all__ = ["VERSION", "group_payload", "pack", "pack_local", "unpack"]

#: The envelope format this release writes and reads.
VERSION = 1

_PLAIN = b"\x01"
_TARGETED = b"\x02"
_DEADLINE = struct.Struct("!d")
_BODY = 1 + _DEADLINE.size


def pack(targets: list[str] | None, body: bytes, deadline: float) -> bytes:
    r"""Wrap a serialized body with its local targets and its expiry deadline.

    ``deadline`` is the sender's wall-clock time (``time.time()``) at which the
    message expires. It never orders anything and the store enforces expiry with its
    own clock; the receiver uses it only to cap how long a popped message may wait in
    a local buffer, so buffering never makes a message outlive its expiry.

    Format: a kind byte, the deadline as a big-endian double, then ``body`` for a
    normal channel (kind 1), or the comma-joined local names, a newline and ``body``
    for reply channels (kind 2; local names never hold ``,`` or a newline).
    """
    header = _DEADLINE.pack(deadline)
    if targets is None:
        return b"".join((_PLAIN, header, body))
    return b"".join((_TARGETED, header, ",".join(targets).encode("ascii"), b"\n", body))


def pack_local(targets: list[str] | None, body: bytes, deadline: float) -> bytes:
    """The in-process envelope of a body: the tuple ``(targets, deadline, body)``.

    Only for a backend that declares ``in_process``, which stores payloads as they
    are; the tuple is typed as the payload bytes the backend API names. ``body`` is
    what :class:`~layers.core.serializers.InProcessSerializer` made (the message copy).
    """
    envelope: Any = (targets, deadline, body)
    return envelope  # type: ignore[no-any-return]


def group_payload(body: bytes, deadline: float, expiry: float, capacity: int) -> GroupPayload:
    """The envelopes of one ``group_send``, as :class:`~layers.GroupPayload` describes them.

    Equal to :func:`pack` for every receiving queue: ``plain`` is ``pack(None, ...)``
    and an inbox's payload is ``pack(its local names, ...)``.
    """
    header = _DEADLINE.pack(deadline)
    return GroupPayload(
        plain=b"".join((_PLAIN, header, body)),
        targeted_head=_TARGETED + header,
        body=body,
        expiry=expiry,
        capacity=capacity,
    )


def unpack(payload: bytes) -> tuple[list[str] | None, float, bytes]:
    """Inverse of :func:`pack` and :func:`pack_local`: ``(targets, deadline, body)``.

    Raises ValueError for an unknown format.
    """
    stored: object = payload  # an in-process envelope is a tuple
    if type(stored) is tuple:
        return stored
    kind = payload[:1]
    (deadline,) = _DEADLINE.unpack_from(payload, 1)
    if kind == _PLAIN:
        return None, deadline, payload[_BODY:]
    if kind == _TARGETED:
        end = payload.index(b"\n", _BODY)
        return payload[_BODY:end].decode("ascii").split(","), deadline, payload[end + 1 :]
    raise ValueError(
        f"unknown envelope format {kind!r} (this release reads version {VERSION}: "
        "was the message stored by a newer release?)"
    )
