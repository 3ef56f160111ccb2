"""Immunity to redis-py's connection defaults (redis-py 8: ``socket_timeout`` 5 s, RESP3).

The backend opens its own connections: a blocking receive waits longer than
``socket_timeout`` without an error, and ``protocol=3`` is accepted (the backend
speaks RESP2), with either reply reader. The ``redis_drivers`` nox session runs the
Redis tests on the oldest and newest supported redis-py, with and without hiredis.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import layers


@pytest.mark.parametrize("protocol", [2, 3])
def test_blocking_receive_outlives_socket_timeout(
    shared_url: str, protocol: int, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{shared_url}&socket_timeout=0.5&protocol={protocol}"

    async def main() -> None:
        async with layers.from_url(url) as layer:

            async def late() -> None:
                await asyncio.sleep(1.5)
                await layer.send("late.chan", {"late": True})

            sender = asyncio.create_task(late())
            got = await asyncio.wait_for(layer.receive("late.chan"), 10)
            await sender
            assert got == {"late": True}
            await layer.flush()

    with caplog.at_level(logging.WARNING, logger="layers"):
        asyncio.run(main())
    # No receive failed and was retried behind the caller's back.
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


def test_closing_a_sentinel_layer_works_on_every_supported_driver() -> None:
    # redis-py before 5.1 has no Sentinel.aclose(); closing must not depend on it.
    async def main() -> None:
        layer = layers.from_url("redis+sentinel://127.0.0.1:9/mymaster")
        await layer._state().ready()  # builds the connection set (no I/O yet)
        await layer.aclose()

    asyncio.run(main())
