"""The hot statements run on libpq directly: same results and errors as through psycopg."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

import layers
from layers.backends.postgres import _direct, _sql

from .servers import SCHEMA

pytestmark = pytest.mark.postgres


@contextlib.asynccontextmanager
async def _connection(pg_server: str, pg_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A fresh autocommit connection, once the layer's schema exists and is empty."""
    async with layers.from_url(pg_url) as layer:
        await layer.flush()
    async with await psycopg.AsyncConnection.connect(pg_server, autocommit=True) as conn:
        yield conn


async def _payloads(
    conn: psycopg.AsyncConnection[Any], receive: _direct.Direct, queue: str
) -> list[bytes]:
    rows = await _direct.execute(conn, receive, {"queue": queue, "lim": 5})
    return [bytes(payload) for _, payload in rows]


def _statements() -> dict[str, _direct.Direct]:
    statements = _sql.statements(SCHEMA)
    by_query = {d.query: d for d in _sql.direct_statements(statements)}
    return {"send": by_query[statements.send_locked], "receive": by_query[statements.receive]}


def _send(queue: str, payload: bytes, **changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "queue": queue,
        "payload": payload,
        "expiry": 60.0,
        "cap": 100,
        "channel": None,
    }
    params.update(changes)
    return params


def test_a_statement_deallocated_by_the_driver_is_prepared_again(
    pg_server: str, pg_url: str
) -> None:
    """psycopg runs ``DEALLOCATE ALL`` after a ROLLBACK or DROP: the next execution still works."""
    direct = _statements()

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            assert await _direct.execute(conn, direct["send"], _send("direct.re", b"one")) == [
                (0, True)
            ]
            await conn.execute("DEALLOCATE ALL")
            assert _direct.usable(conn)
            assert await _direct.execute(conn, direct["send"], _send("direct.re", b"two")) == [
                (1, True)
            ]
            assert await _payloads(conn, direct["receive"], "direct.re") == [b"one", b"two"]

    asyncio.run(main())


def test_a_statement_prepared_but_not_recorded_is_used_as_it_is(
    pg_server: str, pg_url: str
) -> None:
    """A caller cancelled just after its prepare finished leaves the statement unrecorded.

    The connection is idle, so the pool keeps it; the next prepare of that statement
    on it gets "already exists" (42P05), which must count as prepared. The
    conformance rule ``test_cancelled_send_happened_or_not`` met this at random.
    """
    direct = _statements()

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            await _direct.execute(conn, direct["send"], _send("direct.unrec", b"one"))
            _direct._prepared[conn.pgconn].clear()  # what the cancelled caller never did
            await _direct.execute(conn, direct["send"], _send("direct.unrec", b"two"))
            assert await _payloads(conn, direct["receive"], "direct.unrec") == [b"one", b"two"]

    asyncio.run(main())


def test_a_failed_statement_raises_its_sqlstate_class_and_leaves_the_connection_idle(
    pg_server: str, pg_url: str
) -> None:
    direct = _statements()

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            with pytest.raises(psycopg.errors.DatetimeFieldOverflow, match="interval"):
                await _direct.execute(conn, direct["send"], _send("direct.err", b"x", expiry=1e300))
            assert _direct.usable(conn)
            await _direct.execute(conn, direct["send"], _send("direct.err", b"y"))
            assert await _payloads(conn, direct["receive"], "direct.err") == [b"y"]

    asyncio.run(main())


def test_a_statement_larger_than_the_socket_buffer_is_sent_whole(
    pg_server: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payload libpq cannot write at once waits for the socket to take the rest."""
    direct = _statements()
    waits = 0
    writable = _direct._writable

    async def counting(loop: asyncio.AbstractEventLoop, fd: int) -> None:
        nonlocal waits
        waits += 1
        await writable(loop, fd)

    monkeypatch.setattr(_direct, "_writable", counting)
    blob = bytes(range(256)) * (64 * 1024)  # 16 MiB

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            # A small send buffer makes the socket fill however fast the server reads.
            with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await _direct.execute(conn, direct["send"], _send("direct.big", blob))
            rows = await _direct.execute(conn, direct["receive"], {"queue": "direct.big", "lim": 1})
            assert bytes(rows[0][1]) == blob

    asyncio.run(main())
    assert waits > 0


def test_a_lost_connection_raises_operational_error(pg_server: str, pg_url: str) -> None:
    direct = _statements()

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            await _direct.execute(conn, direct["receive"], {"queue": "direct.lost", "lim": 1})
            async with await psycopg.AsyncConnection.connect(pg_server, autocommit=True) as other:
                await other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            with pytest.raises(psycopg.OperationalError):
                await _direct.execute(conn, direct["receive"], {"queue": "direct.lost", "lim": 1})
            assert not _direct.usable(conn)

    asyncio.run(main())


def test_a_statement_cancelled_while_it_runs_leaves_its_connection_idle(
    pg_server: str, pg_url: str
) -> None:
    """The caller waits for the statement to finish, so the pool never discards the connection."""
    slow = _direct.direct(
        b"SELECT 7::bigint FROM pg_sleep(%(seconds)s)", {"seconds": _direct.FLOAT8}, [_direct.INT8]
    )

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            assert await _direct.execute(conn, slow, {"seconds": 0}) == [(7,)]
            task = asyncio.ensure_future(_direct.execute(conn, slow, {"seconds": 0.3}))
            await asyncio.sleep(0.05)  # the statement is on the server now
            assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _direct.usable(conn)
            assert await _direct.execute(conn, slow, {"seconds": 0}) == [(7,)]

    asyncio.run(main())


def test_receives_cancelled_mid_statement_leave_the_layer_working(pg_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(pg_url) as layer:
            await layer.flush()
            await layer.send("direct.cancel", {"i": 0})
            backend = layer._state().backend
            for _ in range(20):
                task = asyncio.ensure_future(backend.receive("direct.cancel", timeout=1))
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            for i in range(1, 4):
                await layer.send("direct.cancel", {"i": i})
            got = [(await layer.receive("direct.cancel"))["i"] for _ in range(3)]
            assert got in ([1, 2, 3], [0, 1, 2])  # 0 may have been claimed and lost

    asyncio.run(main())


def test_the_direct_statements_and_their_types_match_the_sql() -> None:
    """Each direct statement names every placeholder of its psycopg text, in ``$n`` order."""
    statements = _sql.statements(SCHEMA)
    for direct in _sql.direct_statements(statements):
        assert b"%(" not in direct.text
        for n, name in enumerate(direct.params, start=1):
            assert f"%({name})".encode() in direct.query
            assert b"$%d" % n in direct.text
        assert len(direct.types) == len(direct.params)
