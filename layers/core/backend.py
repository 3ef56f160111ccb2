"""The backend contract: what a storage plugin implements.

The core (:class:`layers.ChannelLayer`) owns every rule users see: names, message
validation, serialization, encryption, capacity lookup, expiry values, reply-channel
demultiplexing, cancellation safety and the Django Channels API. A backend owns only
storage and atomicity, through the few async primitives of :class:`Backend`, on
opaque ``bytes``.

Queues
    The backend stores *queues*: named FIFO lists of payloads. The core maps a
    normal channel (``"chat.events"``) to the queue of the same name, and every
    reply channel of one layer instance (``"specific.a1b2c3!x7y8"``) to a shared
    *inbox* queue named after the non-local part (``"specific.a1b2c3!"``). Queue
    names are at most 100 ASCII characters (``[a-zA-Z0-9._-]`` plus an optional
    trailing ``!``). Backends must not interpret payloads.

Lifecycle and event loops
    The core creates **one backend instance per event loop** the layer is used from
    (``async_to_sync`` makes a new loop per call), so an instance never needs to
    think about loops: connections, pools and tasks it opens belong to the loop its
    methods are called on. The core calls :meth:`Backend.open` once before the
    first primitive and :meth:`Backend.aclose` when the layer is closed or its loop
    closes. State that must be shared between the instances of one layer (the
    memory backend's store) is prepared once by :meth:`Backend.prepare_options`.

Concurrency
    The core may call any primitive concurrently from several tasks of the same
    loop. It calls :meth:`Backend.receive` on a given queue from at most one task
    per instance at a time, but other instances (other loops, processes, hosts)
    may receive from the same queue concurrently: :meth:`Backend.receive` is where
    **at-most-once** lives and its removal must be atomic.

Time
    Expiry is given in seconds (``float``). Backends measure it with a clock that
    does not jump (``time.monotonic()`` in one process; the server's clock for a
    shared store), never with a sender's wall clock.

Errors
    Backends raise :class:`layers.BackendError` (chained to the driver's exception)
    for store failures and :class:`layers.ConfigurationError` for bad options.
"""

from __future__ import annotations

import abc
import enum
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from layers.core.errors import ConfigurationError
from layers.core.names import split_channel

__all__ = ["Backend", "BackendStatistics", "Capability", "GroupPayload", "Put", "QueueStatistics"]


class Capability(enum.StrEnum):
    """What a backend can do, declared once in :attr:`Backend.capabilities`.

    Django Channels' ``extensions`` list, :meth:`layers.ChannelLayer.require` and the
    conformance suite's skips all derive from this one declaration.
    """

    GROUPS = "groups"
    """Group membership: :meth:`Backend.group_add`, ``group_discard``, ``group_channels``."""

    FLUSH = "flush"
    """:meth:`Backend.flush` empties every queue and group of the layer."""

    CROSS_PROCESS = "cross_process"
    """Several OS processes on one host share queues and groups."""

    CROSS_HOST = "cross_host"
    """Processes on several hosts share queues and groups."""

    PERSISTENT = "persistent"
    """Stored messages survive a restart of the process (not necessarily of the server)."""

    STATISTICS = "statistics"
    """:meth:`Backend.statistics` reports pending messages per queue and group sizes."""


@dataclass(frozen=True, slots=True)
class Put:
    """One payload to append to one queue, as given to :meth:`Backend.send_many`."""

    queue: str
    payload: bytes
    expiry: float
    capacity: int


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    """What :meth:`Backend.statistics` reports about one non-empty queue."""

    queue: str
    #: Unexpired payloads waiting in the queue.
    pending: int
    #: Seconds until the oldest unexpired payload expires (None if unknown).
    oldest_ttl: float | None


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    """A snapshot of a backend's namespace: its non-empty queues and its groups."""

    queues: list[QueueStatistics]
    #: Group name -> number of unexpired members (groups with none may be left out).
    groups: dict[str, int]


@dataclass(frozen=True, slots=True)
class GroupPayload:
    r"""What one ``group_send`` stores, described so a backend can build it in its store.

    Members are grouped by queue. A normal member channel ``C`` (no ``!``) gets
    :attr:`plain` on queue ``C``. The reply channels of one inbox ``Q`` (names
    ``Q + local``, ``Q`` ending in ``!``) get one payload on queue ``Q``:
    :attr:`targeted_head` + their local parts joined by ``,`` + ``\n`` + :attr:`body`
    (the order of the local parts does not matter). Every payload is stored with
    :attr:`expiry` and checked against :attr:`capacity`; a full queue is skipped.
    """

    plain: bytes
    targeted_head: bytes
    body: bytes
    expiry: float
    capacity: int

    def puts(
        self, members: Sequence[str], capacity_of: Callable[[str], int] | None = None
    ) -> list[Put]:
        """The :class:`Put` per receiving queue for ``members``, in first-seen order.

        Each put has :attr:`capacity`, or with ``capacity_of`` the capacity of the
        queue's first member channel (what a ``send`` to that channel would check).
        """
        queues: dict[str, list[str] | None] = {}
        first: dict[str, str] = {}
        for channel in members:
            inbox, local = split_channel(channel)
            if local is None:
                queues[channel] = None
                first[channel] = channel
                continue
            locals_ = queues.get(inbox)
            if locals_ is None:
                locals_ = queues[inbox] = []
                first[inbox] = channel
            locals_.append(local)
        return [
            Put(
                queue,
                self.plain if locals_ is None else self.targeted(locals_),
                self.expiry,
                self.capacity if capacity_of is None else capacity_of(first[queue]),
            )
            for queue, locals_ in queues.items()
        ]

    def targeted(self, locals_: Sequence[str]) -> bytes:
        """The payload of one inbox whose reply channels have the local parts ``locals_``."""
        return b"".join((self.targeted_head, ",".join(locals_).encode("ascii"), b"\n", self.body))


class Backend(abc.ABC):
    """Storage for one layer in one event loop. Subclass it to write a backend.

    Required: :meth:`send`, :meth:`receive`, :meth:`aclose`; plus the group methods
    when :attr:`capabilities` has :attr:`Capability.GROUPS`, and :meth:`flush` with
    :attr:`Capability.FLUSH`. :meth:`send_many` has a correct default built on
    :meth:`send` that a backend may override to batch round trips.

    Construction takes the backend's own options (``hosts``, ``url``, ``prefix``...)
    as keyword arguments and must do no I/O; connect in :meth:`open` or lazily.
    """

    #: The capabilities this backend provides. See :class:`Capability`.
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    #: Optional short name used in messages and reports (``"redis"``).
    name: ClassVar[str] = ""

    #: True only when :meth:`receive` never suspends between taking payloads from
    #: the store and returning them (no I/O: it may wait only *before* it takes
    #: anything), so cancelling it can never lose a payload. A payload a send hands
    #: to the waiting call (the memory backend does, within one event loop) counts
    #: as not yet taken: a call cancelled or closed before it returns puts it back
    #: at the head of the queue. The core then lets a waiting consumer pop for
    #: itself instead of waking a reader task. Leave False for any backend that
    #: talks to a server.
    instant_receive: ClassVar[bool] = False

    #: True only when payloads never leave this process (no server, no file): the
    #: core may then skip serializing messages (see
    #: :class:`layers.core.serializers.InProcessSerializer`) and hand the backend
    #: payloads that are Python objects rather than ``bytes`` (in-process
    #: envelopes, :func:`layers.core.envelope.pack_local`). Such a backend must store
    #: each payload as it is and give the same object back, never looking inside.
    #: Leave False for any backend with a store outside the process.
    in_process: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse, when the class is defined, a capability declared without its methods."""
        super().__init_subclass__(**kwargs)
        missing = [
            f"{method}() (needed by the {capability.value!r} capability)"
            for capability, methods in _CAPABILITY_METHODS.items()
            if capability in cls.capabilities
            for method in methods
            if getattr(cls, method) is getattr(Backend, method)
        ]
        if missing:
            raise TypeError(
                f"backend {cls.__qualname__} declares capabilities it does not implement: "
                f"define {', '.join(missing)}, or remove the capability"
            )

    @classmethod
    def prepare_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and normalise the backend options once, when the layer is made.

        Called without an event loop, before any instance exists. Raise
        :class:`layers.ConfigurationError` naming the setting for a bad value, so
        misconfiguration fails at start-up rather than at the first message. The
        returned dict is passed as keyword arguments to every per-loop instance; it
        may add objects shared by those instances. The default checks that every
        option is a keyword of ``__init__``.
        """
        signature = inspect.signature(cls.__init__)
        params = signature.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            allowed = sorted(
                name
                for name, p in params.items()
                if name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL
            )
            for key in options:
                if key not in params or key == "self":
                    raise ConfigurationError(
                        key,
                        f"unknown option for the {cls.name or cls.__name__} backend "
                        f"(known options: {', '.join(allowed) or 'none'})",
                    )
        return dict(options)

    @classmethod
    def option_names(cls) -> frozenset[str] | None:
        """The backend options this backend takes as keywords, or None for "any".

        The core checks every backend option against it before
        :meth:`prepare_options` and answers an unknown one with
        :class:`layers.UnknownOption` (the same message on every backend). The
        default reads the keywords of ``__init__`` (None when it takes
        ``**kwargs``); override it when ``prepare_options`` maps options to other
        ``__init__`` arguments.
        """
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return frozenset(
            name
            for name, p in params.items()
            if name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL
        )

    @classmethod
    def url_option_names(cls) -> frozenset[str] | None:
        """The query parameters this backend's URLs take, or None to leave them unchecked.

        The core removes the layer options (``expiry``...) first, then answers any
        other name not in this set with :class:`layers.UnknownOption`. The default,
        None, leaves the query to :meth:`options_from_url`.
        """
        return None

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """Turn a connection URL into backend options (called before :meth:`prepare_options`).

        The core has already removed the layer options (``expiry``, ``capacity``...)
        from the query string. The default passes the URL on as ``url=``; backends
        override this to map their own query parameters to options.
        """
        return {"url": url}

    async def open(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Connect. Called once by the core before the first primitive.

        May raise :class:`layers.BackendError`. A cancelled ``open`` leaves nothing
        open that :meth:`aclose` would not release.
        """

    @abc.abstractmethod
    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        """Append ``payload`` to the tail of ``queue`` unless the queue is full.

        Atomically: if ``queue`` holds ``capacity`` or more unexpired payloads,
        store nothing and return ``False``; else append and return ``True``. The
        payload expires ``expiry`` seconds after it is stored and must then never
        be returned by :meth:`receive`. Order is the store's arrival order.

        Cancellation: the payload is either stored once or not at all, never twice.
        Raises :class:`layers.BackendError` when the store fails.
        """

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:
        """Apply several :meth:`send` calls; return whether each was stored.

        Used by ``group_send`` (one :class:`Put` per receiving queue). Each put is
        independent: a full queue skips only its own put. The order of puts to the
        same queue is kept. Not atomic as a whole. The default awaits :meth:`send`
        for each put in turn; backends override it to batch round trips.

        Cancellation: each put is stored once or not at all.
        """
        return [
            await self.send(p.queue, p.payload, expiry=p.expiry, capacity=p.capacity) for p in puts
        ]

    @abc.abstractmethod
    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        """Remove and return up to ``limit`` of the oldest unexpired payloads.

        Waits at most about ``timeout`` seconds for the first payload and returns
        ``[]`` if none came; never waits for more once it has one. Payloads are
        returned oldest first. Removal is **atomic**: a payload is returned by at
        most one call, in any process or host, ever (at-most-once). Expired
        payloads are never returned.

        Cancellation: the core cancels this call only when its event loop ends
        (``asyncio.run`` cancels every task it still has) or its layer closes. A call
        cancelled before it removed anything raises ``CancelledError``. A call
        cancelled after the store removed payloads for it (a reply already on its way)
        must not lose them: it waits for them (briefly: a blocked pop is unblocked,
        not abandoned) and **returns** them, leaving the cancellation requested
        (``asyncio.current_task().cancelling()``); the core delivers them, gives
        normal channels' back with :meth:`restore`, then stops. Never duplicated.
        Raises :class:`layers.BackendError` when the store fails; the core retries
        with backoff.
        """

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        """Put payloads this instance received back at the head of ``queue``.

        ``payloads`` are ``(payload, expiry)`` pairs, oldest first, each to expire
        ``expiry`` seconds from now; they go in front of everything in the queue, in
        their order, whatever the queue's capacity (they were in it). The core calls
        this for a normal channel when the consumers it popped for have gone (a
        ``receive`` cancelled while its pop was in flight), so those messages become
        receivable by any process again instead of waiting in this one.

        Return True when stored. The default returns False: the core then keeps the
        payloads buffered in this process, receivable only here, and they are lost
        if the process exits before it receives them.

        Cancellation (the core's reader gives payloads back when its consumer timed
        out, and an event loop may end meanwhile): every payload is restored once or
        not at all, and the core must learn which, or it drops them. A call
        cancelled before the store took anything returns False; one cancelled while
        the store works waits for the outcome (briefly) and returns it; either way
        the cancellation stays requested, and the core buffers what was not stored
        for the loop's close to give back again. Raise ``CancelledError`` only when
        the outcome cannot be known (the connection failed mid-call): the core then
        drops the payloads rather than risk delivering them twice.
        """
        return False

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        """Make ``channel`` a member of ``group`` until ``expiry`` seconds from now.

        Idempotent: adding a member again only moves its expiry to ``expiry``
        seconds from now. Needs :attr:`Capability.GROUPS`.
        Cancellation: the membership is either added/refreshed or left as it was.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support groups")

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op if it is not a member.

        Needs :attr:`Capability.GROUPS`. Cancellation: removed or left as it was.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support groups")

    async def group_channels(self, group: str) -> list[str]:
        """Return the unexpired members of ``group`` (any order, no duplicates).

        Needs :attr:`Capability.GROUPS`. Read-only: cancellation changes nothing.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support groups")

    async def group_send(self, group: str, payload: GroupPayload) -> int:
        """Store ``payload`` for every member of ``group``; return the full queues skipped.

        Used by ``group_send`` when every channel has the same capacity. The default
        is :meth:`group_channels` then :meth:`send_many` with
        :meth:`GroupPayload.puts`; a backend may override it to do both in one round
        trip, with the same result. Needs :attr:`Capability.GROUPS`. Cancellation:
        each receiving queue gets its payload once or not at all.
        """
        members = await self.group_channels(group)
        if not members:
            return 0
        stored = await self.send_many(payload.puts(members))
        return stored.count(False)

    async def statistics(self) -> BackendStatistics:
        """Report every non-empty queue and every group of this layer's namespace.

        Needs :attr:`Capability.STATISTICS`. Read-only: never removes or changes a
        payload or a membership, so cancelling it changes nothing. A snapshot: with
        concurrent writers, counts may be a moment apart from each other. Expired
        payloads and members are never counted. There is no default: the other
        primitives cannot list queues without consuming them.
        """
        raise NotImplementedError(f"{type(self).__name__} does not report statistics")

    async def flush(self) -> None:
        """Delete every queue and group this layer's options address.

        Needs :attr:`Capability.FLUSH`. Only touches this layer's namespace
        (``prefix``, schema, file). Cancellation: may leave part of the data.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support flush")

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release every connection and task this instance opened.

        Safe to call twice and on an instance that never opened. Stored payloads
        stay in a shared store. Must not raise for an already-broken connection.
        """


#: The methods a backend must define for each capability it declares.
_CAPABILITY_METHODS: dict[Capability, tuple[str, ...]] = {
    Capability.GROUPS: ("group_add", "group_discard", "group_channels"),
    Capability.FLUSH: ("flush",),
}
