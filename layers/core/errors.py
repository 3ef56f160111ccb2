"""The exceptions of channel-layers: one root, a documented tree.

::

    LayerError                      root of everything this package raises on purpose
    ├── ChannelFull                 send() found the channel at capacity (nothing was stored)
    ├── MessageTooLarge             the serialized message exceeds ``max_message_size``
    ├── InvalidMessage (TypeError)  not a dict of ASGI values; raised by send() before any I/O
    ├── ChannelNotOwned (ValueError) receive() on a reply channel made by another layer/process
    ├── ConfigurationError (ValueError)   a setting is wrong; ``.setting`` names it
    │   ├── UnknownBackend          no backend of that name; lists the installed ones
    │   ├── UnknownOption           no option of that name; lists the valid ones
    │   └── MissingDriver (ImportError too)   a driver is missing; names the extra to install
    ├── BackendError                the store failed (connection lost, server error, ...)
    │   └── BackendUnavailable      could not reach the store after retrying
    └── LayerClosed (RuntimeError)  the layer was used while closing

Invalid channel or group *names* raise the built-in :class:`TypeError`, as Django
Channels does, so code written for Channels keeps working.

Backends translate their driver's exceptions into :class:`BackendError` (or a
subclass) with ``raise ... from exc``, so callers never need to import a driver to
catch failures.

When Django Channels is installed, the exceptions that have a Channels counterpart
are also subclasses of it, so code written for Channels keeps catching them:
:class:`ChannelFull` is a ``channels.exceptions.ChannelFull``,
:class:`MessageTooLarge` a ``channels.exceptions.MessageTooLarge`` and
:class:`ConfigurationError` a ``channels.exceptions.InvalidChannelLayerError``.
Channels stays optional: without it these are plain :class:`LayerError` subclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ChannelFull",
    "ChannelNotOwned",
    "ConfigurationError",
    "InvalidMessage",
    "LayerClosed",
    "LayerError",
    "MessageTooLarge",
    "MissingDriver",
    "UnknownBackend",
    "UnknownOption",
]


def _channels_bases(name: str) -> tuple[type[Exception], ...]:
    """Return ``(channels.exceptions.<name>,)`` when Channels is installed, else ``()``."""
    try:
        from channels import exceptions
    except ImportError:
        return ()
    base = getattr(exceptions, name, None)
    return (base,) if isinstance(base, type) and issubclass(base, Exception) else ()


class LayerError(Exception):
    """Root of every exception channel-layers raises on purpose."""


if TYPE_CHECKING:
    _ChannelFullBases: tuple[type[Exception], ...] = ()
    _MessageTooLargeBases: tuple[type[Exception], ...] = ()
    _InvalidChannelLayerBases: tuple[type[Exception], ...] = ()
else:
    _ChannelFullBases = _channels_bases("ChannelFull")
    _MessageTooLargeBases = _channels_bases("MessageTooLarge")
    _InvalidChannelLayerBases = _channels_bases("InvalidChannelLayerError")


class ChannelFull(LayerError, *_ChannelFullBases):  # type: ignore[misc]
    """``send()`` found the channel holding ``capacity`` unexpired messages.

    The message was not stored. ``group_send()`` never raises this: it skips full
    members silently. The message names the limit and the setting that set it
    (``capacity`` or the matching ``channel_capacity`` pattern). With Channels
    installed it is also a ``channels.exceptions.ChannelFull``.
    """


class MessageTooLarge(LayerError, *_MessageTooLargeBases):  # type: ignore[misc]
    """The serialized message is larger than the layer's ``max_message_size``.

    With Channels installed it is also a ``channels.exceptions.MessageTooLarge``.
    """


class InvalidMessage(LayerError, TypeError):
    """The message is not a dict with str keys holding only ASGI value types.

    Raised by ``send()`` and ``group_send()`` before anything reaches the store, so a
    bad message fails where it is made, never later on another host.
    """


class ChannelNotOwned(LayerError, ValueError):
    """``receive()`` was called on a reply (``!``) channel this layer did not make.

    Reply channels belong to the layer instance that created them with
    ``new_channel()``; another process reading them would steal its messages.
    """


class ConfigurationError(LayerError, *_InvalidChannelLayerBases, ValueError):  # type: ignore[misc]
    """A setting has a wrong value or type. ``setting`` names the setting.

    With Channels installed it is also a
    ``channels.exceptions.InvalidChannelLayerError`` (itself a :class:`ValueError`).
    """

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class UnknownBackend(ConfigurationError):
    """No backend is registered under the requested name.

    The message lists the installed backends and suggests a close match. ``setting``
    is ``url`` when the name was a URL's scheme, else ``BACKEND``.
    """

    def __init__(
        self,
        name: str,
        installed: list[str],
        suggestion: str | None = None,
        *,
        setting: str = "BACKEND",
    ) -> None:
        self.name = name
        self.installed = installed
        self.suggestion = suggestion
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        of = " (the URL's scheme)" if setting == "url" else ""
        super().__init__(
            setting,
            f"unknown backend {name!r}{of}.{hint} Installed backends: {', '.join(installed)}.",
        )


class UnknownOption(ConfigurationError):
    """An option no backend or layer setting of that name exists.

    Every backend and the layer answer the same way: the option, the backend, every
    valid name (layer options included) and a close match when there is one.
    """

    def __init__(
        self,
        option: str,
        backend: str,
        valid: list[str],
        suggestion: str | None = None,
        *,
        where: str = "",
    ) -> None:
        self.option = option
        self.backend = backend
        self.valid = valid
        self.suggestion = suggestion
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        place = f" {where}" if where else ""
        super().__init__(
            option,
            f"unknown option {option!r}{place} for the {backend} backend.{hint} "
            f"Valid options: {', '.join(valid)}.",
        )


class MissingDriver(ConfigurationError, ImportError):
    """A backend's driver package is not installed. The message names the extra."""

    def __init__(self, backend: str, extra: str, module: str) -> None:
        self.backend = backend
        self.extra = extra
        ConfigurationError.__init__(
            self,
            "BACKEND",
            f"the {backend!r} backend needs the {module!r} package: "
            f"pip install 'channel-layers[{extra}]'",
        )
        self.name = module


class BackendError(LayerError):
    """The store failed: a lost connection, a server error, a protocol error.

    Always chained (``__cause__``) to the driver's exception.
    """


class BackendUnavailable(BackendError):
    """The store could not be reached, even after the backend's retries."""


class LayerClosed(LayerError, RuntimeError):
    """An operation was cut short because the layer was closed under it."""
