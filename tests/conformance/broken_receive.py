"""Broken receive paths and give-backs, for the catalogue (``broken.py`` lists them).

Each carries one defect of the kind the loss rules (``test_loss``, ``test_chaos``) exist
to catch: demand left behind by a cancelled receive, mailboxes private to one event
loop, and a backend whose ``restore`` loses what it is given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from layers.backends.memory import MemoryBackend
from layers.backends.sqlite.backend import SqliteBackend
from layers.core.backend import BackendStatistics, QueueStatistics
from layers.core.layer import ChannelLayer
from layers.core.local import LoopState
from layers.core.mailboxes import Hub, Mailbox, Waiter
from layers.core.turns import Ticket, Turns


class _NeverWithdraws(Hub):
    def withdraw(self, box: Mailbox, waiter: Waiter) -> None:
        with self.lock:  # leaves the queue of waiters but stays counted as demand
            if waiter in box.waiters:
                box.waiters.remove(waiter)


class LeaksDemandOnCancel(ChannelLayer):
    """A receive cancelled by a timeout stays counted as demand: the process keeps
    popping that channel for a consumer that has gone (and holds what it pops)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._hub = _NeverWithdraws(self.get_capacity)


class _OwnMailboxes(LoopState):
    def __init__(self, hub: Hub, *args: Any, **kwargs: Any) -> None:
        super().__init__(Hub(hub.capacity_of), *args, **kwargs)


class MailboxesPerLoop(ChannelLayer):
    """Each event loop has its own mailboxes: a reply message one loop's reader took for
    another reply channel is stranded there (``async_to_sync`` never sees it)."""

    _loop_state_class = _OwnMailboxes


class _NoTurns(Turns):
    def enter(self, queue: str, loop: Any) -> Ticket:
        return Ticket(queue, loop)  # every loop pops at once

    def leave(self, ticket: Ticket) -> None:
        pass


class LoopsPopAtOnce(ChannelLayer):
    """Every event loop pops a queue whenever it likes: two loops' pops of one queue
    deliver in whichever order their threads run (a consumer gets 4 before 3)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._hub.turns = _NoTurns()


class MemoryRestoreLoses(MemoryBackend):
    """Says it gave messages back to the store, and drops them."""

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        return True


class SqliteRestoreLoses(SqliteBackend):
    """Says it gave messages back to the store, and drops them (reachable by URL)."""

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        return True


class SqliteLayerBackend(SqliteBackend):
    """The unmodified SQLite backend, for layer variants that need a store polled by a
    reader task (the memory backend serves receives inline)."""


class _TakesEverything(_OwnMailboxes):
    def _limit(self, queue: str, want: int) -> int:
        return 100  # pops whole batches for a single consumer, into its own loop


class HoardsPerLoop(ChannelLayer):
    """Each loop pops a whole batch of a normal channel into mailboxes of its own:
    the next ``async_to_sync`` call finds them gone."""

    _loop_state_class = _TakesEverything

    async def receive(self, channel: str) -> dict[str, Any]:
        queue = self._check_receivable(channel)  # the name and ownership checks
        state = self._state()
        state.hub.mailbox(channel, queue)
        return await state.receive(channel, queue)


class StatisticsCountExpired(MemoryBackend):
    """Statistics count expired messages as pending."""

    async def statistics(self) -> BackendStatistics:
        store = self._store
        now = time.monotonic()
        with store.lock:
            queues = [
                QueueStatistics(name, len(items), items[0][0] - now)
                for name, items in store.queues.items()
                if items
            ]
        return BackendStatistics(queues, {})


class StatisticsOldestLast(MemoryBackend):
    """Statistics report the age of the newest message, and queue sizes off by one."""

    async def statistics(self) -> BackendStatistics:
        stats = await super().statistics()
        queues = [QueueStatistics(q.queue, q.pending + 1, 0.0) for q in stats.queues]
        return BackendStatistics(queues, stats.groups)


class StatisticsGroupsWithExpired(MemoryBackend):
    """Statistics count every member a group ever had, discarded ones included."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self._ever: dict[str, set[str]] = {}

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        self._ever.setdefault(group, set()).add(channel)
        await super().group_add(group, channel, expiry=expiry)

    async def statistics(self) -> BackendStatistics:
        stats = await super().statistics()
        return BackendStatistics(stats.queues, {g: len(m) for g, m in self._ever.items()})


class StatisticsCapped(MemoryBackend):
    """Statistics never report more than two pending messages per channel."""

    async def statistics(self) -> BackendStatistics:
        stats = await super().statistics()
        queues = [QueueStatistics(q.queue, min(q.pending, 2), q.oldest_ttl) for q in stats.queues]
        return BackendStatistics(queues, stats.groups)
