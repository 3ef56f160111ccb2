"""Surviving the server: terminated connections and a real restart during traffic.

Each test runs a producer and consumers while connections die, then checks that no
message was delivered twice, that the layer works again, and that LISTEN is back
(a receive with a poll interval longer than its timeout can only be woken by NOTIFY).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

import layers
from layers.backends.postgres import PostgresBackend
from layers.core.errors import BackendError

from .servers import Cluster, sql, with_params

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def traffic_through(url: str, disrupt: Callable[[], Awaitable[None]]) -> list[int]:
    """Send numbered messages while ``disrupt`` runs; return what the consumers got."""
    received: list[int] = []
    attempted = 0
    stop = asyncio.Event()
    last_arrived = asyncio.Event()
    target: list[int] = []

    async with layers.from_url(url, capacity=10_000) as sender:
        consumers = [layers.from_url(url, capacity=10_000) for _ in range(2)]

        async def consume(layer: layers.ChannelLayer) -> None:
            while True:
                received.append((await layer.receive("traffic.x"))["i"])
                if target and received[-1] == target[0]:
                    last_arrived.set()

        async def produce() -> None:
            nonlocal attempted
            while not stop.is_set():
                attempted += 1
                with_error = False
                try:
                    await sender.send("traffic.x", {"i": attempted})
                except BackendError:
                    with_error = True  # stored or not: both are allowed
                await asyncio.sleep(0.05 if with_error else 0.002)

        tasks = [asyncio.create_task(consume(c)) for c in consumers for _ in range(2)]
        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.5)
        await disrupt()
        await asyncio.sleep(1.0)
        stop.set()
        await producer
        # After recovery every send must work and arrive.
        for _ in range(20):
            attempted += 1
            await sender.send("traffic.x", {"i": attempted})
        target.append(attempted)
        if attempted not in received:
            async with asyncio.timeout(30):
                await last_arrived.wait()
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in consumers:
            await c.aclose()
    assert len(received) == len(set(received)), "a message was delivered twice"
    assert set(received) <= set(range(1, attempted + 1))
    assert set(range(attempted - 19, attempted + 1)) <= set(received)
    return received


async def woken_by_notify(url: str) -> bool:
    """True if a waiting receive (poll longer than its timeout) is woken by NOTIFY."""
    quiet = with_params(url, poll_interval=60)
    async with layers.from_url(quiet) as reader, layers.from_url(url) as writer:
        queue = f"listen.{uuid.uuid4().hex[:8]}"
        await reader._state().ready()
        backend = reader._state().backend
        assert isinstance(backend, PostgresBackend)
        # Warm up: make sure LISTEN is registered before the real check.
        await writer.send(queue, {"warm": True})
        assert await backend.receive(queue, timeout=10) != []
        waiting = asyncio.create_task(backend.receive(queue, timeout=20))
        await asyncio.sleep(0.5)  # let its first drain find nothing
        await writer.send(queue, {"wake": True})
        return bool(await waiting)


async def send_retrying(layer: layers.ChannelLayer, channel: str, message: dict[str, bool]) -> None:
    """Send, retrying a send that failed on a connection the test killed."""
    for _ in range(5):
        try:
            await layer.send(channel, message)
            return
        except BackendError:
            await asyncio.sleep(0.1)
    raise AssertionError("send kept failing after the connections were replaced")


def test_terminated_connections_are_replaced(pg_url: str, pg_server: str) -> None:
    app = f"layers-term-{uuid.uuid4().hex[:8]}"
    url = with_params(pg_url, application_name=app)

    async def terminate() -> None:
        for _ in range(3):
            await asyncio.to_thread(
                sql,
                pg_server,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                app,
            )
            await asyncio.sleep(0.2)

    async def main() -> None:
        await traffic_through(url, terminate)
        # The listener of a long-lived layer comes back after its connection dies.
        quiet = with_params(url, poll_interval=60)
        async with layers.from_url(quiet) as reader, layers.from_url(url) as writer:
            backend = reader._state().backend
            await reader._state().ready()
            assert isinstance(backend, PostgresBackend)
            await writer.send("term.listen", {"warm": True})
            assert await backend.receive("term.listen", timeout=10) != []
            await terminate()
            waiting = asyncio.create_task(backend.receive("term.listen", timeout=20))
            await asyncio.sleep(1.5)  # reconnect, re-LISTEN, drain
            await send_retrying(writer, "term.listen", {"after": True})
            assert await waiting != []

    asyncio.run(main())


def test_server_restart_during_traffic(private_cluster: Cluster) -> None:
    url = with_params(private_cluster.url, schema="layers_restart")

    async def restart() -> None:
        await asyncio.to_thread(private_cluster.restart)

    async def main() -> None:
        received = await traffic_through(url, restart)
        assert received, "nothing was delivered at all"
        assert await woken_by_notify(url)

    asyncio.run(main())
