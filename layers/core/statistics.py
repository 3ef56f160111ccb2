"""What :meth:`layers.ChannelLayer.statistics` returns: a snapshot of a layer's store.

The backend reports raw counts (:class:`~layers.core.backend.BackendStatistics`); the
layer adds what only it knows: each channel's capacity (so whether it is full) and
the age of its oldest message (from the message's remaining lifetime and the layer's
``expiry``, exact when every sender uses this layer's ``expiry``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ChannelStatistics", "GroupStatistics", "LayerStatistics"]


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """One channel with pending messages (a reply-channel inbox is named ``prefix!``)."""

    name: str
    #: Unexpired messages waiting.
    pending: int
    #: Age in seconds of the oldest waiting message (None if the backend cannot tell).
    oldest_age: float | None
    #: The channel's capacity (``capacity`` or its ``channel_capacity`` pattern).
    capacity: int

    @property
    def full(self) -> bool:
        """Whether a ``send`` to this channel would raise ``ChannelFull`` now."""
        return self.pending >= self.capacity


@dataclass(frozen=True, slots=True)
class GroupStatistics:
    """One group and its number of unexpired members."""

    name: str
    size: int


@dataclass(frozen=True, slots=True)
class LayerStatistics:
    """A snapshot of a layer: busiest channels first, largest groups first."""

    channels: list[ChannelStatistics]
    groups: list[GroupStatistics]

    @property
    def pending(self) -> int:
        """Messages waiting on every channel."""
        return sum(c.pending for c in self.channels)

    @property
    def full_channels(self) -> int:
        """How many channels are at capacity."""
        return sum(1 for c in self.channels if c.full)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: totals, channels (with ``full``) and groups."""
        return {
            "pending": self.pending,
            "full_channels": self.full_channels,
            "channels": [{**asdict(c), "full": c.full} for c in self.channels],
            "groups": [asdict(g) for g in self.groups],
        }
