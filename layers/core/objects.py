"""The object API of the original Channels design: ``Channel``, ``Group``, ``Message``.

Async first::

    await Channel("thumbnails").send({"id": 42})
    await Group("liveblog").add(reply_channel)
    await Group("liveblog").send({"text": "hello"})
    message = await Channel("thumbnails").receive()   # a Message
    await message.reply_channel.send({"done": True})

Sync callers (Django views and signals, management commands) use the same objects
through ``.sync``, built on :func:`asgiref.sync.async_to_sync` rather than written
twice: ``Channel("thumbnails").sync.send({"id": 42})``.

Objects use the layer given as ``layer=``, else :func:`layers.get_channel_layer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from asgiref.sync import async_to_sync

from layers.core.names import require_valid_channel_name, require_valid_group_name

__all__ = ["Channel", "Group", "Message"]

T = TypeVar("T")


def _layer(layer: Any) -> Any:
    if layer is not None:
        return layer
    from layers.core.config import get_channel_layer

    return get_channel_layer()


class _Sync(Generic[T]):
    """Sync view of an object: each coroutine method, wrapped with ``async_to_sync``."""

    def __init__(self, target: T) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._target, name)
        if not callable(method):
            raise AttributeError(name)
        return async_to_sync(method)


class Channel:
    """A named channel on a layer. Equal when the names and layers are."""

    def __init__(self, name: str, *, layer: Any = None) -> None:
        self.name = require_valid_channel_name(name)
        self._layer = layer

    @property
    def layer(self) -> Any:
        """The layer this channel uses."""
        return _layer(self._layer)

    @property
    def sync(self) -> _Sync[Channel]:
        """The channel's methods for sync code (``Channel(...).sync.send(msg)``)."""
        return _Sync(self)

    async def send(self, content: dict[str, Any]) -> None:
        """Send ``content``; raises :class:`~layers.ChannelFull` when full."""
        await self.layer.send(self.name, content)

    async def receive(self) -> Message:
        """Wait for the next message on this channel. Safe to cancel (nothing is lost)."""
        layer = self.layer
        content = await layer.receive(self.name)
        return Message(content=content, channel=Channel(self.name, layer=self._layer))

    @classmethod
    async def new(cls, prefix: str = "specific.", *, layer: Any = None) -> Channel:
        """Make a new reply channel that only this process can receive on."""
        return cls(await _layer(layer).new_channel(prefix), layer=layer)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Channel) and (other.name, other._layer) == (self.name, self._layer)

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Channel({self.name!r})"


class Group:
    """A named group of channels on a layer."""

    def __init__(self, name: str, *, layer: Any = None) -> None:
        self.name = require_valid_group_name(name)
        self._layer = layer

    @property
    def layer(self) -> Any:
        """The layer this group uses."""
        return _layer(self._layer)

    @property
    def sync(self) -> _Sync[Group]:
        """The group's methods for sync code (``Group(...).sync.send(msg)``)."""
        return _Sync(self)

    async def add(self, channel: Channel | str) -> None:
        """Add a channel (refreshes its membership expiry if already a member)."""
        await self.layer.group_add(self.name, str(channel))

    async def discard(self, channel: Channel | str) -> None:
        """Remove a channel; a no-op for a non-member."""
        await self.layer.group_discard(self.name, str(channel))

    async def send(self, content: dict[str, Any]) -> None:
        """Send a copy of ``content`` to every member; full members are skipped."""
        await self.layer.group_send(self.name, content)

    def __repr__(self) -> str:
        return f"Group({self.name!r})"


@dataclass(frozen=True)
class Message:
    """A received message: its ``content``, the ``channel`` it came on, and a reply channel.

    ``reply_channel`` is a :class:`Channel` made from ``content["reply_channel"]``
    when the sender put one there, else None.
    """

    content: dict[str, Any]
    channel: Channel
    reply_channel: Channel | None = field(init=False)

    def __post_init__(self) -> None:
        reply = self.content.get("reply_channel")
        channel = Channel(reply, layer=self.channel._layer) if isinstance(reply, str) else None
        object.__setattr__(self, "reply_channel", channel)

    async def reply(self, content: dict[str, Any]) -> None:
        """Send ``content`` to this message's reply channel (ValueError if it has none)."""
        if self.reply_channel is None:
            raise ValueError("this message has no reply_channel")
        await self.reply_channel.send(content)
