"""A catalogue of deliberately broken layers, each one defect away from the memory backend.

Every entry is a small subclass of :class:`~layers.backends.memory.MemoryBackend` (or,
for rules the core enforces, of :class:`~layers.ChannelLayer`). The conformance suite
must fail every one of them; ``test_catalogue.py`` proves it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from layers.backends.memory import MemoryBackend, MemoryStore
from layers.core import envelope as local
from layers.core.backend import Backend, Put
from layers.core.errors import ChannelFull, ChannelNotOwned
from layers.core.layer import ChannelLayer
from layers.core.wakeups import wake

FOREVER = 10.0**9


def _push_front(store: MemoryStore, queue: str, payloads: list[bytes]) -> None:
    """Put payloads back at the head of ``queue`` (they will be delivered again)."""
    with store.lock:
        items = store.queues.get(queue)
        if items is None:
            items = store.queues[queue] = deque()
        for payload in reversed(payloads):
            items.appendleft((time.monotonic() + 60, payload))
        waiters = store.waiters.pop(queue, None)
    if waiters:
        wake(waiters)


class DuplicateAlways(MemoryBackend):
    """Stores every payload twice: every message is delivered twice."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        stored = await super().send(queue, payload, expiry=expiry, capacity=capacity)
        if stored:
            await super().send(queue, payload, expiry=expiry, capacity=FOREVER.__int__())
        return stored


class DuplicateUnderConcurrency(MemoryBackend):
    """When two receives wait on one queue, the one served leaves a copy for the other."""

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        active: dict[str, int] = self._store.__dict__.setdefault("active", {})
        active[queue] = active.get(queue, 0) + 1
        try:
            out = await super().receive(queue, timeout=timeout, limit=limit)
            if out and active[queue] > 1:
                _push_front(self._store, queue, out[:1])
            return out
        finally:
            active[queue] -= 1


class DuplicateOneInAThousand(MemoryBackend):
    """Every 1,000th payload taken is also left in place: delivered to two readers."""

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        out = await super().receive(queue, timeout=timeout, limit=limit)
        counter: itertools.count[int] = self._store.__dict__.setdefault("taken", itertools.count(1))
        for payload in out:
            if next(counter) % 1000 == 0:
                _push_front(self._store, queue, [payload])
        return out


class Lifo(MemoryBackend):
    """Pops the newest payload first."""

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        with self._store.lock:
            items = self._store.queues.get(queue)
            if items:
                items.reverse()
        out = await super().receive(queue, timeout=timeout, limit=limit)
        with self._store.lock:
            items = self._store.queues.get(queue)
            if items:
                items.reverse()
        return out


class ReorderUnderLoad(MemoryBackend):
    """When more than 50 payloads are queued, the second is delivered before the first."""

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        with self._store.lock:
            items = self._store.queues.get(queue)
            if items is not None and len(items) > 50:
                first = items.popleft()
                second = items.popleft()
                items.appendleft(first)
                items.appendleft(second)
        return await super().receive(queue, timeout=timeout, limit=limit)


class ExpiryIgnored(MemoryBackend):
    """Messages never expire."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        return await super().send(queue, payload, expiry=FOREVER, capacity=capacity)

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:  # type: ignore[override]
        return await super().send_many([Put(p.queue, p.payload, FOREVER, p.capacity) for p in puts])


class GroupExpiryIgnored(MemoryBackend):
    """Group memberships never expire."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        await super().group_add(group, channel, expiry=FOREVER)


class GroupAddDoesNotRefresh(MemoryBackend):
    """Adding a member again keeps its first expiry."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        with self._store.lock:
            members = self._store.groups.get(group)
            if members is not None and channel in members:
                return
        await super().group_add(group, channel, expiry=expiry)


class CapacityIgnored(MemoryBackend):
    """Queues never fill up."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        return await super().send(queue, payload, expiry=expiry, capacity=2**62)

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:  # type: ignore[override]
        return await super().send_many([Put(p.queue, p.payload, p.expiry, 2**62) for p in puts])


class GroupSendRaisesChannelFull(MemoryBackend):
    """``send_many`` raises ChannelFull when a member is full, so ``group_send`` raises."""

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:  # type: ignore[override]
        results = await super().send_many(list(puts))
        if not all(results):
            raise ChannelFull("a group member is full")
        return results


class GroupAddNotIdempotent(MemoryBackend):
    """Each ``group_add`` adds the member once more: it gets one copy per add."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        counts: dict[tuple[str, str], int] = self._store.__dict__.setdefault("adds", {})
        counts[group, channel] = counts.get((group, channel), 0) + 1
        await super().group_add(group, channel, expiry=expiry)

    async def group_channels(self, group: str) -> list[str]:
        counts: dict[tuple[str, str], int] = self._store.__dict__.setdefault("adds", {})
        members = await super().group_channels(group)
        return [m for m in members for _ in range(counts.get((group, m), 1))]


class GroupDiscardNonMemberRaises(MemoryBackend):
    """Discarding a channel that is not a member raises KeyError."""

    async def group_discard(self, group: str, channel: str) -> None:
        with self._store.lock:
            members = self._store.groups.get(group)
            if members is None or channel not in members:
                raise KeyError(channel)
        await super().group_discard(group, channel)


class FlushLeavesGroups(MemoryBackend):
    """``flush`` empties the queues but keeps every group."""

    async def flush(self) -> None:
        with self._store.lock:
            self._store.queues.clear()


class FlushLeavesMessages(MemoryBackend):
    """``flush`` empties the groups but keeps every message."""

    async def flush(self) -> None:
        with self._store.lock:
            self._store.groups.clear()


def _to_str(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: _to_str(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_str(v) for v in value]
    return value


class BytesBecomeStr(MemoryBackend):
    """Re-encodes every payload with bytes turned into str (a lossy text round trip)."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        return await super().send(queue, _corrupt(payload), expiry=expiry, capacity=capacity)

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:  # type: ignore[override]
        return await super().send_many(
            [Put(p.queue, _corrupt(p.payload), p.expiry, p.capacity) for p in puts]
        )


def _corrupt(payload: bytes) -> bytes:
    parts = local.unpack(payload)
    message = msgpack.unpackb(parts[-1], raw=False)
    body = msgpack.packb(_to_str(message), use_bin_type=True)
    return local.pack(parts[0], body, *parts[1:-1])  # type: ignore[arg-type]


class LosesMessageWhenCancelled(MemoryBackend):
    """Claims ``instant_receive`` but yields after taking: a cancelled receive loses it."""

    instant_receive = True

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        out = await super().receive(queue, timeout=timeout, limit=limit)
        await asyncio.sleep(0)
        return out


# -- broken layers: rules the core enforces ---------------------------------------------


class ReplyChannelReadableByOthers(ChannelLayer):
    """Skips the ownership check: reads another instance's reply channel from the shared store."""

    async def receive(self, channel: str) -> dict[str, Any]:
        try:
            return await super().receive(channel)
        except ChannelNotOwned:
            queue = channel[: channel.index("!") + 1]
            backend = await self._state().ready()
            while True:
                for payload in await backend.receive(queue, timeout=1.0, limit=1):
                    parts = local.unpack(payload)
                    return self._serializer.loads(parts[-1])


class SharedReplyInbox(ChannelLayer):
    """Every instance uses the same client id, so they all read one reply inbox."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.client_id = "sharedid"


class RelaxedNames(ChannelLayer):
    """Accepts names over 100 characters or with two ``!`` (silently rewriting them)."""

    @staticmethod
    def _fix(channel: Any) -> Any:
        if isinstance(channel, str) and (len(channel) > 100 or channel.count("!") > 1):
            head, bang, tail = channel.partition("!")
            channel = (head + bang + tail.replace("!", "."))[:100]
        return channel

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await super().send(self._fix(channel), message)

    async def receive(self, channel: str) -> dict[str, Any]:
        return await super().receive(self._fix(channel))


class LeaksEventLoops(ChannelLayer):
    """Never releases the state it keeps for an event loop (``async_to_sync`` leaks)."""

    def _close_with_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        return None

    def _forget(self, state: Any) -> None:
        return None


@dataclass(frozen=True)
class Broken:
    """One catalogue entry: the defect, and the classes that carry it."""

    defect: str
    backend: type[Backend] = MemoryBackend
    layer: type[ChannelLayer] = ChannelLayer


CATALOGUE: dict[str, Broken] = {
    "duplicate-always": Broken("every message delivered twice", DuplicateAlways),
    "duplicate-concurrent": Broken(
        "duplicates only with concurrent readers", DuplicateUnderConcurrency
    ),
    "duplicate-1-in-1000": Broken(
        "one message in 1,000 reaches two readers", DuplicateOneInAThousand
    ),
    "lifo": Broken("newest message first", Lifo),
    "reorder-under-load": Broken("reorders when more than 50 are queued", ReorderUnderLoad),
    "expiry-ignored": Broken("messages never expire", ExpiryIgnored),
    "group-expiry-ignored": Broken("memberships never expire", GroupExpiryIgnored),
    "group-add-no-refresh": Broken("group_add does not refresh expiry", GroupAddDoesNotRefresh),
    "capacity-ignored": Broken("channels never fill up", CapacityIgnored),
    "group-send-raises-full": Broken(
        "group_send raises ChannelFull (send_many raises)", GroupSendRaisesChannelFull
    ),
    "group-add-duplicates": Broken("group_add duplicates a member", GroupAddNotIdempotent),
    "group-discard-raises": Broken(
        "group_discard of a non-member raises", GroupDiscardNonMemberRaises
    ),
    "flush-leaves-groups": Broken("flush keeps groups", FlushLeavesGroups),
    "flush-leaves-messages": Broken("flush keeps messages", FlushLeavesMessages),
    "bytes-become-str": Broken("bytes turned into str", BytesBecomeStr),
    "lose-on-cancel": Broken("a cancelled receive loses a message", LosesMessageWhenCancelled),
    "reply-readable-by-others": Broken(
        "a reply channel is readable by another layer instance",
        layer=ReplyChannelReadableByOthers,
    ),
    "shared-reply-inbox": Broken("layer instances share one reply inbox", layer=SharedReplyInbox),
    "relaxed-names": Broken("names over 100 characters or with two ! accepted", layer=RelaxedNames),
    "leaks-event-loops": Broken("state of closed event loops is kept", layer=LeaksEventLoops),
}


def make_factory(name: str) -> Any:
    """Return a layer factory for catalogue entry ``name`` (all its layers share one store)."""
    entry = CATALOGUE[name] if name != "correct" else Broken("none")
    store = MemoryStore()

    def factory(**options: Any) -> ChannelLayer:
        layer = entry.layer(backend=entry.backend, **options)
        layer._backend_options = {"store": store}
        return layer

    return factory
