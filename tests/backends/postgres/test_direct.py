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
    return {
        "send": by_query[statements.send_locked],
        "receive": by_query[statements.receive],
        "receive_batch": by_query[statements.receive_batch],
        "lock": by_query[statements.lock_queues],
        "send_batch": by_query[statements.send_batch],
    }


def _sends(queue: str, payloads: list[bytes], cap: int = 100) -> dict[str, Any]:
    """``send_batch`` parameters: ``payloads`` to ``queue``, in order."""
    n = len(payloads)
    return {
        "queues": [queue] * n,
        "payloads": payloads,
        "expiries": [60.0] * n,
        "caps": [cap] * n,
        "channels": [None] * n,
    }


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


@pytest.mark.parametrize(
    ("texts", "numbers"),
    [
        (["a", "", "über", "x" * 300], [1, -2, 0, 2**31 - 1, -(2**31)]),
        (["a", None, "c"], [7]),
        ([], []),
    ],
)
def test_array_parameters_reach_the_server_as_sent(
    pg_server: str, pg_url: str, texts: list[str | None], numbers: list[int]
) -> None:
    """text[] and int4[] parameters, binary: elements, order, NULLs and empty arrays."""
    probe = _direct.direct(
        b"SELECT cardinality(%(texts)s::text[])::int8,"
        b" array_to_string(%(texts)s::text[], '|', '~'),"
        b" array_position(%(texts)s::text[], NULL) IS NOT NULL,"
        b" array_to_string(%(numbers)s::int[], ',')",
        {"texts": _direct.TEXT_ARRAY, "numbers": _direct.INT4_ARRAY},
        [_direct.INT8, _direct.TEXT, _direct.BOOL, _direct.TEXT],
    )

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            rows = await _direct.execute(conn, probe, {"texts": texts, "numbers": numbers})
            assert rows == [
                (
                    len(texts),
                    "|".join("~" if t is None else t for t in texts),
                    None in texts,
                    ",".join(str(n) for n in numbers),
                )
            ]

    asyncio.run(main())


def test_a_batch_of_claims_runs_directly_per_queue_in_order(pg_server: str, pg_url: str) -> None:
    """receive_batch on libpq: each queue's oldest rows up to its limit, and who has more."""
    direct = _statements()

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            for queue, count in (("batch.a", 3), ("batch.b", 1), ("batch.c", 2)):
                for i in range(count):
                    await _direct.execute(
                        conn, direct["send"], _send(queue, b"%s%d" % (queue[-1:].encode(), i))
                    )
            params = {
                "queues": ["batch.a", "batch.b", "batch.c", "batch.none"],
                "limits": [2, 5, 0, 1],
            }
            rows = await _direct.execute(conn, direct["receive_batch"], params)
            claimed = sorted(
                (queue, payload) for queue, ident, payload in rows if ident is not None
            )
            more = sorted(queue for queue, ident, _ in rows if ident is None)
            assert claimed == [("batch.a", b"a0"), ("batch.a", b"a1"), ("batch.b", b"b0")]
            assert more == ["batch.a", "batch.c"]  # b and "none" held nothing more
            rest = await _direct.execute(conn, direct["receive_batch"], params)
            assert sorted((q, p) for q, i, p in rest if i is not None) == [("batch.a", b"a2")]

    asyncio.run(main())


def test_a_pipeline_runs_its_steps_in_one_transaction(pg_server: str, pg_url: str) -> None:
    """Lock, send and claim in one pipeline: the claim sees the rows sent before it; each
    send's capacity check counts the rows before it; a failing step undoes them all."""
    direct = _statements()
    failing = _direct.direct(b"SELECT 1 / %(zero)s::bigint", {"zero": _direct.INT8}, [_direct.INT8])

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            steps = [
                (direct["lock"], {"queues": ["pipe.a"]}),
                (direct["send_batch"], _sends("pipe.a", [b"x", b"y", b"z"], cap=2)),
                (direct["receive_batch"], {"queues": ["pipe.a"], "limits": [5]}),
            ]
            locked, sent, claimed = await _direct.execute_pipeline(conn, steps)
            assert locked == [(None,)]
            assert [(ord_, ok) for ord_, ok, _ in sent] == [(1, True), (2, True), (3, False)]
            assert sorted(p for _, i, p in claimed if i is not None) == [b"x", b"y"]
            assert _direct.usable(conn)  # out of pipeline mode, idle

            bad = [
                (direct["send_batch"], _sends("pipe.b", [b"lost"])),
                (failing, {"zero": 0}),
            ]
            with pytest.raises(psycopg.errors.DivisionByZero):
                await _direct.execute_pipeline(conn, bad)
            assert _direct.usable(conn)
            assert await _payloads(conn, direct["receive"], "pipe.b") == []  # rolled back

            await conn.execute("DEALLOCATE ALL")  # as psycopg does after a ROLLBACK
            steps[1] = (direct["send_batch"], _sends("pipe.a", [b"again"]))
            _, _, claimed = await _direct.execute_pipeline(conn, steps)
            assert [p for _, i, p in claimed if i is not None] == [b"again"]

    asyncio.run(main())


def test_a_pipeline_cancelled_while_it_runs_returns_what_it_committed(
    pg_server: str, pg_url: str
) -> None:
    """The caller's cancellation waits for the Sync: the claim's rows come back with it."""
    direct = _statements()
    slow = _direct.direct(
        b"SELECT 7::bigint FROM pg_sleep(%(seconds)s)", {"seconds": _direct.FLOAT8}, [_direct.INT8]
    )

    async def main() -> None:
        async with _connection(pg_server, pg_url) as conn:
            steps = [
                (direct["lock"], {"queues": ["pipe.c"]}),
                (direct["send_batch"], _sends("pipe.c", [b"kept"])),
                (slow, {"seconds": 0.3}),
                (direct["receive_batch"], {"queues": ["pipe.c"], "limits": [5]}),
            ]
            await _direct.execute_pipeline(conn, [(slow, {"seconds": 0})])  # prepared
            task = asyncio.ensure_future(_direct.execute_pipeline(conn, steps))
            await asyncio.sleep(0.05)  # the pipeline is on the server now
            task.cancel()
            with pytest.raises(_direct.Interrupted) as caught:
                await task
            rows = caught.value.rows
            assert rows[2] == [(7,)]
            assert [p for _, i, p in rows[3] if i is not None] == [b"kept"]
            assert _direct.usable(conn)
            assert await _payloads(conn, direct["receive"], "pipe.c") == []  # taken once

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
            returned: list[bytes] = []
            for steps in range(20):
                task = asyncio.ensure_future(backend.receive("direct.cancel", timeout=1))
                for _ in range(steps % 5):
                    await asyncio.sleep(0)
                task.cancel()
                # Cancelled mid-claim, a receive returns what it took (Backend.receive).
                with contextlib.suppress(asyncio.CancelledError):
                    returned += await task
            for i in range(1, 4):
                await layer.send("direct.cancel", {"i": i})
            got = [(await layer.receive("direct.cancel"))["i"] for _ in range(4 - len(returned))]
            assert len(returned) <= 1
            assert got == [0, 1, 2, 3][len(returned) :]  # 0 returned once or received later

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


def test_a_batched_receive_cancelled_in_flight_returns_its_rows(pg_url: str) -> None:
    """A caller cancelled once its claim left in a batch waits for the batch and returns
    the rows it claimed (``Backend.receive``), instead of leaving them to nobody."""

    async def main() -> None:
        async with layers.from_url(pg_url) as layer:
            await layer.flush()
            for queue in ("inflight.a", "inflight.b", "inflight.c"):
                await layer.send(queue, {"q": queue})
            backend = await layer._state().ready()
            batcher = backend._batcher  # type: ignore[attr-defined]
            lease, single = batcher._lease, batcher._single
            inline, in_flight = asyncio.Event(), asyncio.Event()

            async def slow_lease(fn: Any) -> Any:
                in_flight.set()
                await asyncio.sleep(0.1)  # the batch is in flight for this long
                return await lease(fn)

            async def slow_single(*args: Any) -> Any:
                inline.set()
                await asyncio.sleep(0.1)  # keeps the first receive inline meanwhile
                return await single(*args)

            batcher._lease, batcher._single = slow_lease, slow_single
            # One operation in flight at a time: the two receives that arrive while the
            # first runs inline leave together, as one batch, once it ends.
            batcher._parallel = 1
            first = asyncio.ensure_future(backend.receive("inflight.a", timeout=2))
            await inline.wait()
            second = asyncio.ensure_future(backend.receive("inflight.b", timeout=2))
            third = asyncio.ensure_future(backend.receive("inflight.c", timeout=2))
            async with asyncio.timeout(2):
                await in_flight.wait()  # both taken into one batch, in flight
            assert not batcher._pending
            second.cancel()
            assert len(await second) == 1  # returned, though cancelled
            assert len(await first) == 1
            assert len(await third) == 1
            batcher._lease, batcher._single, batcher._parallel = lease, single, 2
            assert await backend.receive("inflight.b", timeout=0) == []  # taken once

    asyncio.run(main())


def test_a_send_under_a_short_timeout_raises_timeout_error_never_cancelled(pg_url: str) -> None:
    """A statement drained after its caller's timeout fired ends as ``TimeoutError``.

    Python 3.11's ``asyncio.timeout`` turns only ``CancelledError`` itself into
    ``TimeoutError``: a subclass escaping the backend would cancel the caller instead.
    """

    async def main() -> None:
        async with layers.from_url(pg_url, capacity=1000) as layer:
            await layer.flush()
            timed_out = 0
            for k in range(200):
                try:
                    async with asyncio.timeout(0.00001 * (k % 30 + 1)):
                        await layer.send("timeout.sends", {"k": k})
                except TimeoutError:
                    timed_out += 1
            assert timed_out  # the timeouts did fire mid-statement

    asyncio.run(main())
