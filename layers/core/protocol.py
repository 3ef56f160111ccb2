"""What code that *uses* a channel layer may rely on, whichever layer it is given."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["SupportsChannelLayer"]


@runtime_checkable
class SupportsChannelLayer(Protocol):
    """What code that *uses* a channel layer may rely on (any Channels-compatible layer).

    Type your application code against this protocol to accept our layers and
    Django Channels' own alike.
    """

    @property
    def extensions(self) -> list[str]:
        """The extensions the layer supports (``"groups"``, ``"flush"``)."""
        ...

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send a message to a channel."""
        ...

    async def receive(self, channel: str) -> dict[str, Any]:
        """Receive the next message on a channel."""
        ...

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Return a new reply-channel name."""
        ...

    async def group_add(self, group: str, channel: str) -> None:
        """Add a channel to a group."""
        ...

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove a channel from a group."""
        ...

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send a message to every member of a group."""
        ...

    async def flush(self) -> None:
        """Delete every message and group."""
        ...
