"""A catalogue of deliberately broken layers, each one defect away from the memory backend.

Every entry is a small subclass of :class:`~layers.backends.memory.MemoryBackend` (or,
for rules the core enforces, of :class:`~layers.ChannelLayer`). The conformance suite
must fail every one of them; ``test_catalogue.py`` proves it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from broken_receive import (
    HoardsPerLoop,
    LeaksDemandOnCancel,
    LoopsPopAtOnce,
    MailboxesPerLoop,
    SqliteLayerBackend,
    SqliteRestoreLoses,
    StatisticsCapped,
    StatisticsCountExpired,
    StatisticsGroupsWithExpired,
    StatisticsOldestLast,
)

from layers.backends.memory import MemoryBackend, MemoryStore
from layers.backends.sqlite import _sql
from layers.backends.sqlite.backend import SqliteBackend
from layers.core import envelope as local
from layers.core.backend import Backend, GroupPayload, Put
from layers.core.errors import BackendError, ChannelFull, ChannelNotOwned
from layers.core.layer import ChannelLayer
from layers.core.local import LoopState
from layers.core.mailboxes import Hub, Item, Mailbox
from layers.core.names import require_valid_channel_name, valid_group_name
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
        waiters = store.waiters.pop(queue)
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


class LosesPopWhenLoopEnds(MemoryBackend):
    """A pop's reply takes a moment to come back, as over a network; a receive cancelled
    meanwhile (its event loop ending) drops what the store already removed."""

    instant_receive = False

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        out = await super().receive(queue, timeout=timeout, limit=limit)
        if out:
            await asyncio.sleep(0.002)  # the reply on its way back
        return out


class LosesGiveBackWhenLoopEnds(MemoryBackend):
    """A restore takes a round trip before it stores; cancelled meanwhile (its event loop
    ending), it raises ``CancelledError`` instead of saying it stored nothing."""

    instant_receive = False

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        await asyncio.sleep(0.002)  # the request on its way to the store
        return await super().restore(queue, payloads)


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


class HandsPastQueued(ChannelLayer):
    """A send to a channel that a receive of this instance waits on goes straight to that
    receive, past the messages other instances stored before it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._held: dict[str, list[dict[str, Any]]] = {}

    async def receive(self, channel: str) -> dict[str, Any]:
        held = self._held.get(channel)
        if held:
            return held.pop(0)
        handed: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(channel, [])
        waiting.append(handed)
        stored = asyncio.ensure_future(super().receive(channel))
        try:
            await asyncio.wait({handed, stored}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if handed in waiting:
                waiting.remove(handed)
        if handed.done():
            if stored.done():
                self._held.setdefault(channel, []).append(stored.result())
            else:
                stored.cancel()  # the core gives what it took to the next receive
            return handed.result()
        return stored.result()

    async def send(self, channel: str, message: dict[str, Any], **kwargs: Any) -> None:
        for handed in self._waiting.get(channel, ()):
            if not handed.done():
                handed.set_result(msgpack.unpackb(msgpack.packb(message)))
                return
        await super().send(channel, message, **kwargs)


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


# -- expiry semantics -------------------------------------------------------------------


class ExpiryPerQueue(MemoryBackend):
    """Each send renews the whole queue's expiry (a TTL on the list key): old messages live on."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        stored = await super().send(queue, payload, expiry=expiry, capacity=capacity)
        if stored:
            until = time.monotonic() + expiry
            with self._store.lock:
                items = self._store.queues.get(queue)
                if items:
                    renewed = [(until, p) for _, p in items]
                    items.clear()
                    items.extend(renewed)
        return stored


class ExpiryFromQueueCreation(MemoryBackend):
    """The queue's expiry is set by its first message only: later messages die with it."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        with self._store.lock:
            items = self._store.queues.get(queue)
            first = items[0][0] if items else None
        if first is not None:
            expiry = max(0.0, first - time.monotonic())
        return await super().send(queue, payload, expiry=expiry, capacity=capacity)


class ExpiryWholeSeconds(MemoryBackend):
    """Expiry truncated to whole seconds, at least one (``EXPIRE int(seconds)``)."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        return await super().send(queue, payload, expiry=max(1, int(expiry)), capacity=capacity)


class ExpiryRoundedUp(MemoryBackend):
    """Expiry rounded up to whole seconds (``math.ceil``)."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        return await super().send(queue, payload, expiry=math.ceil(expiry), capacity=capacity)


class ReplyInboxNeverExpires(MemoryBackend):
    """Inbox queues (names ending in ``!``) are stored without expiry."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        if queue.endswith("!"):
            expiry = FOREVER
        return await super().send(queue, payload, expiry=expiry, capacity=capacity)


class GroupExpiryPerGroup(MemoryBackend):
    """A ``group_add`` renews every member of the group (a TTL on the group key)."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        await super().group_add(group, channel, expiry=expiry)
        until = time.monotonic() + expiry
        with self._store.lock:
            members = self._store.groups.get(group, {})
            for member in members:
                members[member] = until


class GroupExpiryFromCreation(MemoryBackend):
    """The group's expiry is set when it is created: members added later expire with it."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        created: dict[str, float] = self._store.__dict__.setdefault("created", {})
        with self._store.lock:
            if group not in self._store.groups:
                created[group] = time.monotonic() + expiry
            until = created.get(group, time.monotonic() + expiry)
        await super().group_add(group, channel, expiry=max(0.0, until - time.monotonic()))


class GroupAddRefreshesOtherGroups(MemoryBackend):
    """Membership expiry is kept per channel: an add to one group renews it in every group."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        await super().group_add(group, channel, expiry=expiry)
        until = time.monotonic() + expiry
        with self._store.lock:
            for members in self._store.groups.values():
                if channel in members:
                    members[channel] = until


# -- group bookkeeping ------------------------------------------------------------------


class DiscardFromEveryGroup(MemoryBackend):
    """``group_discard`` removes the channel from every group it is in."""

    async def group_discard(self, group: str, channel: str) -> None:
        with self._store.lock:
            for members in self._store.groups.values():
                members.pop(channel, None)


class DiscardWholeGroup(MemoryBackend):
    """``group_discard`` deletes the whole group (``DEL`` of the group key)."""

    async def group_discard(self, group: str, channel: str) -> None:
        with self._store.lock:
            self._store.groups.pop(group, None)


class GroupChannelsFirstPage(MemoryBackend):
    """``group_channels`` returns the first page of members only (one ``SSCAN``, ``LIMIT 100``)."""

    async def group_channels(self, group: str) -> list[str]:
        return (await super().group_channels(group))[:100]


class GroupSendFirstMemberPerInbox(MemoryBackend):
    """``group_send`` keeps one member per inbox (``DISTINCT ON (queue)``): the other reply
    channels of that process miss the message."""

    async def group_send(self, group: str, payload: GroupPayload) -> int:
        seen: set[str] = set()
        members = []
        for channel in await self.group_channels(group):
            inbox = channel[: channel.index("!") + 1] if "!" in channel else channel
            if inbox not in seen:
                seen.add(inbox)
                members.append(channel)
        stored = await self.send_many(payload.puts(members)) if members else []
        return stored.count(False)


class GroupSendMergesInboxes(MemoryBackend):
    """``group_send`` sends every reply member through the first member's inbox (grouped
    by prefix, not by inbox): reply channels of other processes miss the message."""

    async def group_send(self, group: str, payload: GroupPayload) -> int:
        members = await self.group_channels(group)
        replies = [m for m in members if "!" in m]
        plain = [m for m in members if "!" not in m]
        puts = payload.puts(plain)
        if replies:
            inbox = replies[0][: replies[0].index("!") + 1]
            locals_ = [m[m.index("!") + 1 :] for m in replies]
            puts.append(Put(inbox, payload.targeted(locals_), payload.expiry, payload.capacity))
        stored = await self.send_many(puts) if puts else []
        return stored.count(False)


class OneGroupPerChannel(MemoryBackend):
    """Memberships kept in one hash keyed by channel: adding a channel to a second group
    moves it out of the first."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        with self._store.lock:
            for name, members in self._store.groups.items():
                if name != group:
                    members.pop(channel, None)
        await super().group_add(group, channel, expiry=expiry)


# -- names as storage keys --------------------------------------------------------------


class _KeyMapped(MemoryBackend):
    """Stores queue and group names through :meth:`key` (a lossy key layout)."""

    @staticmethod
    def key(name: str) -> str:
        return name

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        return await super().send(self.key(queue), payload, expiry=expiry, capacity=capacity)

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:  # type: ignore[override]
        return await super().send_many(
            [Put(self.key(p.queue), p.payload, p.expiry, p.capacity) for p in puts]
        )

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        return await super().receive(self.key(queue), timeout=timeout, limit=limit)

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        await super().group_add(self.key(group), channel, expiry=expiry)

    async def group_discard(self, group: str, channel: str) -> None:
        await super().group_discard(self.key(group), channel)

    async def group_channels(self, group: str) -> list[str]:
        return await super().group_channels(self.key(group))


class CaseInsensitiveKeys(_KeyMapped):
    """Keys compared case-insensitively (a ``_ci`` collation, a lower-cased key)."""

    @staticmethod
    def key(name: str) -> str:
        return name.lower()


class TruncatedKeys(_KeyMapped):
    """Keys cut to 64 characters (a ``VARCHAR(64)`` column, a topic name limit)."""

    @staticmethod
    def key(name: str) -> str:
        return name[:64]


class BangDroppedFromKeys(_KeyMapped):
    """``!`` removed from keys (a sanitised topic name): an inbox is the channel without it."""

    @staticmethod
    def key(name: str) -> str:
        return name.replace("!", "")


class _Matching(MemoryBackend):
    """Finds queues and groups by a pattern match of the name instead of equality."""

    @staticmethod
    def matches(pattern: str, name: str) -> bool:
        return pattern == name

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        store = self._store
        with store.lock:
            for name in list(store.queues):
                if name != queue and self.matches(queue, name):
                    out = store.take(name, limit, time.monotonic())
                    if out:
                        return out
        return await super().receive(queue, timeout=timeout, limit=limit)

    async def group_channels(self, group: str) -> list[str]:
        with self._store.lock:
            names = [g for g in self._store.groups if self.matches(group, g)]
        members: dict[str, None] = {}
        for name in names:
            members.update(dict.fromkeys(await super().group_channels(name)))
        return list(members)


class LikeWildcardKeys(_Matching):
    """Names matched with SQL ``LIKE``: ``_`` matches any character."""

    @staticmethod
    def matches(pattern: str, name: str) -> bool:
        regex = ".".join(re.escape(part) for part in pattern.split("_"))
        return re.fullmatch(regex, name) is not None


class RegexDotKeys(_Matching):
    """Names matched as regular expressions: ``.`` matches any character."""

    @staticmethod
    def matches(pattern: str, name: str) -> bool:
        return re.fullmatch(pattern, name) is not None


class PrefixMatchedKeys(_Matching):
    """Names matched by prefix (``SCAN MATCH name*``): ``a`` also reads ``ab``."""

    @staticmethod
    def matches(pattern: str, name: str) -> bool:
        return name.startswith(pattern)


class GroupsShareChannelKeys(MemoryBackend):
    """Groups and queues share one key space: a group overwrites the queue of its name."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        with self._store.lock:
            self._store.queues.pop(group, None)
        await super().group_add(group, channel, expiry=expiry)

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        with self._store.lock:
            self._store.groups.pop(queue, None)
        return await super().send(queue, payload, expiry=expiry, capacity=capacity)


class TrailingNewlineAccepted(ChannelLayer):
    """Checks names with a ``$`` regex, which lets a trailing newline through, then strips it."""

    @staticmethod
    def _strip(name: Any) -> Any:
        return name[:-1] if isinstance(name, str) and name.endswith("\n") else name

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await super().send(self._strip(channel), message)

    async def receive(self, channel: str) -> dict[str, Any]:
        return await super().receive(self._strip(channel))

    async def group_add(self, group: str, channel: str) -> None:
        await super().group_add(self._strip(group), self._strip(channel))

    async def group_discard(self, group: str, channel: str) -> None:
        await super().group_discard(self._strip(group), self._strip(channel))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await super().group_send(self._strip(group), message)

    async def new_channel(self, prefix: str = "specific.") -> str:
        return await super().new_channel(prefix.replace("\n", ""))


# -- scale and completeness -------------------------------------------------------------


class ReceiveIgnoresLimit(MemoryBackend):
    """``receive`` takes the whole queue whatever ``limit`` says."""

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        return await super().receive(queue, timeout=timeout, limit=2**31)


class StorageNeverShrinks(MemoryBackend):
    """Expired queues are never swept: storage grows with every distinct channel name."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        store = self._store
        with store.lock:
            stored = store.put(queue, payload, expiry, capacity, time.monotonic())
            waiters = store.waiters.pop(queue) if stored else None
        if waiters:
            wake(waiters)
        return stored


class WakeupsLost(MemoryBackend):
    """Sends never wake a waiting receive: it finds the message when its wait times out."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        with self._store.lock:
            return self._store.put(queue, payload, expiry, capacity, time.monotonic())

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:  # type: ignore[override]
        now = time.monotonic()
        with self._store.lock:
            return [self._store.put(p.queue, p.payload, p.expiry, p.capacity, now) for p in puts]


class GroupsNeverSwept(MemoryBackend):
    """Expired groups are never swept: storage grows with every distinct group name."""

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        with self._store.lock:
            members = self._store.groups.setdefault(group, {})
            members[channel] = time.monotonic() + expiry


class ExpiredHeadBlocks(MemoryBackend):
    """Never prunes on insert, and reads one page of ``limit`` rows, filtering expired ones:
    a page of expired rows reads as an empty queue until the next poll."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        store = self._store
        now = time.monotonic()
        with store.lock:
            items = store.queues.setdefault(queue, deque())
            if sum(1 for expires_at, _ in items if expires_at > now) >= capacity:
                return False
            items.append((now + expiry, payload))
            waiters = store.waiters.pop(queue)
        if waiters:
            wake(waiters)
        return True

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        store = self._store
        with store.lock:
            items = store.queues.get(queue)
            page = [items.popleft() for _ in range(min(limit, len(items)))] if items else []
        now = time.monotonic()
        if page:
            live = [payload for expires_at, payload in page if expires_at > now]
            if not live:
                await asyncio.sleep(timeout)
            return live
        return await super().receive(queue, timeout=timeout, limit=limit)


class FlushFirstPage(MemoryBackend):
    """``flush`` deletes the first 100 queues and groups only (one ``SCAN`` page)."""

    async def flush(self) -> None:
        with self._store.lock:
            for name in list(self._store.queues)[:100]:
                del self._store.queues[name]
            for name in list(self._store.groups)[:100]:
                del self._store.groups[name]


# -- concurrency and isolation ----------------------------------------------------------


class CapacityCheckNotAtomic(MemoryBackend):
    """Counts the queue, then inserts in a second step: concurrent senders overfill it."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        now = time.monotonic()
        with self._store.lock:
            live = sum(1 for expires_at, _ in self._store.queues.get(queue, ()) if expires_at > now)
        if live >= capacity:
            return False
        await asyncio.sleep(0)  # the round trip between the count and the insert
        return await super().send(queue, payload, expiry=expiry, capacity=2**62)


_loop_stores: dict[tuple[int, asyncio.AbstractEventLoop], MemoryStore] = {}


class PerLoopStore(MemoryBackend):
    """Each event loop gets its own store: what one ``async_to_sync`` call stores, the next
    never sees."""

    def __init__(self, store: MemoryStore) -> None:
        key = (id(store), asyncio.get_running_loop())
        super().__init__(_loop_stores.setdefault(key, MemoryStore()))


# -- sequences and id sources -----------------------------------------------------------


class OrderByExpiry(MemoryBackend):
    """Orders each queue by expiry time (``ORDER BY expires_at``) instead of arrival."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        stored = await super().send(queue, payload, expiry=expiry, capacity=capacity)
        with self._store.lock:
            items = self._store.queues.get(queue)
            if items:
                ordered = sorted(items, key=lambda entry: entry[0])
                items.clear()
                items.extend(ordered)
        return stored


class PerWriterSequence(MemoryBackend):
    """Orders by a sequence number each writer keeps for itself (a per-connection counter)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self._seq = itertools.count()

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        seqs: dict[bytes, int] = self._store.__dict__.setdefault("seqs", {})
        seqs[payload] = next(self._seq)
        stored = await super().send(queue, payload, expiry=expiry, capacity=capacity)
        with self._store.lock:
            items = self._store.queues.get(queue)
            if items:
                ordered = sorted(items, key=lambda entry: seqs.get(entry[1], 0))
                items.clear()
                items.extend(ordered)
        return stored


class MillisecondIds(MemoryBackend):
    """Message ids from the clock in milliseconds: a second send within 1 ms replaces the first."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        ids: dict[tuple[str, int], bytes] = self._store.__dict__.setdefault("ids", {})
        key = (queue, int(time.time() * 1000))
        stored = await super().send(queue, payload, expiry=expiry, capacity=capacity)
        if stored:
            with self._store.lock:
                old = ids.get(key)
                items = self._store.queues.get(queue)
                if old is not None and items:
                    kept = [entry for entry in items if entry[1] != old]
                    items.clear()
                    items.extend(kept)
                ids[key] = payload
        return stored


# -- the layer API: rules the core keeps for every backend -------------------------------


class CancelledWaitStillPops(MemoryBackend):
    """A receive cancelled while waiting still pops the next message and drops it (a
    blocking pop left running on the server after its client gave up)."""

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        try:
            return await super().receive(queue, timeout=timeout, limit=limit)
        except asyncio.CancelledError:
            ghosts: dict[str, int] = self._store.__dict__.setdefault("ghosts", {})
            ghosts[queue] = ghosts.get(queue, 0) + 1
            raise

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        ghosts: dict[str, int] = self._store.__dict__.setdefault("ghosts", {})
        if ghosts.get(queue):
            ghosts[queue] -= 1
            return True  # taken by the abandoned pop, never delivered
        return await super().send(queue, payload, expiry=expiry, capacity=capacity)


class ExpiryAsMilliseconds(MemoryBackend):
    """Reads ``expiry`` as milliseconds: messages expire a thousand times too soon."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        return await super().send(queue, payload, expiry=expiry / 1000, capacity=capacity)


class UnknownInboxRefused(MemoryBackend):
    """Refuses sends to an inbox no reader has opened yet (a topic that must exist first)."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        opened: set[str] = self._store.__dict__.setdefault("opened", set())
        if queue.endswith("!") and queue not in opened:
            raise BackendError(f"no such inbox {queue!r}")
        return await super().send(queue, payload, expiry=expiry, capacity=capacity)

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        self._store.__dict__.setdefault("opened", set()).add(queue)
        return await super().receive(queue, timeout=timeout, limit=limit)


class UnknownGroupRaises(MemoryBackend):
    """``group_channels`` of a group that was never created raises KeyError."""

    async def group_channels(self, group: str) -> list[str]:
        if group not in self._store.groups:
            raise KeyError(group)
        return await super().group_channels(group)


class ValidationSkipped(ChannelLayer):
    """Serializes whatever it is given: bad messages are stored instead of refused."""

    def _encode(self, message: dict[str, Any]) -> bytes:
        try:
            return self._serializer.dumps(message)
        except Exception:
            return self._serializer.dumps({"unserializable": repr(message)})


class GroupNamesUnchecked(ChannelLayer):
    """Checks channel names but passes group names to the store unchecked."""

    async def group_add(self, group: str, channel: str) -> None:
        require_valid_channel_name(channel)
        backend = await self._state().ready()
        await backend.group_add(group, channel, expiry=self.group_expiry)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if isinstance(group, str) and not valid_group_name(group):
            backend = await self._state().ready()
            await backend.group_channels(group)
            return
        await super().group_send(group, message)


class CapacityRegexFullMatch(ChannelLayer):
    """Applies ``channel_capacity`` regexes with ``fullmatch``: a prefix pattern never matches."""

    def get_capacity(self, channel: str) -> int:
        for pattern, value in self.channel_capacity:
            if pattern.fullmatch(channel):
                return value
        return self.capacity


class SendReturnsBeforeStoring(ChannelLayer):
    """``send`` hands the message to a background task and returns at once."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        require_valid_channel_name(channel)
        pending: set[asyncio.Task[None]] = self.__dict__.setdefault("pending", set())
        task = asyncio.ensure_future(super().send(channel, message))
        pending.add(task)
        task.add_done_callback(pending.discard)


class ReplyNamesFromClock(ChannelLayer):
    """Reply channel names end in the clock's milliseconds: names made together collide."""

    async def new_channel(self, prefix: str = "specific.") -> str:
        name = await super().new_channel(prefix)
        return name[: name.index("!") + 1] + str(int(time.time() * 1000))


class ReceiveDoesNotWait(ChannelLayer):
    """``receive`` polls once and gives up (a ``receive_nowait``) instead of waiting."""

    async def receive(self, channel: str) -> dict[str, Any]:
        async with asyncio.timeout(0.02):
            return await super().receive(channel)


class GroupExpiryOptionIgnored(ChannelLayer):
    """Drops the ``group_expiry`` option: memberships last Channels' default of a day."""

    def __init__(self, **options: Any) -> None:
        options.pop("group_expiry", None)
        super().__init__(**options)


class AcloseAssumesUse(ChannelLayer):
    """``aclose`` assumes the layer was used in this event loop (KeyError otherwise)."""

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        if loop not in self._states and not self.__dict__.get("closed_once"):
            raise KeyError("no state for this event loop")
        self.__dict__["closed_once"] = True
        await super().aclose()


class AcloseLeavesWaiters(ChannelLayer):
    """``aclose`` forgets the loop's state without failing the receives waiting on it."""

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._states_lock:
            self._states.pop(loop, None)


class _BufferRestartsExpiry(LoopState):
    def dispatch(self, queue: str, payloads: list[bytes]) -> None:
        # Rewrap each payload with a fresh deadline: its local expiry starts again.
        fresh = time.time() + self.expiry
        super().dispatch(
            queue, [local.pack(t, b, fresh) for t, _, b in map(local.unpack, payloads)]
        )


class BufferRestartsExpiry(ChannelLayer):
    """A message taken into the local buffer gets a full expiry again from that moment."""

    _loop_state_class = _BufferRestartsExpiry


class _NoDeadline(LoopState):
    def open_envelope(self, payload: bytes) -> tuple[list[str] | None, float, bytes]:
        targets, _, body = local.unpack(payload)
        return targets, math.inf, body


class DeliversExpired(ChannelLayer):
    """Delivers whatever the store returns, without checking the message's deadline."""

    _loop_state_class = _NoDeadline


class _KeepsHeldOnClose(LoopState):
    async def give_back(self, queue: str, *, keep: int) -> None:
        if not self.closing:
            await super().give_back(queue, keep=keep)


class CloseKeepsHeld(ChannelLayer):
    """A closing layer keeps what it prefetched for normal channels: it leaves with it."""

    _loop_state_class = _KeepsHeldOnClose


class _GivesBackFirst(LoopState):
    def put_back(self, channel: str, queue: str, item: Item) -> None:
        super().put_back(channel, queue, (item[0], item[1]))  # its place in line forgotten


class GivesBackFirst(ChannelLayer):
    """A message a cancelled consumer had been handed goes back first in line, not to its
    place: consumers cancelled together give theirs back in reverse order."""

    _loop_state_class = _GivesBackFirst


class ExpiresOnlyAtHead(MemoryBackend):
    """Capacity counts expired messages queued behind a live one (only the head is trimmed)."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        store = self._store
        with store.lock:
            items = store.queues.get(queue)
            now = time.monotonic()
            while items and items[0][0] <= now:
                items.popleft()
            if items is not None and len(items) >= capacity:
                return False
        return await super().send(queue, payload, expiry=expiry, capacity=capacity)


class SweepsByLastExpiry(MemoryBackend):
    """After each write, drops the oldest-written queue once its last message expired."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        stored = await super().send(queue, payload, expiry=expiry, capacity=capacity)
        store = self._store
        with store.lock:
            if store.queues:
                name, items = next(iter(store.queues.items()))
                if items and items[-1][0] <= time.monotonic():
                    del store.queues[name]
        return stored


class RestoreAtTail(MemoryBackend):
    """Gives messages back behind everything queued instead of at the head."""

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        for payload, expiry in payloads:
            await self.send(queue, payload, expiry=expiry, capacity=1 << 30)
        return True


class _UnboundedHub(Hub):
    def mailbox(self, channel: str, queue: str) -> Mailbox:
        box = super().mailbox(channel, queue)
        if box.items.maxlen is not None:
            box.items = deque(box.items)
        return box


class UnboundedLocalBuffer(ChannelLayer):
    """The local buffer of a channel has no bound: unread reply channels grow without limit."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._hub = _UnboundedHub(self.get_capacity)


# -- several processes (wrappers of the SQLite backend, reachable by URL) ----------------
#
# Worker processes build their layer from a URL whose scheme is a dotted path to the
# class (``broken.sqliteracytake:////tmp/x.db``); URL schemes are lower-case, hence the
# lower-case aliases below.


class SqliteRacyTake(SqliteBackend):
    """Selects the oldest rows, then deletes them in a second statement: two processes
    can both return the same row."""

    async def _take_kept(self, conn: Any, queue: str, limit: int) -> list[Any]:
        return await self._take_rows(conn, queue, limit)

    async def _take_rows(self, conn: Any, queue: str, limit: int) -> list[Any]:
        rows = await self._rows(conn, _sql.SELECT_OLDEST, (queue, time.time(), limit))
        if rows:
            await asyncio.sleep(0.002)  # the round trip between the select and the delete
            await self._run(conn, _sql.delete_ids(len(rows)), [r[0] for r in rows])
        return [(expires_at, payload) for _, expires_at, payload in rows]


class SqliteCapacityNotAtomic(SqliteBackend):
    """Counts the queue in one statement and inserts in another: processes overfill it."""

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        conn = self._connection()
        now = time.time()
        rows = await self._rows(
            conn,
            "SELECT count(*) FROM layers_messages WHERE queue = ? AND expires_at > ?",
            (queue, now),
        )
        if rows[0][0] >= capacity:
            return False
        await asyncio.sleep(0.002)
        return await super().send(queue, payload, expiry=expiry, capacity=2**62)


class SqliteInboxWithoutClientId(SqliteBackend):
    """Inbox keys drop the client id (``specific.ID!`` -> ``specific.!``): every process
    reads one inbox and takes the others' reply messages."""

    @staticmethod
    def _key(queue: str) -> str:
        return queue.split(".")[0] + ".!" if queue.endswith("!") else queue

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        return await super().send(self._key(queue), payload, expiry=expiry, capacity=capacity)

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:
        return await super().send_many(
            [Put(self._key(p.queue), p.payload, p.expiry, p.capacity) for p in puts]
        )

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        return await super().receive(self._key(queue), timeout=timeout, limit=limit)


sqliteracytake = SqliteRacyTake
sqliterestoreloses = SqliteRestoreLoses
sqlitelayerbackend = SqliteLayerBackend
sqlitecapacitynotatomic = SqliteCapacityNotAtomic
sqliteinboxwithoutclientid = SqliteInboxWithoutClientId


@dataclass(frozen=True)
class Broken:
    """One catalogue entry: its kind, the defect, the classes that carry it and the rules
    of the suite it must fail (each of them; ``test_catalogue.py`` checks)."""

    kind: str
    defect: str
    backend: type[Backend] = MemoryBackend
    layer: type[ChannelLayer] = ChannelLayer
    rules: tuple[str, ...] = ()
    #: The defect is a race between threads that shows in some runs, not all: a rule
    #: that misses it runs again, up to ``RACY_RUNS`` runs in all (``test_catalogue.py``),
    #: and the report says how many it took.
    racy: bool = False


def _entry(kind: str, defect: str, cls: type, *rules: str) -> Broken:
    if issubclass(cls, ChannelLayer):
        return Broken(kind, defect, layer=cls, rules=rules)
    return Broken(kind, defect, backend=cls, rules=rules)


CATALOGUE: dict[str, Broken] = {
    # at-most-once and order
    "duplicate-always": _entry("delivery", "every message delivered twice", DuplicateAlways),
    "duplicate-concurrent": _entry(
        "delivery", "duplicates only with concurrent readers", DuplicateUnderConcurrency
    ),
    "duplicate-1-in-1000": _entry(
        "delivery", "one message in 1,000 reaches two readers", DuplicateOneInAThousand
    ),
    "lifo": _entry("delivery", "newest message first", Lifo),
    "reorder-under-load": _entry(
        "delivery", "reorders when more than 50 are queued", ReorderUnderLoad
    ),
    "lose-on-cancel": _entry(
        "delivery", "a cancelled receive loses a message", LosesMessageWhenCancelled
    ),
    "loses-pop-when-loop-ends": _entry(
        "delivery", "a pop in flight when its event loop ends is lost", LosesPopWhenLoopEnds
    ),
    "loses-give-back-when-loop-ends": _entry(
        "delivery",
        "a restore cancelled before it stored raises instead of returning False",
        LosesGiveBackWhenLoopEnds,
    ),
    "bytes-become-str": _entry("delivery", "bytes turned into str", BytesBecomeStr),
    # expiry semantics
    "expiry-ignored": _entry("expiry", "messages never expire", ExpiryIgnored),
    "expiry-per-queue": _entry("expiry", "a send renews the whole queue's expiry", ExpiryPerQueue),
    "expiry-from-queue-creation": _entry(
        "expiry", "the first message's expiry is the queue's", ExpiryFromQueueCreation
    ),
    "expiry-whole-seconds": _entry(
        "expiry", "expiry truncated to whole seconds", ExpiryWholeSeconds
    ),
    "expiry-rounded-up": _entry("expiry", "expiry rounded up to whole seconds", ExpiryRoundedUp),
    "reply-inbox-never-expires": _entry(
        "expiry", "reply inboxes stored without expiry", ReplyInboxNeverExpires
    ),
    "group-expiry-ignored": _entry("expiry", "memberships never expire", GroupExpiryIgnored),
    "group-add-no-refresh": _entry(
        "expiry", "group_add does not refresh expiry", GroupAddDoesNotRefresh
    ),
    "group-expiry-per-group": _entry(
        "expiry", "a group_add renews every member", GroupExpiryPerGroup
    ),
    "group-expiry-from-creation": _entry(
        "expiry", "members expire with the group's first add", GroupExpiryFromCreation
    ),
    "group-add-refreshes-other-groups": _entry(
        "expiry", "an add renews the channel in every group", GroupAddRefreshesOtherGroups
    ),
    # group bookkeeping
    "group-add-duplicates": _entry(
        "groups", "group_add duplicates a member", GroupAddNotIdempotent
    ),
    "group-discard-raises": _entry(
        "groups", "group_discard of a non-member raises", GroupDiscardNonMemberRaises
    ),
    "group-discard-every-group": _entry(
        "groups", "group_discard removes the channel from every group", DiscardFromEveryGroup
    ),
    "group-discard-whole-group": _entry(
        "groups", "group_discard deletes the whole group", DiscardWholeGroup
    ),
    "group-send-first-member-per-inbox": _entry(
        "groups", "group_send reaches one reply channel per inbox", GroupSendFirstMemberPerInbox
    ),
    "group-send-merges-inboxes": _entry(
        "groups", "group_send sends all reply members through one inbox", GroupSendMergesInboxes
    ),
    "one-group-per-channel": _entry(
        "groups", "a channel is in one group at most", OneGroupPerChannel
    ),
    "group-send-raises-full": _entry(
        "groups", "group_send raises ChannelFull (send_many raises)", GroupSendRaisesChannelFull
    ),
    # names as storage keys
    "relaxed-names": _entry(
        "names", "names over 100 characters or with two ! accepted", RelaxedNames
    ),
    "trailing-newline-accepted": _entry(
        "names", "a name with a trailing newline accepted", TrailingNewlineAccepted
    ),
    "case-insensitive-keys": _entry(
        "names", "keys compared case-insensitively", CaseInsensitiveKeys
    ),
    "like-wildcard-keys": _entry("names", "names matched with SQL LIKE", LikeWildcardKeys),
    "regex-dot-keys": _entry("names", "names matched as regular expressions", RegexDotKeys),
    "prefix-matched-keys": _entry("names", "names matched by prefix", PrefixMatchedKeys),
    "truncated-keys": _entry("names", "keys cut to 64 characters", TruncatedKeys),
    "bang-dropped-from-keys": _entry("names", "! removed from keys", BangDroppedFromKeys),
    "groups-share-channel-keys": _entry(
        "names", "a group overwrites the queue of its name", GroupsShareChannelKeys
    ),
    # scale and completeness
    "capacity-ignored": _entry("scale", "channels never fill up", CapacityIgnored),
    "receive-ignores-limit": _entry(
        "scale", "a receive takes the whole queue", ReceiveIgnoresLimit
    ),
    "storage-never-shrinks": _entry(
        "scale", "expired channels are never swept", StorageNeverShrinks
    ),
    "wakeups-lost": _entry("scale", "a send never wakes a waiting receive", WakeupsLost),
    "groups-never-swept": _entry("scale", "expired groups are never swept", GroupsNeverSwept),
    "expired-head-blocks": _entry(
        "scale", "an expired page of rows reads as an empty queue", ExpiredHeadBlocks
    ),
    "group-channels-first-page": _entry(
        "scale", "group_channels returns the first 100 members", GroupChannelsFirstPage
    ),
    "flush-first-page": _entry("scale", "flush deletes the first 100 keys", FlushFirstPage),
    "flush-leaves-groups": _entry("scale", "flush keeps groups", FlushLeavesGroups),
    "flush-leaves-messages": _entry("scale", "flush keeps messages", FlushLeavesMessages),
    # concurrency and isolation
    "capacity-check-not-atomic": _entry(
        "isolation", "capacity counted, then the insert in a second step", CapacityCheckNotAtomic
    ),
    "per-loop-store": _entry("isolation", "a store private to one event loop", PerLoopStore),
    "leaks-event-loops": _entry(
        "isolation", "state of closed event loops is kept", LeaksEventLoops
    ),
    "reply-readable-by-others": _entry(
        "isolation",
        "a reply channel is readable by another layer instance",
        ReplyChannelReadableByOthers,
    ),
    "shared-reply-inbox": _entry(
        "isolation", "layer instances share one reply inbox", SharedReplyInbox
    ),
    "hands-past-queued": _entry(
        "delivery",
        "a send goes straight to a receive of its own layer, past what others stored",
        HandsPastQueued,
    ),
    "sqlite-racy-take": _entry(
        "isolation", "SQLite: select, then delete (two processes take one row)", SqliteRacyTake
    ),
    "sqlite-capacity-not-atomic": _entry(
        "isolation", "SQLite: count, then insert (processes overfill)", SqliteCapacityNotAtomic
    ),
    "sqlite-inbox-without-client-id": _entry(
        "isolation", "SQLite: every process reads one inbox", SqliteInboxWithoutClientId
    ),
    # the layer API
    "cancelled-wait-still-pops": _entry(
        "api", "a cancelled receive's pop still takes the next message", CancelledWaitStillPops
    ),
    "expiry-as-milliseconds": _entry("api", "expiry read as milliseconds", ExpiryAsMilliseconds),
    "unknown-inbox-refused": _entry(
        "api", "sends to an inbox nobody opened yet are refused", UnknownInboxRefused
    ),
    "unknown-group-raises": _entry("api", "an unknown group raises KeyError", UnknownGroupRaises),
    "validation-skipped": _entry(
        "api", "bad messages stored instead of refused", ValidationSkipped
    ),
    "group-names-unchecked": _entry("api", "group names not checked", GroupNamesUnchecked),
    "capacity-regex-fullmatch": _entry(
        "api", "channel_capacity regexes must match the whole name", CapacityRegexFullMatch
    ),
    "send-returns-before-storing": _entry(
        "api", "send returns before the message is stored", SendReturnsBeforeStoring
    ),
    "receive-does-not-wait": _entry("api", "receive gives up at once", ReceiveDoesNotWait),
    "group-expiry-option-ignored": _entry(
        "api", "the group_expiry option is ignored", GroupExpiryOptionIgnored
    ),
    "aclose-assumes-use": _entry("api", "aclose of an unused layer raises", AcloseAssumesUse),
    "aclose-leaves-waiters": _entry(
        "api", "aclose leaves waiting receives hanging", AcloseLeavesWaiters
    ),
    "buffer-restarts-expiry": _entry(
        "expiry", "a locally buffered message gets a full expiry again", BufferRestartsExpiry
    ),
    "delivers-expired": Broken(
        "expiry",
        "the store keeps and the layer delivers expired messages",
        backend=ExpiryIgnored,
        layer=DeliversExpired,
    ),
    "unbounded-local-buffer": _entry(
        "scale", "local buffers of unread channels grow without bound", UnboundedLocalBuffer
    ),
    "expires-only-at-head": _entry(
        "expiry", "capacity counts expired messages behind a live one", ExpiresOnlyAtHead
    ),
    "sweeps-by-last-expiry": _entry(
        "expiry", "a queue whose last message expired is dropped whole", SweepsByLastExpiry
    ),
    "close-keeps-held": _entry(
        "delivery", "a closing layer keeps the messages it prefetched", CloseKeepsHeld
    ),
    "restore-at-tail": _entry(
        "delivery", "given-back messages go behind the queue, not at its head", RestoreAtTail
    ),
    "gives-back-first": _entry(
        "delivery", "consumers cancelled together give messages back reversed", GivesBackFirst
    ),
    # sequences and id sources
    "reply-names-from-clock": _entry(
        "sequences", "reply channel names from the millisecond clock", ReplyNamesFromClock
    ),
    "order-by-expiry": _entry("sequences", "queues ordered by expiry time", OrderByExpiry),
    "per-writer-sequence": _entry(
        "sequences", "queues ordered by a per-writer counter", PerWriterSequence
    ),
    "millisecond-ids": _entry(
        "sequences", "ids from the millisecond clock collide", MillisecondIds
    ),
    # receive path and give-backs (the loss rules)
    "demand-leaks-on-cancel": Broken(
        "delivery",
        "a receive cancelled by a timeout stays counted: the process pops for nobody",
        backend=SqliteLayerBackend,
        layer=LeaksDemandOnCancel,
    ),
    "restore-loses": _entry(
        "delivery", "restore says it gave messages back and drops them", SqliteRestoreLoses
    ),
    "mailboxes-per-loop": _entry(
        "isolation", "each event loop has mailboxes of its own", MailboxesPerLoop
    ),
    "hoards-per-loop": _entry(
        "isolation", "a loop pops whole batches into mailboxes of its own", HoardsPerLoop
    ),
    "loops-pop-at-once": Broken(
        "isolation",
        "event loops pop one queue at once: deliveries overtake each other",
        backend=SqliteLayerBackend,
        layer=LoopsPopAtOnce,
        racy=True,
    ),
    # statistics
    "statistics-count-expired": _entry(
        "api", "statistics count expired messages", StatisticsCountExpired
    ),
    "statistics-off-by-one": _entry(
        "api", "statistics add one to each queue and lose the oldest age", StatisticsOldestLast
    ),
    "statistics-capped": _entry(
        "api", "statistics report at most two pending messages", StatisticsCapped
    ),
    "statistics-discarded-members": _entry(
        "api", "statistics count discarded group members", StatisticsGroupsWithExpired
    ),
}

#: The rules each entry must fail (at least these; an entry may fail others too).
RULES: dict[str, tuple[str, ...]] = {
    "duplicate-always": (
        "test_prefetching_processes_receive_each_message_once_in_order",
        "test_send_then_receive",
        "test_async_with_and_aclose_twice",
        "test_reply_channels_are_separate",
    ),
    "duplicate-concurrent": ("test_at_most_once_many_readers_one_channel",),
    "loses-pop-when-loop-ends": (
        "test_event_loops_ending_mid_receive_lose_nothing",
        "test_event_loops_ending_mid_reply_receive_lose_nothing",
    ),
    "loses-give-back-when-loop-ends": ("test_event_loops_ending_mid_give_back_lose_nothing",),
    "duplicate-1-in-1000": ("test_at_most_once_many_readers_one_channel",),
    "lifo": (
        "test_fifo_one_writer_one_reader",
        "test_cancellation_storm_reply_channel",
        "test_other_layer_never_reads_my_reply_messages",
        "test_receiving_frees_capacity",
    ),
    "reorder-under-load": (
        "test_fifo_under_load_with_other_traffic",
        "test_cancellation_storm_plain_channel",
        "test_cancelled_send_happened_or_not",
        "test_group_send_keeps_order",
        "test_fifo_per_channel_when_interleaved",
    ),
    # The storms catch it only when a random cancel lands in the one-turn window (a CI run
    # missed it); the stepped rules visit that window on every run.
    "lose-on-cancel": (
        "test_receive_cancelled_at_every_step_loses_nothing",
        "test_reply_receive_cancelled_at_every_step_loses_nothing",
    ),
    "bytes-become-str": (
        "test_every_asgi_value_type_round_trips",
        "test_group_message_values_round_trip",
        "test_one_megabyte_message",
    ),
    "expiry-ignored": (
        "test_expired_messages_free_capacity",
        "test_expiry_counts_from_send_not_from_receive",
    ),
    "expiry-per-queue": ("test_expiry_is_per_message_on_a_busy_channel",),
    "expiry-from-queue-creation": (
        "test_expiry_is_per_message_on_a_busy_channel",
        "test_expiry_counts_from_send_not_from_receive",
    ),
    "expiry-whole-seconds": ("test_fractional_expiry_is_kept",),
    "expiry-rounded-up": ("test_fractional_expiry_is_kept",),
    "reply-inbox-never-expires": ("test_reply_channel_messages_expire_and_free_capacity",),
    "group-expiry-ignored": ("test_group_membership_expires",),
    "group-add-no-refresh": ("test_group_add_refreshes_expiry",),
    "group-expiry-per-group": ("test_group_membership_expires_per_member",),
    "group-expiry-from-creation": (
        "test_group_membership_expires_per_member",
        "test_group_add_refreshes_expiry",
    ),
    "group-add-refreshes-other-groups": ("test_group_membership_expires_per_member",),
    "group-add-duplicates": ("test_group_add_is_idempotent",),
    "group-discard-raises": (
        "test_group_discard_of_non_member_is_a_no_op",
        "test_random_operations_match_the_model",
    ),
    "group-discard-every-group": ("test_group_discard_touches_only_the_named_membership",),
    "group-discard-whole-group": (
        "test_group_discard_removes_member",
        "test_large_group_reaches_every_member_once",
    ),
    "group-send-first-member-per-inbox": ("test_group_send_reaches_every_member",),
    "group-send-merges-inboxes": ("test_group_send_reaches_members_of_other_layers",),
    "one-group-per-channel": ("test_groups_are_independent",),
    "group-send-raises-full": (
        "test_group_send_skips_full_members",
        "test_group_send_honours_channel_capacity",
        "test_group_send_to_a_full_reply_inbox",
    ),
    "relaxed-names": (
        "test_bad_channel_names_raise_type_error",
        "test_hundred_character_names_accepted",
    ),
    "trailing-newline-accepted": ("test_names_with_a_trailing_newline_are_rejected",),
    "case-insensitive-keys": ("test_names_differing_only_in_case_are_distinct",),
    "like-wildcard-keys": ("test_names_differing_in_a_wildcard_character_are_distinct",),
    "regex-dot-keys": ("test_names_differing_in_a_wildcard_character_are_distinct",),
    "prefix-matched-keys": ("test_names_differing_in_a_wildcard_character_are_distinct",),
    "truncated-keys": ("test_long_names_differing_in_their_last_character_are_distinct",),
    "bang-dropped-from-keys": ("test_reply_inbox_is_not_the_channel_without_its_bang",),
    "groups-share-channel-keys": ("test_a_group_and_a_channel_of_one_name_are_independent",),
    "capacity-ignored": (
        "test_send_raises_channel_full_at_capacity",
        "test_channel_capacity_glob_first_match_wins",
        "test_reply_channels_of_one_inbox_share_capacity",
        "test_capacity_holds_under_concurrent_senders",
        "test_capacity_holds_across_event_loops",
    ),
    "receive-ignores-limit": ("test_receive_takes_no_more_than_it_hands_out",),
    "storage-never-shrinks": ("test_unread_distinct_channels_do_not_grow_memory",),
    "wakeups-lost": ("test_a_waiting_receive_is_woken_by_a_send",),
    "groups-never-swept": ("test_expired_memberships_of_distinct_groups_do_not_grow_memory",),
    "expired-head-blocks": ("test_live_message_behind_an_expired_backlog",),
    "group-channels-first-page": ("test_large_group_reaches_every_member_once",),
    "flush-first-page": ("test_flush_empties_hundreds_of_channels_and_groups",),
    "flush-leaves-groups": ("test_flush_empties_groups",),
    "flush-leaves-messages": (
        "test_flush_empties_channels",
        "test_flush_frees_capacity",
        "test_flush_seen_by_other_layers",
    ),
    "unbounded-local-buffer": ("test_unread_reply_channels_stay_bounded",),
    "capacity-check-not-atomic": ("test_capacity_holds_under_concurrent_senders",),
    "per-loop-store": ("test_every_event_loop_sees_one_store",),
    "leaks-event-loops": ("test_async_to_sync_many_times_leaks_nothing",),
    "reply-readable-by-others": ("test_receive_on_another_layers_reply_channel_raises",),
    "shared-reply-inbox": ("test_receive_on_another_layers_reply_channel_raises",),
    "hands-past-queued": ("test_fifo_across_writers_to_a_waiting_reader",),
    "sqlite-racy-take": ("test_at_most_once_across_processes",),
    "sqlite-capacity-not-atomic": ("test_capacity_holds_across_processes",),
    "sqlite-inbox-without-client-id": ("test_reply_channel_not_readable_from_another_process",),
    "order-by-expiry": ("test_order_is_arrival_order_across_writers_and_expiries",),
    "per-writer-sequence": ("test_order_is_arrival_order_across_writers_and_expiries",),
    "millisecond-ids": ("test_fifo_one_writer_one_reader",),
    "reply-names-from-clock": ("test_new_channel_names",),
    "cancelled-wait-still-pops": ("test_cancelled_receive_loses_nothing",),
    "expiry-as-milliseconds": ("test_message_received_before_expiry",),
    "unknown-inbox-refused": (
        "test_reply_channel_of_unknown_layer_accepts_sends",
        "test_reply_channel_round_trip",
    ),
    "unknown-group-raises": ("test_group_send_to_empty_group",),
    "validation-skipped": (
        "test_bad_messages_raise_invalid_message",
        "test_bad_group_messages_raise_invalid_message",
    ),
    "group-names-unchecked": ("test_group_names_are_checked",),
    "capacity-regex-fullmatch": ("test_channel_capacity_regex",),
    "send-returns-before-storing": ("test_messages_are_copies",),
    "receive-does-not-wait": ("test_receive_waits_for_a_later_send",),
    "group-expiry-option-ignored": ("test_channels_api_shape",),
    "aclose-assumes-use": ("test_aclose_without_use",),
    "aclose-leaves-waiters": ("test_aclose_wakes_waiting_receivers",),
    "buffer-restarts-expiry": ("test_reply_message_expires_even_when_buffered_locally",),
    "delivers-expired": (
        "test_held_messages_expire_on_time",
        "test_message_expires_unread",
        "test_reply_channel_message_expires",
    ),
    "demand-leaks-on-cancel": ("test_timed_out_receive_leaves_no_demand",),
    "expires-only-at-head": ("test_an_expired_message_behind_a_live_one_frees_its_place",),
    "sweeps-by-last-expiry": ("test_an_expired_message_behind_a_live_one_frees_its_place",),
    "close-keeps-held": (
        "test_held_messages_go_back_in_order_when_a_prefetching_layer_closes",
        "test_cancelled_receives_lose_no_held_message",
    ),
    "gives-back-first": ("test_receives_cancelled_together_keep_send_order",),
    "restore-at-tail": (
        "test_held_messages_go_back_in_order_when_a_prefetching_layer_closes",
        "test_cancelled_receives_lose_no_held_message",
    ),
    "restore-loses": (
        "test_held_messages_go_back_in_order_when_a_prefetching_layer_closes",
        "test_cancelled_receives_lose_no_held_message",
        "test_polling_consumers_hoard_nothing",
        "test_timed_out_receive_leaves_no_demand",
        "test_polling_process_exits_and_loses_nothing",
        "test_randomized_processes_never_duplicate_and_lose_only_to_kills",
    ),
    "mailboxes-per-loop": (
        "test_reply_messages_survive_the_event_loop_that_took_them",
        "test_reply_channels_received_from_concurrent_event_loops",
    ),
    "hoards-per-loop": ("test_normal_messages_survive_the_event_loop_that_took_them",),
    "loops-pop-at-once": (
        "test_reply_order_holds_across_concurrent_event_loops",
        "test_competing_event_loops_each_receive_in_order",
        "test_sync_threads_receiving_reply_channels_lose_nothing",
    ),
    "statistics-count-expired": ("test_statistics_never_count_expired_messages",),
    "statistics-off-by-one": ("test_statistics_count_pending_messages_and_their_age",),
    "statistics-capped": ("test_statistics_report_full_channels",),
    "statistics-discarded-members": ("test_statistics_report_group_sizes",),
}

CATALOGUE = {name: replace(entry, rules=RULES[name]) for name, entry in CATALOGUE.items()}


def layer_url(name: str, folder: str) -> str | None:
    """The URL worker processes use for entry ``name`` (None for an in-process entry)."""
    if name == "correct" or not issubclass(CATALOGUE[name].backend, SqliteBackend):
        return None
    alias = CATALOGUE[name].backend.__name__.lower()
    assert globals()[alias] is CATALOGUE[name].backend
    return f"broken.{alias}:///{folder}/store.db"


def make_factory(name: str, folder: str) -> Any:
    """Return a layer factory for catalogue entry ``name``: all its layers share one store
    (one ``MemoryStore``, or one SQLite file in ``folder``)."""
    entry = CATALOGUE[name] if name != "correct" else Broken("control", "none")
    url = layer_url(name, folder)
    store = MemoryStore()

    backend = entry.backend
    if name != "correct" and getattr(backend, "in_process", False):
        # Serialize as every out-of-process store does, so each defect acts on byte
        # payloads as a plugin's would (an in-process payload is the message copy
        # itself, which a broken backend could hand to two receivers at once).
        backend = type(backend.__name__, (backend,), {"in_process": False})

    def factory(**options: Any) -> ChannelLayer:
        if url is not None:
            return entry.layer(url=url, **options)
        layer = entry.layer(backend=backend, **options)
        layer._backend_options = {"store": store}
        return layer

    return factory
