"""Broken receive paths and give-backs, for the catalogue (``broken.py`` lists them).

Each carries one defect of the kind the loss rules (``test_loss``, ``test_chaos``) exist
to catch: demand left behind by a cancelled receive, mailboxes private to one event
loop, and a backend whose ``restore`` loses what it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from layers.backends.memory import MemoryBackend
from layers.backends.sqlite.backend import SqliteBackend
from layers.core.layer import ChannelLayer
from layers.core.local import Hub, LoopState, Mailbox, Waiter


class _NeverWithdraws(Hub):
    def withdraw(self, box: Mailbox, waiter: Waiter) -> None:
        return None  # the waiter stays counted until a delivery finds it gone


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
