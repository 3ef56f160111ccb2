"""Poll-only wake-ups between the backend instances of one process, from any event loop.

With ``poll_only`` no NOTIFY reaches a waiting claim, so a send would wait for the
next poll. Within one process that wait is needless: every instance on the same
database and schema (one per layer and event loop) registers its waiting claims here,
and a store wakes them, in their own loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["Registry", "registry"]


class Registry:
    """The claims of one process waiting on the queues of one database and schema."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[asyncio.Event, asyncio.AbstractEventLoop]] = {}

    def add(self, queue: str, event: asyncio.Event) -> None:
        """Register ``event`` (of the running loop) as waiting on ``queue``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._waiting.setdefault(queue, {})[event] = loop

    def discard(self, queue: str, event: asyncio.Event) -> None:
        with self._lock:
            events = self._waiting.get(queue)
            if events is not None:
                events.pop(event, None)
                if not events:
                    del self._waiting[queue]

    def wake(self, queue: str) -> None:
        """Set every event waiting on ``queue``, each in its own loop."""
        with self._lock:
            events = list(self._waiting.get(queue, {}).items())
        _set(events)

    def wake_all(self) -> None:
        """Set every waiting event (a group send: its members' queues are not known here)."""
        with self._lock:
            events = [pair for events in self._waiting.values() for pair in events.items()]
        _set(events)


def _set(events: list[tuple[asyncio.Event, asyncio.AbstractEventLoop]]) -> None:
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    for event, loop in events:
        if loop is here:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)


_registries: dict[tuple[str, str], Registry] = {}
_registries_lock = threading.Lock()


def registry(conninfo: str, schema: str) -> Registry:
    """The registry of the database ``conninfo`` names and ``schema``, made on first use."""
    with _registries_lock:
        found = _registries.get((conninfo, schema))
        if found is None:
            found = _registries[(conninfo, schema)] = Registry()
        return found
