"""Stopping the PostgreSQL backend's background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["stop"]


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait for its end, ignoring what it raises or returns.

    A cancellation of the caller while it waits is ignored too: the task is cancelled
    already, and closing paths must not be cut short half-way.
    """
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
