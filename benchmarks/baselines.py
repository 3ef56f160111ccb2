"""Bare-driver baselines: the least a driver needs to move a message from A to B.

Each baseline is a tiny object with the layer's ``send(channel, message)`` and
``receive(channel)`` shape (messages serialized with msgpack, as our layer does), so
it runs through the same point-to-point scenarios as the layers. They have no
groups, no reply channels, no expiry and no capacity: they show the ceiling a
backend's driver allows, and each backend's table shows how close the layer gets.

- ``redis-lpush-brpop``: one ``LPUSH`` per send, one ``BRPOP`` per receive.
- ``redis-pipelined``: sends in pipelined batches of 100 ``LPUSH``; receives with
  ``RPOP key 100`` (``BRPOP`` when empty).
- ``psycopg-skip-locked``: ``INSERT`` per send; ``DELETE ... WHERE id = (SELECT ...
  FOR UPDATE SKIP LOCKED) RETURNING`` per receive, polling every 2 ms when empty.
- ``aiosqlite-returning``: ``INSERT`` per send; ``DELETE ... RETURNING`` per receive,
  polling every 2 ms when empty (WAL mode).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Any

import msgpack

from benchmarks.specs import postgres_url, redis_url

__all__ = ["make_baseline"]

_POLL = 0.002
_BATCH = 100


def _pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(payload: bytes) -> dict[str, Any]:
    return msgpack.unpackb(payload, raw=False)  # type: ignore[no-any-return]


class RedisListBaseline:
    """``LPUSH`` / ``BRPOP`` on plain Redis lists (keys prefixed ``benchbase:``)."""

    extensions = ["flush"]
    bench_batch = 0

    def __init__(self) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(redis_url(), max_connections=200)
        self._buffers: dict[str, deque[bytes]] = {}

    async def start(self) -> None:
        await self._redis.ping()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._redis.lpush("benchbase:" + channel, _pack(message))

    async def receive(self, channel: str) -> dict[str, Any]:
        while True:
            got = await self._redis.brpop(["benchbase:" + channel], timeout=1)
            if got is not None:
                return _unpack(got[1])

    async def flush(self) -> None:
        keys = [key async for key in self._redis.scan_iter("benchbase:*")]
        if keys:
            await self._redis.delete(*keys)

    async def close(self) -> None:
        await self._redis.aclose()


class RedisPipelinedBaseline(RedisListBaseline):
    """Pipelined batches of ``LPUSH``; ``RPOP key count`` to drain."""

    bench_batch = _BATCH

    async def send_batch(self, channel: str, messages: list[dict[str, Any]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for message in messages:
                pipe.lpush("benchbase:" + channel, _pack(message))
            await pipe.execute()

    async def receive(self, channel: str) -> dict[str, Any]:
        buffer = self._buffers.setdefault(channel, deque())
        while not buffer:
            got = await self._redis.rpop("benchbase:" + channel, _BATCH)
            if got:
                buffer.extend(got)
                break
            one = await self._redis.brpop(["benchbase:" + channel], timeout=1)
            if one is not None:
                buffer.append(one[1])
        return _unpack(buffer.popleft())


class PsycopgBaseline:
    """``INSERT`` and ``DELETE ... SKIP LOCKED RETURNING`` on one table."""

    extensions = ["flush"]
    bench_batch = 0
    _schema = "bench_baseline"

    def __init__(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        self._pool = AsyncConnectionPool(
            postgres_url(), min_size=2, max_size=40, open=False, kwargs={"autocommit": True}
        )

    async def start(self) -> None:
        await self._pool.open()
        async with self._pool.connection() as conn:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._schema}.q (id bigserial PRIMARY KEY,"
                " queue text NOT NULL, payload bytea NOT NULL)"
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS q_queue_id ON {self._schema}.q (queue, id)"
            )

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                f"INSERT INTO {self._schema}.q (queue, payload) VALUES (%s, %s)",
                (channel, _pack(message)),
            )

    async def receive(self, channel: str) -> dict[str, Any]:
        query = (
            f"DELETE FROM {self._schema}.q WHERE id = (SELECT id FROM {self._schema}.q"
            " WHERE queue = %s ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING payload"
        )
        while True:
            async with self._pool.connection() as conn:
                row = await (await conn.execute(query, (channel,))).fetchone()
            if row is not None:
                return _unpack(bytes(row[0]))
            await asyncio.sleep(_POLL)

    async def flush(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(f"DELETE FROM {self._schema}.q")

    async def close(self) -> None:
        await self._pool.close()


class AiosqliteBaseline:
    """``INSERT`` and ``DELETE ... RETURNING`` on one SQLite table in WAL mode."""

    extensions = ["flush"]
    bench_batch = 0

    def __init__(self, tmp: str) -> None:
        self._path = os.path.join(tmp, "baseline.db")
        self._db: Any = None

    async def start(self) -> None:
        import aiosqlite

        self._db = await aiosqlite.connect(self._path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA busy_timeout=20000")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " queue TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        await self._db.execute("CREATE INDEX IF NOT EXISTS q_queue_id ON q (queue, id)")

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._db.execute(
            "INSERT INTO q (queue, payload) VALUES (?, ?)", (channel, _pack(message))
        )

    async def receive(self, channel: str) -> dict[str, Any]:
        query = (
            "DELETE FROM q WHERE id = (SELECT id FROM q WHERE queue = ? ORDER BY id LIMIT 1)"
            " RETURNING payload"
        )
        while True:
            async with self._db.execute(query, (channel,)) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                return _unpack(row[0])
            await asyncio.sleep(_POLL)

    async def flush(self) -> None:
        await self._db.execute("DELETE FROM q")

    async def close(self) -> None:
        await self._db.close()


def make_baseline(name: str, tmp: str) -> Any:
    """Return the (not yet started) baseline called ``name``."""
    if name == "redis-lpush-brpop":
        return RedisListBaseline()
    if name == "redis-pipelined":
        return RedisPipelinedBaseline()
    if name == "psycopg-skip-locked":
        return PsycopgBaseline()
    if name == "aiosqlite-returning":
        return AiosqliteBaseline(tmp)
    raise ValueError(f"unknown baseline {name!r}")
