"""Errors of the Redis backend: driver failures translated to ours, cluster refusals."""

from __future__ import annotations

import asyncio

from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

from layers.core.errors import BackendError, BackendUnavailable, LayerClosed, LayerError

__all__ = ["ClusterRedirect", "NotSent", "redirect_of", "reply_error", "translate"]


class NotSent(BackendUnavailable):
    """The command was never written (the connection could not be opened): resending is safe."""


class ClusterRedirect(BackendError):
    """A cluster node refused the command: ``MOVED``, ``ASK``, ``TRYAGAIN`` or ``CLUSTERDOWN``.

    The command was not executed, so resending it (elsewhere, or later) is safe.
    ``kind`` is the reply's code; ``slot``, ``host`` and ``port`` are set for
    ``MOVED`` and ``ASK``.
    """

    def __init__(
        self, message: str, kind: str, slot: int = -1, host: str = "", port: int = 0
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.slot = slot
        self.host = host
        self.port = port


def redirect_of(exc: BaseException) -> ClusterRedirect | None:
    """The :class:`ClusterRedirect` that an error reply means, or ``None`` for other errors."""
    if isinstance(exc, ClusterRedirect):
        return exc
    if not isinstance(exc, ResponseError):
        return None
    if isinstance(exc, AskError):  # MovedError is a subclass
        kind = "MOVED" if isinstance(exc, MovedError) else "ASK"
        return ClusterRedirect(str(exc), kind, exc.slot_id, exc.host, exc.port)
    text = str(exc)
    code, _, rest = text.partition(" ")
    if isinstance(exc, TryAgainError) or code == "TRYAGAIN":
        return ClusterRedirect(text, "TRYAGAIN")
    if isinstance(exc, ClusterDownError) or code == "CLUSTERDOWN":
        return ClusterRedirect(text, "CLUSTERDOWN")
    if code in ("MOVED", "ASK"):
        slot, _, address = rest.partition(" ")
        host, _, port = address.rpartition(":")
        if slot.isdigit() and port.isdigit():
            return ClusterRedirect(text, code, int(slot), host.strip("[]"), int(port))
    return None


_ERROR_CLASSES: dict[str, type[ResponseError]] = {
    "NOSCRIPT": NoScriptError,
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
}


def reply_error(message: str) -> ResponseError:
    """An error reply as the exception redis-py's parsers give (public classes only)."""
    code, _, rest = message.partition(" ")
    kind = _ERROR_CLASSES.get(code)
    if kind is None:
        return ResponseError(message)
    try:
        return kind(rest)
    except (TypeError, ValueError):  # a malformed MOVED/ASK reply
        return ResponseError(message)


def translate(exc: BaseException, where: str) -> LayerError:
    """Return our error for a driver failure, chained to it (``__cause__``).

    A cluster redirection becomes a :class:`ClusterRedirect` whose message says how
    to configure a cluster (seen only when a non-cluster URL points at a cluster node).
    """
    if isinstance(exc, LayerError):
        return exc
    error: LayerError
    redirect = redirect_of(exc)
    if isinstance(exc, asyncio.CancelledError):
        error = LayerClosed("the channel layer was closed")
    elif redirect is not None:
        redirect.args = (
            f"redis {where} is a Redis Cluster node and did not run the command "
            f"({redirect.kind} {exc}); use a redis+cluster:// URL "
            "(layers.backends.redis.cluster.RedisClusterChannelLayer) for a cluster",
        )
        error = redirect
    elif isinstance(exc, ResponseError):
        error = BackendError(f"redis {where}: {exc}")
    else:
        error = BackendUnavailable(f"redis {where}: {exc or type(exc).__name__}")
    error.__cause__ = exc
    return error
