"""The object API of the original Channels design: ``Channel``, ``Group``, ``Message``.

The same calls work from async and from sync code::

    Channel("thumbnails").send({"id": 42})        # sync code: sent when it returns
    await Channel("thumbnails").send({"id": 42})  # async code: sent when the await returns
    Group("liveblog").add(message.reply_channel)
    Group("liveblog").send({"text": "hello"})

The operations that only act (``Channel.send``, ``Group.add``/``discard``/``send``,
``Message.reply``) look at the calling thread: with no event loop running there (a
worker's sync consumer, a Django view or signal handler under WSGI, a management command)
they run to completion before returning, through :func:`asgiref.sync.async_to_sync`;
in a thread running an event loop they return a :class:`Pending` to await, and if it is
never awaited it still runs, in order, as a background task whose failure is logged.
Forgetting ``await`` therefore never drops a message silently.

Operations that return a value (``Channel.receive``, ``Channel.new``) are coroutines;
sync code calls them through ``.sync`` (``Channel("jobs").sync.receive()``).

Objects use the layer given as ``layer=``; else, inside a worker's consumer, the
worker's layer; else :func:`layers.get_channel_layer` (which, in a Django process with
Channels, is Channels' own instance for the alias).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from asgiref.sync import async_to_sync

from layers.core.names import require_valid_channel_name, require_valid_group_name
from layers.core.protocol import SupportsChannelLayer

__all__ = ["Channel", "Group", "Message", "Pending"]

logger = logging.getLogger("layers.objects")

T = TypeVar("T")
S = TypeVar("S")
P = ParamSpec("P")


#: The layer of the consumer being run: a worker sets it around each consumer call, so
#: ``Channel(name)`` and ``Group(name)`` there use the layer the message came from.
current_layer: ContextVar[SupportsChannelLayer | None] = ContextVar(
    "layers_current_layer", default=None
)


def _layer(layer: SupportsChannelLayer | None) -> SupportsChannelLayer:
    if layer is not None:
        return layer
    layer = current_layer.get()
    if layer is not None:
        return layer
    from layers.core.config import get_channel_layer

    configured: SupportsChannelLayer = get_channel_layer()  # Django's may be any layer
    return configured


class Pending(Awaitable[None]):
    """An operation started from a thread that runs an event loop.

    Awaited at once, it runs in the awaiting task, exactly like the coroutine it wraps
    (cancelling the await cancels the operation, which then happened once or not at
    all). Not awaited by the time the loop next turns, it starts as a background task;
    operations started that way start in the order they were called, and a failure is
    logged on the ``layers.objects`` logger (awaiting the task later re-raises it).
    """

    __slots__ = ("_awaited", "_coro", "_task", "_what")

    def __init__(self, coro: Coroutine[Any, Any, None] | None, what: str) -> None:
        self._coro = coro
        self._task: asyncio.Task[None] | None = None
        self._awaited = False
        self._what = what
        if coro is not None:
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        coro, self._coro = self._coro, None
        if coro is not None:
            self._task = asyncio.ensure_future(coro)
            self._task.add_done_callback(self._report)

    def _report(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._awaited:
            return
        exc = task.exception()
        if exc is not None:
            logger.error("%s, never awaited, failed", self._what, exc_info=exc)

    def __await__(self) -> Generator[Any, None, None]:
        self._awaited = True
        if self._task is not None:
            return (yield from self._task)
        coro, self._coro = self._coro, None
        if coro is not None:
            return (yield from coro.__await__())
        return None

    def __repr__(self) -> str:
        state = "running" if self._task is not None else "done" if self._coro is None else "new"
        return f"<Pending {self._what} {state}>"


_DONE = Pending(None, "done")


def sync_safe(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, None]],
) -> Callable[Concatenate[S, P], Pending]:
    """Make an async method that returns nothing safe to call from sync and async code.

    See the module docstring: without a running loop in the calling thread the call
    completes before returning (errors raise there); with one, it returns a
    :class:`Pending`. Used for every acting method of the object API.
    """

    @functools.wraps(method)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Pending:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            async_to_sync(method)(self, *args, **kwargs)
            return _DONE
        return Pending(method(self, *args, **kwargs), f"{self!r}.{method.__name__}()")

    call.sync_safe = True  # type: ignore[attr-defined]
    return call


class _Sync(Generic[T]):
    """Sync view of an object: its coroutine methods wrapped with ``async_to_sync``."""

    def __init__(self, target: T) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._target, name)
        if not callable(method):
            raise AttributeError(name)
        if getattr(method, "sync_safe", False):
            return method  # type: ignore[no-any-return]
        return async_to_sync(method)


class Channel:
    """A named channel on a layer. Equal when the names and layers are."""

    def __init__(self, name: str, *, layer: SupportsChannelLayer | None = None) -> None:
        self.name = require_valid_channel_name(name)
        self._layer = layer

    @property
    def layer(self) -> SupportsChannelLayer:
        """The layer this channel uses."""
        return _layer(self._layer)

    @property
    def sync(self) -> _Sync[Channel]:
        """The channel's methods for sync code (``Channel(...).sync.send(msg)``)."""
        return _Sync(self)

    @sync_safe
    async def send(self, content: dict[str, Any]) -> None:
        """Send ``content``; raises :class:`~layers.ChannelFull` when full.

        Safe from sync code (sent when the call returns) and async code (await it);
        see :class:`Pending`.
        """
        await self.layer.send(self.name, content)

    async def receive(self) -> Message:
        """Wait for the next message on this channel. Safe to cancel (nothing is lost)."""
        layer = self.layer
        content = await layer.receive(self.name)
        return Message(content=content, channel=Channel(self.name, layer=self._layer))

    @classmethod
    async def new(
        cls, prefix: str = "specific.", *, layer: SupportsChannelLayer | None = None
    ) -> Channel:
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

    def __init__(self, name: str, *, layer: SupportsChannelLayer | None = None) -> None:
        self.name = require_valid_group_name(name)
        self._layer = layer

    @property
    def layer(self) -> SupportsChannelLayer:
        """The layer this group uses."""
        return _layer(self._layer)

    @property
    def sync(self) -> _Sync[Group]:
        """The group's methods for sync code (``Group(...).sync.send(msg)``)."""
        return _Sync(self)

    @sync_safe
    async def add(self, channel: Channel | str) -> None:
        """Add a channel (refreshes its membership expiry if already a member).

        Safe from sync and async code (see :class:`Pending`).
        """
        await self.layer.group_add(self.name, str(channel))

    @sync_safe
    async def discard(self, channel: Channel | str) -> None:
        """Remove a channel; a no-op for a non-member. Safe from sync and async code."""
        await self.layer.group_discard(self.name, str(channel))

    @sync_safe
    async def send(self, content: dict[str, Any]) -> None:
        """Send a copy of ``content`` to every member; full members are skipped.

        Safe from sync and async code (see :class:`Pending`).
        """
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

    @property
    def channel_layer(self) -> SupportsChannelLayer:
        """The layer this message came from."""
        return self.channel.layer

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def __contains__(self, key: object) -> bool:
        return key in self.content

    def __iter__(self) -> Iterator[str]:
        return iter(self.content)

    def get(self, key: str, default: Any = None) -> Any:
        """``content.get(key, default)``: a Message reads like its content dict."""
        return self.content.get(key, default)

    @sync_safe
    async def reply(self, content: dict[str, Any]) -> None:
        """Send ``content`` to this message's reply channel (ValueError if it has none).

        Safe from sync and async code (see :class:`Pending`).
        """
        if self.reply_channel is None:
            raise ValueError("this message has no reply_channel")
        await self.reply_channel.send(content)
