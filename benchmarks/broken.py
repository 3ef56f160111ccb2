"""Deliberately broken layers, to prove the harness's correctness counters work.

Each wraps a memory layer and breaks one rule on ``bench.msg`` messages only (so
warm-ups and replies still flow): :class:`DuplicatingLayer` sends every 7th message
twice, :class:`ReorderingLayer` swaps every 10th message with the next one,
:class:`LosingLayer` drops every 10th, and :class:`CrashingLayer` kills its own
process at the 50th (as a crash in C code would). Use them as specs, e.g.
``--spec dup=benchmarks.broken.DuplicatingLayer:{}``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import layers

__all__ = ["CrashingLayer", "DuplicatingLayer", "LosingLayer", "ReorderingLayer"]


class _Wrapper:
    """Delegate everything to a memory layer; subclasses override ``send``."""

    def __init__(self, **options: Any) -> None:
        self._inner = layers.from_url("memory://", capacity=100_000, **options)
        self._count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _is_bench(self, message: dict[str, Any]) -> bool:
        return message.get("type") == "bench.msg"


class DuplicatingLayer(_Wrapper):
    """Sends every 7th benchmark message twice."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._inner.send(channel, message)
        if self._is_bench(message):
            self._count += 1
            if self._count % 7 == 0:
                await self._inner.send(channel, message)


class ReorderingLayer(_Wrapper):
    """Holds every 10th benchmark message back and sends it after the next one."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._held: dict[str, dict[str, Any]] = {}

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if not self._is_bench(message):
            await self._inner.send(channel, message)
            return
        self._count += 1
        held = self._held.pop(channel, None)
        if held is None and self._count % 10 == 0:
            self._held[channel] = message
            return
        await self._inner.send(channel, message)
        if held is not None:
            await self._inner.send(channel, held)


class LosingLayer(_Wrapper):
    """Drops every 10th benchmark message."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self._is_bench(message):
            self._count += 1
            if self._count % 10 == 0:
                return
        await self._inner.send(channel, message)


class CrashingLayer(_Wrapper):
    """Kills its own process (SIGKILL: nothing is printed) at the 50th benchmark message."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self._is_bench(message):
            self._count += 1
            if self._count == 50:
                os.kill(os.getpid(), signal.SIGKILL)
        await self._inner.send(channel, message)
