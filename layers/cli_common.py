"""What every ``layers`` subcommand shares: its parser, plain-text help, one-line errors.

A subcommand that cannot go on raises :class:`CommandError` (or a
:class:`~layers.ConfigurationError`); ``layers`` prints it as one line,
``layers COMMAND: message``, with every password of the command line replaced by
``***``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import logging
import os
import re
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote, urlsplit

from layers.core.errors import ConfigurationError
from layers.core.redact import redact_url

if TYPE_CHECKING:
    from layers.core.layer import ChannelLayer

__all__ = [
    "CommandError",
    "CommandParser",
    "add_layer_arguments",
    "build_layer",
    "check_layer",
    "layer_from_args",
    "one_process",
    "passwords",
    "plain",
    "redact",
]

_ROLE = re.compile(r":[\w:.-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``")
_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}([^*\s][^*]*?)\*{1,2}(?![\w*])")
_UNRECOGNIZED = "unrecognized arguments: "


class CommandError(Exception):
    """The command cannot go on: the message is the one line it prints (exit status 2)."""


def plain(text: str) -> str:
    """Return ``text`` (reST, as in a docstring) as plain text for a terminal."""
    text = _ROLE.sub(lambda m: m.group(1).split(".")[-1] if "~" in m.group(0) else m.group(1), text)
    text = _LITERAL.sub(r"\1", text)
    return _EMPHASIS.sub(r"\1", text)


class CommandParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` for a ``layers`` subcommand.

    Its description and epilog are shown as plain text (reST markup removed), and an
    unknown option is answered with the closest valid one ("did you mean").
    """

    def __init__(self, *, prog: str, description: str, **kwargs: Any) -> None:
        if kwargs.get("epilog"):
            kwargs["epilog"] = plain(kwargs["epilog"])
        super().__init__(prog=prog, description=plain(description), **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print the usage and ``message`` (with a suggestion for an unknown option); exit 2."""
        if message.startswith(_UNRECOGNIZED):
            options = [s for action in self._actions for s in action.option_strings]
            for word in message.removeprefix(_UNRECOGNIZED).split():
                name = word.partition("=")[0]
                close = difflib.get_close_matches(name, options, n=1) if name[:1] == "-" else []
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        super().error(message)


def add_layer_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--url URL`` and ``--layer ALIAS``: how ``worker`` and ``serve`` pick a layer."""
    parser.add_argument("--url", help="the layer URL (default: LAYERS_URL or Django settings)")
    parser.add_argument("--layer", metavar="ALIAS", help="a CHANNEL_LAYERS alias (Django settings)")


def passwords(words: Iterable[str]) -> list[str]:
    """The passwords of the URLs among ``words`` (a command line), as given and decoded."""
    found: list[str] = []
    for word in words:
        with contextlib.suppress(ValueError):
            secret = urlsplit(word).password if "://" in word else None
            if secret:
                found += [secret, unquote(secret)]
        for match in re.finditer(r"(?i)\bpassword=([^&\s]+)", word):
            found += [match[1], unquote(match[1])]
    return sorted(set(found), key=len, reverse=True)


def redact(text: str, words: Iterable[str] = ()) -> str:
    """``text`` with URL passwords, and every password of ``words``, shown as ``***``.

    A password of one or two characters is replaced only where it appears as a URL's
    password (replacing it everywhere would garble the message, and hides nothing).
    """
    text = redact_url(text)
    for secret in passwords(words):
        if len(secret) > 2:
            text = text.replace(secret, "***")
    return text


def one_process(layer: Any) -> bool:
    """Whether ``layer`` declares it cannot carry messages between processes (memory://)."""
    from layers.core.backend import Capability

    capabilities = getattr(layer, "capabilities", None)
    return capabilities is not None and Capability.CROSS_PROCESS not in capabilities


def build_layer(url: str, **options: Any) -> ChannelLayer:
    """``layers.from_url(url)``; a URL that cannot be parsed raises ConfigurationError."""
    from layers.core.config import from_url

    try:
        return from_url(url, **options)
    except ConfigurationError:
        raise
    except ValueError as exc:  # a third-party backend parsing its URL its own way
        raise ConfigurationError("url", f"cannot parse {redact(url, [url])}: {exc}") from exc


def layer_from_args(url: str | None, alias: str | None) -> Any:
    """The layer named on a command line: ``--url``, ``--layer ALIAS``, or the default.

    ``--url`` configures the process's default layer (:func:`layers.configure`), so
    ``Channel(name)`` in consumers uses the command's own layer instance. ``--layer``
    reads Django's ``CHANNEL_LAYERS`` (``DJANGO_SETTINGS_MODULE`` is set up first);
    with neither, :func:`layers.get_channel_layer` (``LAYERS_URL``...). A URL that
    cannot be parsed raises :class:`~layers.ConfigurationError` naming where it came from.
    """
    from layers.core.config import configure, get_channel_layer

    if url is not None and alias is not None:
        raise ConfigurationError("--url/--layer", "give one of --url and --layer, not both")
    try:
        if url is not None:
            configure(url)
            return get_channel_layer()
        if os.environ.get("DJANGO_SETTINGS_MODULE"):
            with contextlib.suppress(ImportError):
                import django

                django.setup()
        return get_channel_layer(alias or "default")
    except ConfigurationError as exc:
        if url is None and exc.setting == "url" and type(exc) is ConfigurationError:
            # Say where the URL came from (LAYERS_URL or Django settings).
            where = f"the {alias or 'default'} layer's url"
            raise ConfigurationError(where, exc.problem) from exc
        raise
    except ValueError as exc:  # a third-party backend parsing its URL its own way
        where = "--url" if url is not None else f"the {alias or 'default'} layer's url"
        raise ConfigurationError(where, f"cannot parse it: {exc}") from exc


def check_layer(layer: ChannelLayer, url: str, *, timeout: float = 30.0) -> None:
    """Store one message on a fresh channel of ``layer``, or raise :class:`CommandError`.

    Says, in one line, why the layer cannot be used (server unreachable, bad
    credentials, missing database...) before a command starts on it. Nothing else in
    the store is touched; the layer is closed again in this event loop.
    """
    logged = _LastWarning()
    root = logging.getLogger()
    root.addHandler(logged)  # drivers' retry warnings: kept out of the one-line answer
    try:
        asyncio.run(_store_one(layer, timeout))
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:.0f} s"
        if logged.last and logged.last not in reason:
            reason += f" (logged: {logged.last})"
        reason = " ".join(redact(reason, [url]).split())  # a server's message may span lines
        raise CommandError(f"cannot use the layer at {redact(url, [url])}: {reason}") from exc
    finally:
        root.removeHandler(logged)


class _LastWarning(logging.Handler):
    """Keeps the first line of the last warning logged meanwhile."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.last = record.getMessage().strip().splitlines()[0]


async def _store_one(layer: ChannelLayer, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        try:
            # A fresh channel that nobody reads: the message expires with the layer's
            # expiry, and nothing else is touched.
            await layer.send(f"layers.check.{secrets.token_hex(6)}", {"type": "check"})
        finally:
            await layer.aclose()
