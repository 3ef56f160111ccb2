"""Channel and group name rules, reply-channel naming and non-local names.

Names are 1 to 100 ASCII characters from ``[a-zA-Z0-9._-]``. A channel name may hold
one ``!``: the part up to and including it is the *non-local* name, which addresses
the inbox of the layer instance that made the channel. Group names hold no ``!``.
Invalid names raise :class:`TypeError`, as Django Channels does.
"""

from __future__ import annotations

import os
import re
import secrets
import string

__all__ = [
    "INVALID_NAME_ERROR",
    "MAX_NAME_LENGTH",
    "make_client_id",
    "non_local_name",
    "random_suffix",
    "require_valid_channel_name",
    "require_valid_group_name",
    "split_channel",
    "valid_channel_name",
    "valid_group_name",
]

#: The longest accepted channel or group name (the spec asks for at least 100).
MAX_NAME_LENGTH = 100

#: Django Channels' text for an invalid name (``BaseChannelLayer.invalid_name_error``),
#: to format with ``"Channel"`` or ``"Group"``. Our errors start with it, so tests that
#: match Channels' message keep passing; what follows says what is wrong.
INVALID_NAME_ERROR = (
    "{} name must be a valid unicode string with length < 100 containing only ASCII "
    "alphanumerics, hyphens, underscores, or periods."
)

_CHANNEL_RE = re.compile(r"^[a-zA-Z0-9._-]+(?:![a-zA-Z0-9._-]*)?\Z", re.ASCII)
_GROUP_RE = re.compile(r"^[a-zA-Z0-9._-]+\Z", re.ASCII)
_ALPHABET = string.ascii_letters + string.digits
#: Byte -> letter for the bytes below 248 (each letter four times); the rest are dropped.
_TO_LETTER = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) for b in range(248)) + bytes(8)
_UNEVEN = bytes(range(248, 256))


def valid_channel_name(name: object, *, receive: bool = False) -> bool:
    """Return whether ``name`` is a valid channel name (never raises).

    With ``receive=True`` a reply-channel name must have a non-empty local part,
    since one receives on a full ``prefix!local`` name.
    """
    if type(name) is not str:
        return False
    if not _matches_channel(name):
        return False
    return not (receive and name.endswith("!"))


def _matches_channel(name: str) -> bool:
    # Not cached here: a layer remembers the names it validated, and most names it
    # has not seen are fresh reply channels, which a cache would only churn.
    return 0 < len(name) <= MAX_NAME_LENGTH and _CHANNEL_RE.match(name) is not None


def valid_group_name(name: object) -> bool:
    """Return whether ``name`` is a valid group name (never raises)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_LENGTH
        and _GROUP_RE.match(name) is not None
    )


def _describe(name: object) -> str:
    if not isinstance(name, str):
        return f"must be a str, not {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
    return "may hold only ASCII letters, digits, '-', '_', '.' and (channels only) one '!'"


def require_valid_channel_name(name: object, *, receive: bool = False) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`TypeError`."""
    if valid_channel_name(name, receive=receive):
        return name  # type: ignore[return-value]
    if receive and isinstance(name, str) and name.endswith("!") and valid_channel_name(name):
        raise TypeError(f"Cannot receive on {name!r}: a reply channel name needs a local part")
    raise TypeError(f"{INVALID_NAME_ERROR.format('Channel')} Got {name!r}: it {_describe(name)}.")


def require_valid_group_name(name: object) -> str:
    """Return ``name`` if it is a valid group name, else raise :class:`TypeError`."""
    if valid_group_name(name):
        return name  # type: ignore[return-value]
    raise TypeError(f"{INVALID_NAME_ERROR.format('Group')} Got {name!r}: it {_describe(name)}.")


def split_channel(name: str) -> tuple[str, str | None]:
    """Split a channel name into its store queue and its local part.

    ``"chat.room"`` -> ``("chat.room", None)``; a reply channel
    ``"specific.ID!abc"`` -> ``("specific.ID!", "abc")``: every reply channel of one
    layer instance shares the inbox queue named by the part up to and including ``!``.
    """
    index = name.find("!")
    if index < 0:
        return name, None
    return name[: index + 1], name[index + 1 :]


def non_local_name(name: str) -> str:
    """Return the part of ``name`` up to and including ``!``, or ``name`` itself."""
    return split_channel(name)[0]


def random_suffix(length: int = 12) -> str:
    """Return ``length`` random ASCII letters and digits from a CSPRNG, each equally likely.

    Random bytes below 248 (four times 62) map to letters through a table and the
    rest are dropped, so every letter has the same chance; a reply channel is made per
    request, so this is on the request/reply path (one ``secrets.choice`` per letter
    cost five times as much).
    """
    letters = b""
    while len(letters) < length:
        letters += secrets.token_bytes(length + 4).translate(_TO_LETTER, _UNEVEN)
    return letters[:length].decode("ascii")


def make_client_id() -> str:
    """Return a new id for one layer instance: the process id plus random letters.

    The pid makes ids readable in a store listing; the random part keeps two layer
    instances in one process (or a pid reused after a restart) apart.
    """
    return f"{os.getpid():x}{random_suffix(8)}"
