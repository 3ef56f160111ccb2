"""Django Channels' ``BaseChannelLayer`` surface (Channels 4.3), for :class:`~layers.ChannelLayer`.

Code and tests written against ``channels.layers.BaseChannelLayer`` call these on the
layer; they behave, and their errors read, as Channels' do. The layer's own rules live
elsewhere (:mod:`layers.core.names`, :mod:`layers.core.options`): this is the adapter.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from layers.core.names import (
    INVALID_NAME_ERROR,
    MAX_NAME_LENGTH,
    non_local_name,
    require_valid_channel_name,
    require_valid_group_name,
)
from layers.core.options import compile_capacities

__all__ = ["BaseChannelLayerAPI"]


def _deprecated(old: str, new: str) -> None:
    """Channels' DeprecationWarning for ``old``, attributed to the caller's caller."""
    warnings.warn(f"{old} is deprecated, use {new} instead.", DeprecationWarning, stacklevel=3)


class BaseChannelLayerAPI:
    """The name checks and helpers Channels' ``BaseChannelLayer`` offers, as Channels has them."""

    #: The longest channel or group name (Channels' ``BaseChannelLayer.MAX_NAME_LENGTH``).
    MAX_NAME_LENGTH: int = MAX_NAME_LENGTH

    #: Channels' error text for an invalid name, formatted with ``"Channel"`` or
    #: ``"Group"``; every invalid-name :class:`TypeError` starts with it.
    invalid_name_error: str = INVALID_NAME_ERROR

    def require_valid_channel_name(self, name: object, receive: bool = False) -> bool:
        """Return True for a valid channel name, else raise :class:`TypeError`.

        The error text starts with ``invalid_name_error.format("Channel")``.
        """
        require_valid_channel_name(name, receive=receive)
        return True

    def require_valid_group_name(self, name: object) -> bool:
        """Return True for a valid group name, else raise :class:`TypeError`."""
        require_valid_group_name(name)
        return True

    def valid_channel_names(self, names: list[str], receive: bool = False) -> bool:
        """Check a non-empty list of channel names (Channels' helper); True or TypeError."""
        if not isinstance(names, list) or not names:
            raise AssertionError("names must be a non-empty list")
        for name in names:
            require_valid_channel_name(name, receive=receive)
        return True

    def valid_channel_name(self, channel_name: object, receive: bool = False) -> bool:
        """Deprecated, as in Channels: use :meth:`require_valid_channel_name`.

        Emits Channels' :class:`DeprecationWarning`, then checks the name.
        """
        _deprecated("valid_channel_name", "require_valid_channel_name")
        return self.require_valid_channel_name(channel_name)

    def valid_group_name(self, group_name: object) -> bool:
        """Deprecated, as in Channels: use :meth:`require_valid_group_name`.

        Emits Channels' :class:`DeprecationWarning`, then checks the name.
        """
        _deprecated("valid_group_name", "require_valid_group_name")
        return self.require_valid_group_name(group_name)

    #: Channels' ``BaseChannelLayer.non_local_name``: a reply channel's name up to its ``!``.
    non_local_name = staticmethod(non_local_name)

    def match_type_and_length(self, name: object) -> bool:
        """Return whether ``name`` is a str of an accepted length (1 to ``MAX_NAME_LENGTH``)."""
        return isinstance(name, str) and 0 < len(name) <= self.MAX_NAME_LENGTH

    def compile_capacities(
        self, channel_capacity: Mapping[Any, int] | Iterable[tuple[Any, int]]
    ) -> list[tuple[re.Pattern[str], int]]:
        """Compile ``{pattern: capacity}`` (globs or regexes) as ``channel_capacity`` holds it.

        Returns ``[(compiled regex, capacity), ...]`` in the given order, as Channels'
        ``BaseChannelLayer.compile_capacities`` does; bad input raises
        :class:`~layers.ConfigurationError`.
        """
        return compile_capacities(channel_capacity)
