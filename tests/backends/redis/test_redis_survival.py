"""The layer survives its servers: a real restart, and a Sentinel failover under traffic."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import time
import warnings

import pytest
import redis

import layers
from layers.core.errors import BackendError

pytestmark = pytest.mark.slow


def test_restart_during_use(spawn) -> None:  # type: ignore[no-untyped-def]
    server = spawn()

    async def main() -> None:
        async with layers.from_url(server.url) as layer:
            await layer.send("restart.chan", {"n": 0})
            assert await layer.receive("restart.chan") == {"n": 0}
            # A consumer is waiting (its reader blocked in BLMPOP) when the server goes.
            waiting = asyncio.ensure_future(layer.receive("restart.chan"))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(server.stop)
            with pytest.raises(BackendError) as info:
                await layer.send("restart.chan", {"n": 1})
            assert isinstance(info.value.__cause__, redis.RedisError | OSError)
            await asyncio.to_thread(server.start)
            # The next call reconnects; the waiting consumer's reader resumes.
            await layer.send("restart.chan", {"n": 2})
            assert await asyncio.wait_for(waiting, 20) == {"n": 2}
            await layer.send("restart.chan", {"n": 3})
            assert await layer.receive("restart.chan") == {"n": 3}

    asyncio.run(main())


def test_sentinel_failover_under_traffic(sentinel_setup) -> None:  # type: ignore[no-untyped-def]
    setup = sentinel_setup
    total = 400

    async def main() -> None:
        async with layers.from_url(setup.url, capacity=total) as layer:
            received: list[int] = []
            failed = 0

            async def consume() -> None:
                while True:
                    received.append((await layer.receive("failover.chan"))["i"])

            consumer = asyncio.ensure_future(consume())
            old_master = setup.master_port()
            for i in range(total):
                if i == total // 4:
                    await asyncio.to_thread(
                        subprocess.run,
                        [
                            "redis-cli",
                            "-p",
                            str(setup.sentinel.port),
                            "SENTINEL",
                            "failover",
                            "mymaster",
                        ],
                        check=True,
                        capture_output=True,
                    )
                try:
                    await layer.send("failover.chan", {"i": i})
                except BackendError:
                    failed += 1  # never retried: a retry could duplicate
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.005)
            assert setup.master_port() != old_master
            deadline = time.monotonic() + 20
            while received[-1:] != [total - 1] and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling the consumer's progress, bounded
            consumer.cancel()
            assert len(received) == len(set(received)), "a message was delivered twice"
            assert received == sorted(received), "order broke"
            assert received[-1] == total - 1, "traffic did not resume on the new master"
            assert len(received) >= total - failed - 50  # loss only around the switch

    asyncio.run(main())


def test_idle_reader_of_a_restarted_server_is_closed_not_left_to_gc(spawn) -> None:  # type: ignore[no-untyped-def]
    """A blocking-pop connection broken while idle is closed when replaced (no fd leak)."""
    server = spawn()

    async def main() -> None:
        async with layers.from_url(server.url) as layer:
            waiting = asyncio.ensure_future(layer.receive("idle.chan"))
            await asyncio.sleep(0.2)  # its reader is blocked on the server
            await layer.send("idle.chan", {"n": 0})
            assert await waiting == {"n": 0}  # the reader now sits idle, kept for reuse
            await asyncio.to_thread(server.restart)
            await asyncio.sleep(0.2)  # the idle reader sees the connection go
            waiting = asyncio.ensure_future(layer.receive("idle.chan"))
            await asyncio.sleep(0.2)
            await layer.send("idle.chan", {"n": 1})
            assert await asyncio.wait_for(waiting, 20) == {"n": 1}
            gc.collect()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(main())
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks
