"""The user-facing channel layer: the Django Channels layer API over any backend.

:class:`ChannelLayer` implements every rule of the contract once, for all backends:
names, message validation, serialization and encryption, capacity lookup, expiry
values, reply-channel inboxes, cancellation safety and bounded local memory. A
:class:`~layers.core.backend.Backend` supplies only storage.

How receiving works (the part that makes ``receive`` safe to cancel)
    Consumers never touch the store. ``receive(name)`` waits on a *mailbox*, shared
    by every event loop of the layer. One *reader task* per queue and event loop
    pops from the backend while consumers of that loop wait on the queue (exactly
    as many as wait), and hands each message to the first waiting consumer, or
    buffers it (bounded by the channel's capacity, drop-oldest, expiring after
    ``expiry`` seconds). A cancelled ``receive`` never cancels a pop in flight:
    what the reader took for a consumer that has gone goes to the next consumer of
    that channel in this process, from any event loop, or back to the head of the
    store when nobody here waits (see :mod:`layers.core.local`). Reply channels
    (``prefix.ID!local``) of one layer share one inbox queue (``prefix.ID!``); the
    reader demultiplexes by local name.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from layers.core.backend import Backend, Capability
from layers.core.config import resolve_backend, split_url
from layers.core.errors import (
    ChannelFull,
    ChannelNotOwned,
    ConfigurationError,
    LayerClosed,
    MessageTooLarge,
)
from layers.core.local import Hub, LoopState, Mailbox, group_payload, pack
from layers.core.names import (
    MAX_NAME_LENGTH,
    make_client_id,
    non_local_name,
    random_suffix,
    require_valid_channel_name,
    require_valid_group_name,
)
from layers.core.serializers import (
    InProcessSerializer,
    Serializer,
    get_serializer,
    validate_message,
)

__all__ = ["ChannelLayer", "SupportsChannelLayer"]

logger = logging.getLogger("layers")

_DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024


@runtime_checkable
class SupportsChannelLayer(Protocol):
    """What code that *uses* a channel layer may rely on (any Channels-compatible layer).

    Type your application code against this protocol to accept our layers and
    Django Channels' own alike.
    """

    extensions: list[str]

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


#: The largest accepted expiry (ten years): every store's clock arithmetic fits.
MAX_EXPIRY = 10 * 365 * 86400
#: The largest accepted count (capacity, sizes): fits every store's 32-bit columns.
MAX_COUNT = 2**31 - 1


def _number(
    setting: str, value: object, *, minimum: float, maximum: float, integer: bool = False
) -> Any:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(setting, f"must be {kind}, not {value!r}")
    if not minimum <= value <= maximum:  # type: ignore[operator]  # NaN fails both
        raise ConfigurationError(
            setting, f"must be a number from {minimum} to {maximum}, not {value!r}"
        )
    return value


def _compile_capacities(
    channel_capacity: Mapping[Any, int] | Iterable[tuple[Any, int]] | None,
) -> list[tuple[re.Pattern[str], int]]:
    if channel_capacity is None:
        return []
    pairs = (
        list(channel_capacity.items())
        if isinstance(channel_capacity, Mapping)
        else list(channel_capacity)
    )
    compiled: list[tuple[re.Pattern[str], int]] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ConfigurationError(
                "channel_capacity", f"expected (pattern, capacity), got {pair!r}"
            )
        pattern, value = pair
        _number("channel_capacity", value, minimum=1, maximum=MAX_COUNT, integer=True)
        if isinstance(pattern, str):
            compiled.append((re.compile(fnmatch.translate(pattern)), value))
        elif isinstance(pattern, re.Pattern):
            compiled.append((pattern, value))
        else:
            raise ConfigurationError(
                "channel_capacity",
                f"patterns must be glob strings or compiled regexes: {pattern!r}",
            )
    return compiled


class ChannelLayer:
    """A channel layer: named FIFO channels, reply channels and groups over a backend.

    Duck-compatible with ``channels.layers.BaseChannelLayer``: use a subclass with a
    backend (``layers.backends.memory.MemoryChannelLayer``...) as ``BACKEND`` in
    Django's ``CHANNEL_LAYERS``, or make one with :func:`layers.from_url`.

    Guarantees, on every backend that passes the conformance suite: per-channel FIFO
    for one writer and one reader; at-most-once delivery; ``receive`` safe to
    cancel; expiry, group expiry and capacity as configured; bounded local memory;
    usable from any number of event loops (``async_to_sync``).

    Args:
        backend: the :class:`~layers.core.backend.Backend` subclass to store with;
            subclasses set :attr:`backend_class` instead.
        expiry: seconds an unread message lives (default 60).
        group_expiry: seconds a membership lives after its latest ``group_add``
            (default 86400).
        capacity: how many unexpired messages a channel holds before ``send``
            raises :class:`~layers.ChannelFull` (default 100).
        channel_capacity: per-channel capacities, ``{pattern: capacity}`` or pairs;
            patterns are glob strings or compiled regexes; the first match wins.
        symmetric_encryption_keys: encrypt message bodies at rest with
            MultiFernet (first key encrypts, all decrypt). Needs ``[crypto]``.
        serializer_format: a registered serializer name (``"msgpack"``, ``"json"``).
        max_message_size: the largest serialized message in bytes (None: no limit).
        prefetch: how many messages of a normal channel one process may take per
            pop and hold for its own consumers (default 1: only what consumers wait
            for). Higher values save round trips on a busy channel; the cost is that
            a held message waits for this process even while another is idle, and a
            killed process loses what it held (a clean close gives it back).
        **backend_options: passed to the backend (``hosts``, ``url``, ``prefix``...).
    """

    #: The backend class subclasses bind (``MemoryChannelLayer`` sets it).
    backend_class: type[Backend]

    def __init__(
        self,
        *,
        backend: type[Backend] | str | None = None,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[Any, int] | Iterable[tuple[Any, int]] | None = None,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        serializer_format: str = "msgpack",
        max_message_size: int | None = _DEFAULT_MAX_MESSAGE_SIZE,
        prefetch: int = 1,
        **backend_options: Any,
    ) -> None:
        url = backend_options.pop("url", None)
        url_backend_options: dict[str, Any] = {}
        if url is not None:
            scheme, url, url_layer_options = split_url(url)
            given = {
                "expiry": (expiry, 60),
                "group_expiry": (group_expiry, 86400),
                "capacity": (capacity, 100),
                "max_message_size": (max_message_size, _DEFAULT_MAX_MESSAGE_SIZE),
                "serializer_format": (serializer_format, "msgpack"),
            }
            for key, value in url_layer_options.items():
                current, default = given[key]
                if current != default and current != value:
                    raise ConfigurationError(key, "given both in the URL and as an option")
            expiry = url_layer_options.get("expiry", expiry)
            group_expiry = url_layer_options.get("group_expiry", group_expiry)
            capacity = url_layer_options.get("capacity", capacity)
            max_message_size = url_layer_options.get("max_message_size", max_message_size)
            serializer_format = url_layer_options.get("serializer_format", serializer_format)
            if backend is None and not hasattr(self, "backend_class"):
                backend = scheme
        if backend is not None:
            self.backend_class = resolve_backend(backend)
            if not issubclass(self.backend_class, Backend):
                raise ConfigurationError("backend", f"must be a Backend subclass, not {backend!r}")
        elif not hasattr(self, "backend_class"):
            raise ConfigurationError("backend", "give a backend (name or class) or a url")
        if url is not None:
            url_backend_options = self.backend_class.options_from_url(url)
        self.expiry: float = _number("expiry", expiry, minimum=0.001, maximum=MAX_EXPIRY)
        self.group_expiry: float = _number(
            "group_expiry", group_expiry, minimum=0.001, maximum=MAX_EXPIRY
        )
        self.capacity: int = _number(
            "capacity", capacity, minimum=1, maximum=MAX_COUNT, integer=True
        )
        self.channel_capacity = _compile_capacities(channel_capacity)
        if max_message_size is not None:
            _number(
                "max_message_size", max_message_size, minimum=1, maximum=MAX_COUNT, integer=True
            )
        self.max_message_size = max_message_size
        self.prefetch: int = _number("prefetch", prefetch, minimum=1, maximum=10_000, integer=True)
        if not isinstance(serializer_format, str):
            raise ConfigurationError("serializer_format", "must be a serializer name (str)")
        self._serializer: Serializer = get_serializer(
            serializer_format, symmetric_encryption_keys=symmetric_encryption_keys
        )
        # In one process msgpack's round trip is only a deep copy: make the copy
        # directly, sharing immutable values (validated the same way).
        self._by_reference: InProcessSerializer | None = None
        if (
            self.backend_class.in_process
            and serializer_format == "msgpack"
            and symmetric_encryption_keys is None
        ):
            self._by_reference = InProcessSerializer(
                expiry=self.expiry, max_message_size=max_message_size
            )
            self._serializer = self._by_reference
        self._backend_options = self.backend_class.prepare_options(
            {**url_backend_options, **backend_options}
        )
        self.client_id = make_client_id()
        self._states: dict[asyncio.AbstractEventLoop, LoopState] = {}
        self._states_lock = threading.Lock()
        self._hub = Hub(self.get_capacity)

    # -- capabilities ---------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The backend's declared capabilities."""
        return self.backend_class.capabilities

    @property
    def extensions(self) -> list[str]:
        """Django Channels' extension list (``"groups"``, ``"flush"``), from capabilities."""
        caps = self.capabilities
        return [c.value for c in (Capability.GROUPS, Capability.FLUSH) if c in caps]

    def require(self, *capabilities: Capability | str) -> None:
        """Raise :class:`~layers.ConfigurationError` unless the backend has every capability."""
        missing = [str(c) for c in capabilities if Capability(c) not in self.capabilities]
        if missing:
            raise ConfigurationError(
                "BACKEND",
                f"the {self.backend_class.name or self.backend_class.__name__} backend lacks "
                f"{', '.join(missing)}",
            )

    def get_capacity(self, channel: str) -> int:
        """Return the capacity of ``channel``: the first matching pattern, else ``capacity``."""
        for pattern, value in self.channel_capacity:
            if pattern.match(channel):
                return value
        return self.capacity

    # Channels' BaseChannelLayer helpers, for code that calls them on the layer.
    def valid_channel_name(self, name: str, receive: bool = False) -> bool:
        """Raise :class:`TypeError` for an invalid channel name, else return True."""
        require_valid_channel_name(name, receive=receive)
        return True

    def valid_group_name(self, name: str) -> bool:
        """Raise :class:`TypeError` for an invalid group name, else return True."""
        require_valid_group_name(name)
        return True

    require_valid_channel_name = staticmethod(require_valid_channel_name)
    require_valid_group_name = staticmethod(require_valid_group_name)
    non_local_name = staticmethod(non_local_name)

    @staticmethod
    def match_type_and_length(name: object) -> bool:
        """Return whether ``name`` is a str of an accepted length (Channels' helper)."""
        return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH

    # -- per-loop state -------------------------------------------------------------

    def _state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            with self._states_lock:
                state = self._states.get(loop)
                if state is None:
                    state = self._states[loop] = LoopState(
                        self._hub,
                        self.backend_class(**self._backend_options),
                        loop,
                        serializer=self._serializer,
                        expiry=self.expiry,
                        prefetch=self.prefetch,
                        on_cancel=self._forget,
                    )
                    self._close_with_loop(loop)
        return state

    def _forget(self, state: LoopState) -> None:
        """Drop ``state`` (its loop is shutting down); a later call makes a new one."""
        with self._states_lock:
            if self._states.get(state.loop) is state:
                del self._states[state.loop]

    def _close_with_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Release this loop's connections when the loop closes (``async_to_sync``)."""
        layer_ref = weakref.ref(self)
        original_close = loop.close

        def close() -> None:
            layer = layer_ref()
            if layer is not None and not loop.is_running() and not loop.is_closed():
                with layer._states_lock:
                    state = layer._states.pop(loop, None)
                if state is not None:
                    try:
                        loop.run_until_complete(state.aclose())
                    except Exception:  # pragma: no cover - best effort at shutdown
                        logger.exception("error closing the channel layer with its event loop")
            original_close()

        loop.close = close  # type: ignore[method-assign]

    def _encode(self, message: dict[str, Any]) -> bytes:
        if self._by_reference is not None:
            return self._by_reference.dumps(message)  # validates and checks the size
        body = self._serializer.dumps(validate_message(message))
        if self.max_message_size is not None and len(body) > self.max_message_size:
            raise MessageTooLarge(
                f"the message is {len(body)} bytes serialized; "
                f"max_message_size is {self.max_message_size}"
            )
        return body

    # -- the Channels API -----------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``.

        Raises :class:`TypeError` for a bad name, :class:`~layers.InvalidMessage`
        for a bad message (both before any I/O), :class:`~layers.ChannelFull` when
        the channel holds its capacity of unexpired messages (nothing is stored),
        :class:`~layers.BackendError` when the store fails. Cancellation: the
        message is stored once or not at all.
        """
        require_valid_channel_name(channel)
        body = self._encode(message)
        index = channel.find("!")
        deadline = time.time() + self.expiry
        if index < 0:
            queue, payload = channel, pack(None, body, deadline)
        else:
            queue, payload = channel[: index + 1], pack([channel[index + 1 :]], body, deadline)
        backend = await self._state().ready()
        stored = await backend.send(
            queue, payload, expiry=self.expiry, capacity=self.get_capacity(channel)
        )
        if not stored:
            if self._by_reference is not None:
                self._by_reference.discard(body)
            raise ChannelFull(f"channel {channel!r} is full")

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for and return the next message on ``channel``, oldest first.

        ``channel`` is a normal channel name, or a full reply-channel name made by
        :meth:`new_channel` on *this* layer (else :class:`~layers.ChannelNotOwned`).
        Cancellation loses nothing: a message already taken from the store goes to
        the next ``receive`` of this channel in this process (from any event loop),
        or, for a normal channel nobody here waits on, back to the head of the store.
        """
        state = self._state()
        box = self._hub.mailboxes.get(channel)
        if box is None or not box.checked:
            box = self._checked_mailbox(channel)
        if state.closing:
            raise LayerClosed("the channel layer is closing")
        return await state.receive(channel, box)

    def _checked_mailbox(self, channel: str) -> Mailbox:
        """Validate a receive on ``channel`` and return its mailbox, marked as checked.

        Mailboxes stay until a sweep finds them idle, so a consumer receiving on one
        channel in a loop pays for the name and ownership checks once.
        """
        require_valid_channel_name(channel, receive=True)
        index = channel.find("!")
        queue = channel if index < 0 else channel[: index + 1]
        if index >= 0 and not queue.endswith(f"{self.client_id}!"):
            raise ChannelNotOwned(
                f"{channel!r} was not made by this layer's new_channel(); "
                "only the process that made a reply channel may receive on it"
            )
        self._hub.maybe_sweep()
        box = self._hub.mailbox(channel, queue)
        box.checked = True
        return box

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Return a new reply-channel name, ``prefix + client id + "!" + random``.

        Only this layer instance can receive on it. No I/O.
        """
        if not isinstance(prefix, str) or "!" in prefix:
            raise TypeError(f"Invalid reply channel prefix {prefix!r}")
        name = f"{prefix}{self.client_id}!{random_suffix(12)}"
        return require_valid_channel_name(name)

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds. Idempotent.

        Adding again refreshes the expiry. Cancellation: added or unchanged.
        """
        require_valid_group_name(group)
        require_valid_channel_name(channel)
        self.require(Capability.GROUPS)
        backend = await self._state().ready()
        await backend.group_add(group, channel, expiry=self.group_expiry)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op for a non-member."""
        require_valid_group_name(group)
        require_valid_channel_name(channel)
        self.require(Capability.GROUPS)
        backend = await self._state().ready()
        await backend.group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Put a copy of ``message`` on every current member of ``group``.

        Never raises :class:`~layers.ChannelFull`: full members are skipped. Costs
        one store write per receiving queue (all reply channels of one process
        share one write), not one per member. Cancellation: each member gets the
        message once or not at all.
        """
        require_valid_group_name(group)
        if self._by_reference is not None:
            body = self._by_reference.dumps_shared(message)  # one body, many receivers
        else:
            body = self._encode(message)
        self.require(Capability.GROUPS)
        backend = await self._state().ready()
        payload = group_payload(body, time.time() + self.expiry, self.expiry, self.capacity)
        if self.channel_capacity:
            # Capacities differ per channel: the core builds the puts itself, giving
            # an inbox the capacity of its first member (as a send to it would).
            members = await backend.group_channels(group)
            puts = payload.puts(members, self.get_capacity)
            skipped = (await backend.send_many(puts)).count(False) if puts else 0
        else:
            skipped = await backend.group_send(group, payload)
        if skipped:
            logger.info("group_send to %r skipped %d full queue(s)", group, skipped)

    async def flush(self) -> None:
        """Delete every message and group of this layer (its store namespace).

        Needs the ``flush`` capability. Also drops the messages buffered in this process.
        """
        self.require(Capability.FLUSH)
        backend = await self._state().ready()
        await backend.flush()
        self._hub.clear()

    async def aclose(self) -> None:
        """Stop this event loop's readers and release its connections. Idempotent.

        Consumers waiting in ``receive`` on this loop get :class:`~layers.LayerClosed`.
        The layer stays usable: a later call opens new connections.
        """
        loop = asyncio.get_running_loop()
        with self._states_lock:
            state = self._states.pop(loop, None)
        if state is not None:
            await state.aclose()

    close = aclose

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend_class.__name__} id={self.client_id}>"
