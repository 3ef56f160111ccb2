"""Wake-ups across event loops and threads, for backends that keep state in-process.

A layer may be used from several event loops at once (``async_to_sync`` runs each call
in a new loop, often in another thread). A backend whose store lives in this process
(the memory backend, the SQLite backend's in-process notifications) registers one
:data:`Waiter` per waiting call and wakes it with :func:`wake`, which resolves each
future in its own loop, thread-safely.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Waiter", "wake"]

#: A waiting call: its event loop and the future it awaits (resolved with None).
Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _set_none(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def wake(waiters: list[Waiter]) -> None:
    """Resolve each waiter's future in its own loop; waiters of closed loops are skipped."""
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, future in waiters:
        if loop is current:
            _set_none(future)
        else:
            # A closed loop raises RuntimeError; its waiter is gone with it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_none, future)
