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
import dataclasses
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from layers.core.backend import Backend, Capability
from layers.core.compat import BaseChannelLayerAPI
from layers.core.envelope import group_payload, pack, pack_local
from layers.core.errors import (
    ChannelFull,
    ChannelNotOwned,
    ConfigurationError,
    LayerClosed,
    MessageTooLarge,
)
from layers.core.local import LoopState
from layers.core.mailboxes import Hub
from layers.core.names import (
    make_client_id,
    random_suffix,
    require_valid_channel_name,
    require_valid_group_name,
    split_channel,
)
from layers.core.options import (
    MAX_COUNT,
    MAX_EXPIRY,
    UNSET,
    Capacities,
    Unset,
    capacity_patterns,
    check_number,
    layer_settings,
)
from layers.core.protocol import SupportsChannelLayer
from layers.core.serializers import Serializer, validate_message
from layers.core.statistics import ChannelStatistics, GroupStatistics, LayerStatistics

__all__ = ["ChannelLayer", "SupportsChannelLayer"]

logger = logging.getLogger("layers")

#: How many channel names a layer remembers as validated, for sends and for receives.
_TARGETS_KEPT = 4096

K = TypeVar("K")
V = TypeVar("V")


#: Closes of a loop's state still running after their caller was cancelled (an event
#: loop holds its tasks only weakly); each leaves this set when it ends.
_CLOSING: set[asyncio.Task[None]] = set()


async def _close_to_the_end(state: LoopState) -> None:
    """Close ``state``; a caller cancelled meanwhile gets ``CancelledError`` at once.

    The close itself goes on to its end in a task of its own: a state already
    forgotten by its layer would otherwise keep its connections (and anything it
    had not given back yet) until the process ends.
    """
    task = asyncio.get_running_loop().create_task(state.aclose(), name="layers-close")
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            task.add_done_callback(_report_late_failure)
        raise


def _report_late_failure(task: asyncio.Task[None]) -> None:
    """Log how a close whose caller had been cancelled failed (nobody else will)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("closing the channel layer failed after its caller was cancelled: %r", exc)


def _remember(memory: dict[K, V], key: K, value: V) -> None:
    """Remember ``key`` in ``memory``, which starts afresh past :data:`_TARGETS_KEPT` keys."""
    if len(memory) >= _TARGETS_KEPT:
        memory.clear()
    memory[key] = value


class ChannelLayer(BaseChannelLayerAPI):
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

    ``expiry``, ``group_expiry``, ``capacity``, ``serializer_format`` and
    ``max_message_size`` may also be given in a ``url``'s query string; an option
    given both ways takes the keyword's value (None, or leaving it out, means "not
    given"). An unknown option raises :class:`~layers.UnknownOption`.
    """

    #: The backend class subclasses bind (``MemoryChannelLayer`` sets it).
    backend_class: type[Backend]

    #: What holds the layer's readers for one event loop (a seam for the broken-layer
    #: catalogue, which proves the suite catches a receive path that leaks or strands).
    _loop_state_class: type[LoopState] = LoopState

    def __init__(
        self,
        *,
        backend: type[Backend] | str | None = None,
        expiry: float | None = None,
        group_expiry: float | None = None,
        capacity: int | None = None,
        channel_capacity: Mapping[Any, int] | Iterable[tuple[Any, int]] | None = None,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        serializer_format: str | None = None,
        max_message_size: int | Unset | None = UNSET,
        prefetch: int | None = None,
        **backend_options: Any,
    ) -> None:
        settings = layer_settings(
            getattr(self, "backend_class", None),
            backend,
            {
                "expiry": expiry,
                "group_expiry": group_expiry,
                "capacity": capacity,
                "serializer_format": serializer_format,
                "max_message_size": max_message_size,
                "prefetch": prefetch,
            },
            channel_capacity=channel_capacity,
            symmetric_encryption_keys=symmetric_encryption_keys,
            backend_options=backend_options,
        )
        self._settings = settings
        self.backend_class = settings.backend_class
        self.expiry: float = settings.expiry
        self.group_expiry: float = settings.group_expiry
        #: The capacity of each validated send target, by channel name (see :meth:`_target`).
        self._targets: dict[str, int] = {}
        #: Validated receive channels and their store queues (see :meth:`_check_receivable`).
        self._receivable: dict[str, str] = {}
        #: new_channel() prefixes already checked, and their inboxes.
        self._inboxes: dict[str, str] = {}
        self._capacity: int = settings.capacity
        self._channel_capacity = settings.channel_capacity
        self.max_message_size: int | None = settings.max_message_size
        self.prefetch: int = settings.prefetch
        self._serializer: Serializer = settings.serializer
        self._in_process = settings.in_process
        #: Wraps a body for the store: the in-process envelope when messages are not
        #: serialized (an in-process backend), else the wire envelope.
        self._pack = pack if self._in_process is None else pack_local
        self._backend_options = settings.backend_options
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

    @property
    def capacity(self) -> int:
        """How many unexpired messages a channel holds unless a pattern says otherwise.

        Settable: the new value applies to the next ``send``, including to channels
        already sent to; a value that is not an integer from 1 up raises
        :class:`~layers.ConfigurationError` and changes nothing.
        """
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        check_number("capacity", value, minimum=1, maximum=MAX_COUNT, integer=True)
        self._capacity = value
        self._settings = dataclasses.replace(
            self._settings, capacity=value, capacity_origin="the layer's capacity attribute"
        )
        self._targets.clear()

    @property
    def channel_capacity(self) -> list[tuple[re.Pattern[str], int]]:
        """Per-channel capacities: compiled ``(pattern, capacity)`` pairs, first match wins.

        Settable with what the ``channel_capacity`` setting takes (a mapping or pairs
        of glob strings or compiled regexes, or what ``compile_capacities`` returned);
        bad input raises :class:`~layers.ConfigurationError` and changes nothing.
        """
        return self._channel_capacity

    @channel_capacity.setter
    def channel_capacity(self, value: Capacities) -> None:
        compiled, labels = capacity_patterns(value)
        self._channel_capacity = compiled
        self._settings = dataclasses.replace(
            self._settings, channel_capacity=compiled, capacity_labels=labels
        )
        self._targets.clear()

    def get_capacity(self, channel: str) -> int:
        """Return the capacity of ``channel``: the first matching pattern, else ``capacity``."""
        for pattern, value in self.channel_capacity:
            if pattern.match(channel):
                return value
        return self.capacity

    async def close_pools(self) -> None:
        """Release every connection this layer holds, in every event loop (channels_redis).

        channels_redis's documented way to close a layer's connections, e.g. at the
        end of a test or before an ``async_to_sync`` loop closes. Stored messages
        and groups stay; the layer stays usable and reconnects on its next call.
        This event loop's readers stop (consumers waiting in ``receive`` here get
        :class:`~layers.LayerClosed`). The state of another, still running event
        loop is closed on that loop (waited for up to 5 seconds); the state of a
        loop that has stopped is dropped. Idempotent. Cancellation: this loop's
        close goes on to its end in the background, as with :meth:`aclose`; another
        loop's close goes on in that loop; a loop not reached yet is closed by a later
        call.
        """
        current = asyncio.get_running_loop()
        with self._states_lock:
            states = list(self._states.items())
            for loop, _state in states:
                if loop is current or loop.is_closed() or not loop.is_running():
                    del self._states[loop]
        for loop, state in states:
            if loop is current:
                await _close_to_the_end(state)
            elif loop.is_running() and not loop.is_closed():
                future = asyncio.run_coroutine_threadsafe(self._close_state(state), loop)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(future), timeout=5)
                except TimeoutError:
                    logger.warning("close_pools: another event loop did not close in 5 s")

    async def _close_state(self, state: LoopState) -> None:
        self._forget(state)
        await state.aclose()

    # -- per-loop state -------------------------------------------------------------

    def _state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            with self._states_lock:
                state = self._states.get(loop)
                if state is None:
                    state = self._states[loop] = self._loop_state_class(
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

    def _target(self, channel: str) -> int:
        """Validate ``channel``, remember it for sends and return its capacity.

        The memory is bounded: past :data:`_TARGETS_KEPT` names it starts afresh
        (reply channels are often sent to once). It holds only strings and integers,
        which the garbage collector does not track: a fresh reply channel per request
        leaves nothing behind that would make the collector run (and pause a round
        trip) more often.
        """
        require_valid_channel_name(channel)
        capacity = self.get_capacity(channel)
        _remember(self._targets, channel, capacity)
        return capacity

    def _encode(self, message: dict[str, Any]) -> bytes:
        if self._in_process is not None:
            return self._in_process.dumps(message)  # validates and checks the size
        body = self._serializer.dumps(validate_message(message))
        if self.max_message_size is not None and len(body) > self.max_message_size:
            raise MessageTooLarge(
                f"the message is {len(body)} bytes serialized; "
                f"max_message_size is {self.max_message_size}"
            )
        return body

    # -- the Channels API -----------------------------------------------------------

    async def send(
        self, channel: str, message: dict[str, Any], *, wait: float | None = None
    ) -> None:
        """Send ``message`` to ``channel``.

        Raises :class:`TypeError` for a bad name, :class:`~layers.InvalidMessage`
        for a bad message (both before any I/O), :class:`~layers.ChannelFull` when
        the channel holds its capacity of unexpired messages (nothing is stored;
        the error names the limit and the setting that set it),
        :class:`~layers.BackendError` when the store fails.

        Backpressure: with ``wait=SECONDS`` a send to a full channel waits up to
        that long for room (it retries, at most 50 ms apart, as consumers drain the
        channel) and raises :class:`~layers.ChannelFull` only when the time is up.
        ``wait=None`` (the default) or ``0`` fails at once, as Channels does. The
        message's ``expiry`` counts from when it is stored, not from the call.

        Cancellation: the message is stored once or not at all, also while waiting.
        """
        capacity = self._targets.get(channel) if type(channel) is str else None
        if capacity is None:
            capacity = self._target(channel)
        queue, local_part = split_channel(channel)
        local = None if local_part is None else [local_part]
        if wait is not None:
            check_number("wait", wait, minimum=0, maximum=MAX_EXPIRY)
        body = self._encode(message)
        state = self._state()
        backend = state.backend if state.opened else await state.ready()
        stored = await backend.send(
            queue,
            self._pack(local, body, time.time() + self.expiry),
            expiry=self.expiry,
            capacity=capacity,
        )
        if not stored and wait:
            give_up = time.monotonic() + wait
            delay = 0.002
            while not stored:
                left = give_up - time.monotonic()
                if left <= 0:
                    break
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)
                stored = await backend.send(
                    queue,
                    self._pack(local, body, time.time() + self.expiry),
                    expiry=self.expiry,
                    capacity=capacity,
                )
        if not stored:
            raise ChannelFull(self._settings.full_message(channel, capacity, wait))

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for and return the next message on ``channel``, oldest first.

        ``channel`` is a normal channel name, or a full reply-channel name made by
        :meth:`new_channel` on *this* layer (else :class:`~layers.ChannelNotOwned`).
        Cancellation loses nothing: a message already taken from the store goes to
        the next ``receive`` of this channel in this process (from any event loop),
        or, for a normal channel nobody here waits on, back to the head of the store.
        """
        state = self._state()
        queue = self._receivable.get(channel) if type(channel) is str else None
        if queue is None:
            queue = self._check_receivable(channel)
        if state.closing:
            raise LayerClosed("the channel layer is closing")
        if state.inline_receive and state.opened:
            # An instant backend's lone consumer pops in this task (see receive_inline);
            # otherwise, or when it gives way, the consumer waits in the mailbox.
            box = self._hub.mailboxes.get(channel)
            if box is None or box.idle():
                message = await state.receive_inline(channel, queue)
                if message is not None:
                    return message
                if state.closing:
                    raise LayerClosed("the channel layer was closed")
        return await state.receive(channel, queue)

    def _check_receivable(self, channel: str) -> str:
        """Validate a receive on ``channel`` and return its store queue.

        The answer is remembered (up to :data:`_TARGETS_KEPT` names, then afresh), so
        a consumer receiving on one channel in a loop pays for the name and ownership
        checks once.
        """
        require_valid_channel_name(channel, receive=True)
        queue, local = split_channel(channel)
        if local is not None and not queue.endswith(f"{self.client_id}!"):
            raise ChannelNotOwned(
                f"{channel!r} was not made by this layer's new_channel(); "
                "only the process that made a reply channel may receive on it"
            )
        self._hub.maybe_sweep()
        _remember(self._receivable, channel, queue)
        return queue

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Return a new reply-channel name, ``prefix + client id + "!" + random``.

        Only this layer instance can receive on it. No I/O.
        """
        inbox = self._inboxes.get(prefix) if type(prefix) is str else None
        if inbox is None:
            if not isinstance(prefix, str) or "!" in prefix:
                raise TypeError(f"Invalid reply channel prefix {prefix!r}")
            inbox = f"{prefix}{self.client_id}!"
            # Every name made with this prefix is valid if one is: the suffix is
            # always 12 letters and digits.
            name = require_valid_channel_name(inbox + random_suffix(12))
            _remember(self._inboxes, prefix, inbox)
        else:
            name = inbox + random_suffix(12)
        _remember(self._receivable, name, inbox)  # made here: nothing to check on receive
        return name

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
        if self._in_process is not None:
            body = self._in_process.dumps_shared(message)  # one body, many receivers
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

    async def statistics(self) -> LayerStatistics:
        """Return a snapshot of this layer's store: pending messages and groups.

        Each channel with pending messages, busiest first, with the age of its
        oldest message, its capacity and whether it is full; each group with its
        size, largest first. Needs the ``statistics`` capability (every built-in
        backend has it). Read-only: cancelling it changes nothing.
        """
        self.require(Capability.STATISTICS)
        backend = await self._state().ready()
        raw = await backend.statistics()
        channels = [
            ChannelStatistics(
                name=q.queue,
                pending=q.pending,
                oldest_age=None
                if q.oldest_ttl is None
                else round(max(0.0, self.expiry - q.oldest_ttl), 3),
                capacity=self.get_capacity(q.queue),
            )
            for q in raw.queues
            if q.pending > 0
        ]
        channels.sort(key=lambda c: (-c.pending, c.name))
        groups = [GroupStatistics(name, size) for name, size in raw.groups.items() if size > 0]
        groups.sort(key=lambda g: (-g.size, g.name))
        return LayerStatistics(channels, groups)

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
        What this loop's readers hold for normal channels goes back to the head of the
        store. The layer stays usable: a later call opens new connections.

        Cancellation (a timeout around it, say): the caller gets ``CancelledError`` at
        once, and the close goes on to its end in the background: the readers give
        back what they hold and the connections close. A failure there is logged.
        """
        loop = asyncio.get_running_loop()
        with self._states_lock:
            state = self._states.pop(loop, None)
        if state is not None:
            await _close_to_the_end(state)

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
