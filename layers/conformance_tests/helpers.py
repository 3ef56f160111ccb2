"""Small helpers shared by the conformance test modules.

Every test uses fresh random channel and group names (:func:`unique`), so tests
never see each other's leftovers in a persistent store, and waits are bounded by
the run-wide settings of :mod:`layers.conformance_tests.plugin`.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from layers.conformance_tests.plugin import settings
from layers.core.layer import ChannelLayer

__all__ = ["drain", "expect_nothing", "receive_within", "sized", "thorough", "unique"]


def thorough() -> bool:
    """True in the thorough profile (``--conformance-profile thorough``): nightly runs."""
    return settings.profile == "thorough"


def sized(default: int, heavy: int) -> int:
    """The size of a scale rule: ``default``, or ``heavy`` in the thorough profile."""
    return heavy if thorough() else default


def unique(kind: str = "ch") -> str:
    """Return a fresh name ``conf.<kind>.<random>`` valid as a channel or group name."""
    return f"conf.{kind}.{secrets.token_hex(6)}"


async def receive_within(
    layer: ChannelLayer, channel: str, timeout: float | None = None
) -> dict[str, Any]:
    """Receive a message that must arrive; fail (TimeoutError) after ``settings.wait``."""
    async with asyncio.timeout(settings.wait if timeout is None else timeout):
        return await layer.receive(channel)


async def expect_nothing(layer: ChannelLayer, channel: str, quiet: float | None = None) -> None:
    """Assert that nothing arrives on ``channel`` for the quiet period."""
    try:
        async with asyncio.timeout(settings.quiet if quiet is None else quiet):
            message = await layer.receive(channel)
    except TimeoutError:
        return
    raise AssertionError(f"expected nothing on {channel!r}, received {message!r}")


async def drain(
    layer: ChannelLayer, channel: str, quiet: float | None = None
) -> list[dict[str, Any]]:
    """Receive until nothing arrives for the quiet period; return what came, in order."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            async with asyncio.timeout(settings.quiet if quiet is None else quiet):
                out.append(await layer.receive(channel))
        except TimeoutError:
            return out
