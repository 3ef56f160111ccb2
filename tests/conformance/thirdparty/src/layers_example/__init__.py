"""An example third-party backend: one process, a dict of deques, polling receive.

Features
    FIFO queues with monotonic-clock expiry, atomic capacity checks, expiring group
    membership, flush; queues and groups whose contents expired are swept on writes
    (a full scan at most every quarter second), so memory does not grow with every
    distinct name. Written from the ``Backend`` contract only, as a plugin author would.

Connection URL
    ``example://`` (registered through the ``layers.backends`` entry point group).

Options
    None.

Capabilities
    ``groups``, ``flush``. Not cross-process: layers share a store only when they
    share backend options (the conformance suite's default factory does that).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from layers import Backend, Capability

__all__ = ["ExampleBackend", "ExampleStore"]

_POLL = 0.002
_SWEEP_INTERVAL = 0.25


class ExampleStore:
    """State shared by the per-event-loop instances of one layer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[str, deque[tuple[float, bytes]]] = {}
        self.groups: dict[str, dict[str, float]] = {}
        self.next_sweep = 0.0

    def sweep(self, now: float) -> None:
        """Forget queues and groups whose contents all expired (call under the lock)."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + _SWEEP_INTERVAL
        # Senders may give one queue different expiries: a queue goes when all expired.
        expired = [n for n, items in self.queues.items() if all(t <= now for t, _ in items)]
        for name in expired:
            del self.queues[name]
        for name in [g for g, m in self.groups.items() if not m or max(m.values()) <= now]:
            del self.groups[name]


class ExampleBackend(Backend):
    """Stores payloads in an :class:`ExampleStore`; receive polls every 2 ms."""

    name = "example"
    capabilities = frozenset({Capability.GROUPS, Capability.FLUSH})

    def __init__(self, store: ExampleStore) -> None:
        self._store = store

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """``example://`` takes no options."""
        return {}

    @classmethod
    def prepare_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Create the store every per-loop instance of the layer shares."""
        return {"store": ExampleStore()}

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        """Append unless ``capacity`` unexpired payloads are queued."""
        now = time.monotonic()
        with self._store.lock:
            items = self._store.queues.setdefault(queue, deque())
            while items and items[0][0] <= now:
                items.popleft()
            if sum(1 for until, _ in items if until > now) >= capacity:
                return False
            items.append((now + expiry, payload))
            self._store.sweep(now)
            return True

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        """Pop up to ``limit`` unexpired payloads, polling until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            out: list[bytes] = []
            with self._store.lock:
                items = self._store.queues.get(queue)
                while items and len(out) < limit:
                    until, payload = items.popleft()
                    if until > now:
                        out.append(payload)
            if out or now >= deadline:
                return out
            await asyncio.sleep(min(_POLL, max(0.0, deadline - now)))

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        """Add or refresh a membership."""
        now = time.monotonic()
        with self._store.lock:
            self._store.groups.setdefault(group, {})[channel] = now + expiry
            self._store.sweep(now)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove a membership if present."""
        with self._store.lock:
            self._store.groups.get(group, {}).pop(channel, None)

    async def group_channels(self, group: str) -> list[str]:
        """Return the unexpired members."""
        now = time.monotonic()
        with self._store.lock:
            members = self._store.groups.get(group, {})
            return [channel for channel, until in members.items() if until > now]

    async def flush(self) -> None:
        """Empty every queue and group."""
        with self._store.lock:
            self._store.queues.clear()
            self._store.groups.clear()

    async def aclose(self) -> None:
        """Nothing to release."""
