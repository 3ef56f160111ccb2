"""Why a message for workers got no answer in time: the reason the interface server logs.

A request that times out (HTTP 504, a WebSocket closed unanswered) has two usual
causes, and the fix differs: no worker consumes the channel at all (none started, or
one started on another layer: another URL, a ``memory://`` layer in another process),
or a worker took the message and did not answer. The layer's statistics tell them
apart: messages still waiting on the channel mean nobody reads it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["Unanswered"]


class Unanswered:
    """Explains timeouts of one interface server, reading statistics sparingly.

    The store is read at most once per ``every`` seconds per channel (a server under
    load is not made to scan its store once per timed-out request); in between, the
    last explanation is reused. A read takes at most 2 s. Never raises: a failed or
    slow read gives a generic reason.
    """

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, tuple[float, str]] = {}

    async def why(self, layer: Any, channel: str) -> str:
        """One sentence: why nothing answered the message sent to ``channel``."""
        now = time.monotonic()
        last = self._last.get(channel)
        if last is not None and now - last[0] < self.every:
            return last[1]
        reason = await self._explain(layer, channel)
        self._last[channel] = (now, reason)
        return reason

    async def _explain(self, layer: Any, channel: str) -> str:
        from layers.core.backend import Capability

        unknown = (
            f"is a worker consuming {channel} on this same layer? "
            "(start one: layers worker ROUTING --url URL)"
        )
        if Capability.STATISTICS not in getattr(layer, "capabilities", ()):
            return unknown
        try:
            async with asyncio.timeout(2):
                stats = await layer.statistics()
        except Exception:  # the diagnosis must not fail the request's clean-up
            return unknown
        waiting = next((c for c in stats.channels if c.name == channel), None)
        if waiting is None or waiting.pending == 0:
            return (
                f"a worker took the {channel} message but sent no answer in time "
                "(see the worker's log; raise --timeout for slow answers)"
            )
        age = "" if waiting.oldest_age is None else f", the oldest for {waiting.oldest_age:.0f} s"
        return (
            f"{waiting.pending} {channel} message(s) wait unread{age}: no worker consumes "
            f"{channel} on this layer (start one: layers worker ROUTING --url URL, with "
            "the same URL as this server)"
        )
