"""The PostgreSQL backend on a real server: options, schema, wake-ups, maintenance."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

import layers
from layers.backends.postgres import PostgresBackend, PostgresChannelLayer, notify_channel
from layers.backends.postgres._sql import SCHEMA_VERSION
from layers.core.errors import ConfigurationError

from .servers import sql, with_params

pytestmark = pytest.mark.postgres


def backend_of(layer: layers.ChannelLayer) -> PostgresBackend:
    backend = layer._state().backend
    assert isinstance(backend, PostgresBackend)
    return backend


# -- options (no server needed) -------------------------------------------------------


def test_url_options_and_libpq_passthrough() -> None:
    opts = PostgresBackend.prepare_options(
        PostgresBackend.options_from_url(
            "postgres://u@h:5433/db?schema=chan&unlogged=true&poll_only=1"
            "&poll_interval=0.5&sslmode=disable&synchronous_commit=on"
        )
    )
    settings = opts["settings"]
    assert (settings.schema, settings.unlogged, settings.poll_only) == ("chan", True, True)
    assert settings.poll_interval == 0.5
    assert settings.synchronous_commit == "on"
    assert "sslmode=disable" in opts["conninfo"]
    assert "port=5433" in opts["conninfo"]
    assert "schema" not in opts["conninfo"]


def test_libpq_keywords_and_dsn() -> None:
    opts = PostgresBackend.prepare_options({"host": "db", "dbname": "app", "schema": "x"})
    assert "host=db" in opts["conninfo"]
    assert "application_name=channel-layers" in opts["conninfo"]
    opts = PostgresBackend.prepare_options({"dsn": "host=db application_name=mine"})
    assert "application_name=mine" in opts["conninfo"]


@pytest.mark.parametrize(
    "options",
    [
        {"schema": "Bad-Name"},
        {"schema": "x" * 64},
        {"unlogged": "maybe"},
        {"poll_interval": 0},
        {"synchronous_commit": "sometimes"},
        {"no_such_libpq_option": 1},
        {"url": "postgresql://h/db", "dsn": "host=h"},
        {"pool_min_size": 5, "pool_max_size": 2},
    ],
)
def test_bad_options_fail_at_configuration(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        PostgresBackend.prepare_options(options)


def test_notify_channel_is_a_short_stable_identifier() -> None:
    long_queue = "a" * 100 + "!"
    channel = notify_channel("layers", long_queue)
    assert len(channel.encode()) <= 63
    assert channel == notify_channel("layers", long_queue)
    assert channel != notify_channel("other", long_queue)
    assert channel.isidentifier()
    assert channel == channel.lower()


def test_django_database_alias_is_read_from_settings() -> None:
    code = (
        "from django.conf import settings\n"
        "settings.configure(DATABASES={'default': {'ENGINE': 'django.db.backends.postgresql',"
        " 'NAME': 'appdb', 'USER': 'app', 'HOST': 'dbhost', 'PORT': '6543',"
        " 'OPTIONS': {'sslmode': 'disable', 'pool': True}}})\n"
        "from layers.backends.postgres import PostgresBackend\n"
        "print(PostgresBackend.prepare_options({'database': 'default'})['conninfo'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    for part in ("dbname=appdb", "user=app", "host=dbhost", "port=6543", "sslmode=disable"):
        assert part in out


# -- on the shared server ---------------------------------------------------------------


def test_schema_created_once_by_many_concurrent_starters(pg_server: str, fresh_schema: str) -> None:
    async def start(i: int) -> None:
        # A distinct application_name makes each layer check the schema itself.
        url = with_params(pg_server, schema=fresh_schema, application_name=f"starter{i}")
        async with layers.from_url(url) as layer:
            await layer.send("start.up", {"i": i})

    async def main() -> None:
        await asyncio.gather(*(start(i) for i in range(8)))

    asyncio.run(main())
    rows = sql(pg_server, f"SELECT key, value FROM {fresh_schema}.meta")
    assert rows == [("schema_version", str(SCHEMA_VERSION))]
    assert sql(pg_server, f"SELECT count(*) FROM {fresh_schema}.messages") == [(8,)]


def test_unlogged_option_creates_unlogged_tables(pg_server: str, fresh_schema: str) -> None:
    async def main() -> None:
        async with layers.from_url(with_params(pg_server, schema=fresh_schema, unlogged=1)) as lay:
            await lay.send("u.x", {"a": 1})
            assert await lay.receive("u.x") == {"a": 1}

    asyncio.run(main())
    rows = sql(
        pg_server,
        "SELECT c.relname, c.relpersistence FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
        fresh_schema,
    )
    assert {str(name): str(kind) for name, kind in rows} == {
        "group_members": "u",
        "messages": "u",
        "meta": "p",
    }


def test_dropped_schema_is_recreated(pg_server: str, fresh_schema: str) -> None:
    async def main() -> None:
        async with layers.from_url(with_params(pg_server, schema=fresh_schema)) as layer:
            await layer.send("drop.x", {"a": 1})
            sql(pg_server, f"DROP SCHEMA {fresh_schema} CASCADE")
            await layer.send("drop.x", {"a": 2})
            assert await layer.receive("drop.x") == {"a": 2}

    asyncio.run(main())


def test_messages_larger_than_notify_payload_limit(pg_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(pg_url) as layer:
            blob = b"x" * 200_000
            await layer.send("big.one", {"blob": blob})
            assert (await layer.receive("big.one"))["blob"] == blob

    asyncio.run(main())


def test_many_layers_reading_one_channel_get_each_message_once(pg_url: str) -> None:
    total = 300

    async def main() -> list[int]:
        readers = [layers.from_url(pg_url, capacity=1000) for _ in range(4)]
        got: list[int] = []
        done = asyncio.Event()

        async def consume(layer: layers.ChannelLayer) -> None:
            while not done.is_set():
                got.append((await layer.receive("many.readers"))["i"])
                if len(got) >= total:
                    done.set()

        async with layers.from_url(pg_url, capacity=1000) as sender:
            tasks = [asyncio.create_task(consume(r)) for r in readers for _ in range(3)]
            for i in range(total):
                await sender.send("many.readers", {"i": i})
            await asyncio.wait_for(done.wait(), 60)
            await asyncio.sleep(0.3)  # give a duplicate the chance to show up
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for r in readers:
            await r.aclose()
        return got

    got = asyncio.run(main())
    assert sorted(got) == list(range(total))


def test_cancelled_backend_receive_loses_nothing(pg_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(pg_url) as layer:
            await layer.flush()
            backend = backend_of(layer)
            waiting = asyncio.create_task(backend.receive("cancel.me", timeout=5))
            await asyncio.sleep(0.1)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await layer.send("cancel.me", {"kept": True})
            assert await layer.receive("cancel.me") == {"kept": True}

    asyncio.run(main())


def test_poll_only_mode_needs_no_listen(pg_url: str) -> None:
    async def main() -> None:
        url = with_params(pg_url, poll_only=1, poll_interval=0.05)
        async with layers.from_url(url) as layer, layers.from_url(url) as other:
            reply = await layer.new_channel()
            await other.send(reply, {"polled": True})
            assert await layer.receive(reply) == {"polled": True}
            await layer.send("poll.only", {"n": 1})
            assert await other.receive("poll.only") == {"n": 1}
            assert backend_of(layer)._listener is None

    asyncio.run(main())


def test_poll_only_wakes_waiting_receives_of_other_layers_and_loops(pg_url: str) -> None:
    """With ``poll_only`` no NOTIFY comes, but a send or group send of this process wakes
    a receive waiting in another layer, in another event loop, without waiting a poll."""

    async def main() -> None:
        url = with_params(pg_url, poll_only=1, poll_interval=5)
        async with layers.from_url(url) as layer, layers.from_url(url) as other:
            await layer.flush()
            await layer.group_add("poll.group", "poll.grouped")

            def wait_in_a_thread(channel: str) -> float:
                async def take() -> float:
                    assert (await other.receive(channel))["n"] == 1
                    return time.monotonic()

                return asyncio.run(take())

            for channel, send in (
                ("poll.sent", lambda: layer.send("poll.sent", {"n": 1})),
                ("poll.grouped", lambda: layer.group_send("poll.group", {"n": 1})),
            ):
                waiting = asyncio.create_task(asyncio.to_thread(wait_in_a_thread, channel))
                await asyncio.sleep(0.3)  # its claim found nothing and waits
                sent = time.monotonic()
                await send()
                # The core's reader claims again at least every second by itself.
                assert await asyncio.wait_for(waiting, 6) - sent < 0.25, channel

    asyncio.run(main())


def test_cleanup_deletes_expired_rows_in_batches(pg_server: str, fresh_schema: str) -> None:
    async def main() -> None:
        url = with_params(pg_server, schema=fresh_schema, cleanup_batch=7)
        async with layers.from_url(url, expiry=0.2, capacity=100) as layer:
            for i in range(30):
                await layer.send("old.messages", {"i": i})
            await layer.group_add("old.group", "old.messages")
            await asyncio.sleep(0.4)
            await layer.send("new.messages", {"fresh": True})
            assert await backend_of(layer).cleanup() == 30

    asyncio.run(main())
    assert sql(pg_server, f"SELECT queue FROM {fresh_schema}.messages") == [("new.messages",)]


def test_flush_touches_only_its_schema(pg_url: str, pg_server: str, fresh_schema: str) -> None:
    async def main() -> None:
        async with (
            layers.from_url(pg_url) as mine,
            layers.from_url(with_params(pg_server, schema=fresh_schema)) as theirs,
        ):
            await theirs.send("kept.x", {"kept": True})
            await mine.send("gone.x", {"gone": True})
            await mine.flush()
            assert await theirs.receive("kept.x") == {"kept": True}

    asyncio.run(main())


def test_django_backend_path(pg_url: str) -> None:
    async def main() -> None:
        layer = PostgresChannelLayer(url=pg_url)
        async with layer:
            await layer.send("django.path", {"ok": 1})
            assert await layer.receive("django.path") == {"ok": 1}
        assert "groups" in layer.extensions

    asyncio.run(main())


def test_reply_channels_stay_with_their_layer(pg_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(pg_url) as a, layers.from_url(pg_url) as b:
            ra, rb = await a.new_channel(), await b.new_channel()
            await b.send(ra, {"to": "a"})
            await a.send(rb, {"to": "b"})
            assert await a.receive(ra) == {"to": "a"}
            assert await b.receive(rb) == {"to": "b"}

    asyncio.run(main())


def test_unique_names_do_not_collide_in_notify() -> None:
    names = {notify_channel("layers", f"q{uuid.uuid4().hex}") for _ in range(1000)}
    assert len(names) == 1000


# -- auto-batching ----------------------------------------------------------------------


def test_concurrent_sends_keep_capacity_exact_and_order_per_queue(pg_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(pg_url, capacity=5) as layer:
            await layer.flush()
            results = await asyncio.gather(
                *(layer.send("batch.cap", {"i": i}) for i in range(12)), return_exceptions=True
            )
            stored = [i for i, r in enumerate(results) if r is None]
            assert len(stored) == 5, results  # one process never overshoots capacity
            assert all(isinstance(r, layers.ChannelFull) for r in results if r is not None)
            got = [(await layer.receive("batch.cap"))["i"] for _ in stored]
            assert got == stored

    asyncio.run(main())


def test_concurrent_senders_and_readers_of_many_queues(pg_url: str) -> None:
    queues, per_queue = 16, 25

    async def main() -> None:
        async with layers.from_url(pg_url, capacity=1000) as layer:
            await layer.flush()

            async def produce(q: int) -> None:
                for i in range(per_queue):
                    await layer.send(f"batch.many.{q}", {"i": i})

            async def consume(q: int) -> list[int]:
                return [(await layer.receive(f"batch.many.{q}"))["i"] for _ in range(per_queue)]

            readers = [asyncio.create_task(consume(q)) for q in range(queues)]
            await asyncio.gather(*(produce(q) for q in range(queues)))
            got = await asyncio.wait_for(asyncio.gather(*readers), 60)
            assert got == [list(range(per_queue))] * queues

    asyncio.run(main())


def test_a_failing_statement_does_not_fail_its_batch(pg_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(pg_url) as layer:
            await layer.flush()
            backend = backend_of(layer)
            # An expiry out of the interval range fails in the server, and fails the
            # merged statement of its batch; the other sends must still be stored.
            results = await asyncio.gather(
                layer.send("batch.iso", {"i": 1}),
                backend._store([("batch.iso2", b"x", 1e300, 10, None)]),
                layer.send("batch.iso", {"i": 2}),
                return_exceptions=True,
            )
            assert results[0] is None
            assert results[2] is None
            assert isinstance(results[1], layers.BackendError)
            assert [(await layer.receive("batch.iso"))["i"] for _ in range(2)] == [1, 2]

    asyncio.run(main())


def test_capacity_is_exact_when_the_id_span_cannot_decide(pg_url: str) -> None:
    """The id-span shortcut only ever accepts rows that fit; the count decides the rest."""

    async def main() -> None:
        async with layers.from_url(pg_url, capacity=4, expiry=1) as layer:
            await layer.flush()
            # Interleaved queues: span(cap.a) grows past capacity with few rows in it.
            for i in range(4):
                await layer.send("cap.a", {"i": i})
                await layer.send("cap.b", {"i": i})
            with pytest.raises(layers.ChannelFull):
                await layer.send("cap.a", {"i": 4})
            assert (await layer.receive("cap.a"))["i"] == 0
            await layer.send("cap.a", {"i": 5})  # three left plus this one: full again
            with pytest.raises(layers.ChannelFull):
                await layer.send("cap.a", {"i": 6})
            # Expired rows still widen the span but no longer count.
            await asyncio.sleep(1.2)
            results = await asyncio.gather(
                *(layer.send("cap.a", {"i": 10 + i}) for i in range(6)), return_exceptions=True
            )
            assert [r is None for r in results] == [True] * 4 + [False] * 2, results
            assert [(await layer.receive("cap.a"))["i"] for _ in range(4)] == [10, 11, 12, 13]

    asyncio.run(main())


def test_notify_channel_names_match_between_python_and_sql(pg_url: str) -> None:
    from psycopg import sql as pgsql

    from layers.backends.postgres import _sql

    async def main() -> None:
        async with layers.from_url(pg_url) as layer:
            backend = backend_of(layer)
            await layer._state().ready()
            expr = _sql.notify_channel(pgsql.Placeholder(), pgsql.Placeholder())
            query = pgsql.SQL("SELECT {}").format(expr).as_bytes(None)
            for queue in ("a", "specific.abc!", "x" * 100):
                rows = await backend._db.query(query, ("layers", queue))
                assert rows[0][0] == notify_channel("layers", queue)

    asyncio.run(main())


@pytest.mark.parametrize("poll_only", [False, True])
def test_group_send_is_one_statement_that_skips_full_members(pg_url: str, poll_only: bool) -> None:
    async def main() -> None:
        url = with_params(pg_url, poll_only=int(poll_only), poll_interval=5)
        async with layers.from_url(url, capacity=2) as layer:
            await layer.flush()
            backend = backend_of(layer)
            replies = [await layer.new_channel() for _ in range(3)]
            for channel in [*replies, "gs.plain", "gs.full"]:
                await layer.group_add("gs", channel)
            await layer.send("gs.full", {"n": 1})
            await layer.send("gs.full", {"n": 2})
            waiting = asyncio.create_task(layer.receive(replies[0]))
            await asyncio.sleep(0.2)  # the inbox reader drained and waits for a wake-up
            statements: list[bytes] = []
            db = backend._db
            query = db.query

            async def counting(q: bytes, *args: object, **kwargs: object) -> object:
                statements.append(q)
                return await query(q, *args, **kwargs)  # type: ignore[arg-type]

            db.query = counting  # type: ignore[assignment,method-assign]
            await layer.group_send("gs", {"type": "hello"})
            db.query = query  # type: ignore[method-assign]
            assert statements == [backend._sql.group_send]
            # Woken at once (well before the 5 s poll), in both modes.
            assert await asyncio.wait_for(waiting, 2) == {"type": "hello"}
            for channel in [*replies[1:], "gs.plain"]:
                assert await asyncio.wait_for(layer.receive(channel), 2) == {"type": "hello"}
            # The full member was skipped: it still holds its two messages only.
            assert [(await layer.receive("gs.full"))["n"] for _ in range(2)] == [1, 2]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(layer.receive("gs.full"), 0.3)

    asyncio.run(main())


@contextlib.asynccontextmanager
async def _reader_and_writer(
    pg_url: str,
) -> AsyncIterator[tuple[PostgresBackend, layers.ChannelLayer]]:
    """An opened reader's backend (its schema flushed) and a writer, in two layers.

    The poll interval is 5 s, so only a NOTIFY can wake the reader in time.
    """
    url = with_params(pg_url, poll_interval=5)
    async with layers.from_url(url) as reader, layers.from_url(url) as writer:
        await reader.flush()
        await reader._state().ready()
        yield backend_of(reader), writer


def test_a_drained_reader_is_woken_by_another_process_send(pg_url: str) -> None:
    """A reader that waits before claiming (its queue was drained) misses no wake-up."""

    async def main() -> None:
        async with _reader_and_writer(pg_url) as (backend, writer):
            assert await backend.receive("wf.q", timeout=0.3, limit=1) == []  # drained
            # Sent while no receive runs: the wake-up must still count.
            await writer.send("wf.q", {"n": 1})
            await asyncio.sleep(0.2)
            started = time.monotonic()
            assert len(await backend.receive("wf.q", timeout=3, limit=1)) == 1
            assert time.monotonic() - started < 1
            # Sent while a receive waits before claiming.
            waiting = asyncio.create_task(backend.receive("wf.q", timeout=3, limit=1))
            await asyncio.sleep(0.2)
            await writer.send("wf.q", {"n": 2})
            started = time.monotonic()
            assert len(await waiting) == 1
            assert time.monotonic() - started < 1

    asyncio.run(main())


def test_a_claim_tells_whether_its_queue_may_hold_more(pg_url: str) -> None:
    """A claim that took the last live row says so, alone and in a batch, per queue."""

    async def main() -> None:
        async with layers.from_url(pg_url) as layer:
            await layer.flush()
            backend = backend_of(layer)
            await layer._state().ready()
            for n in range(2):
                await layer.send("more.a", {"n": n})
            await layer.send("more.b", {"n": 0})
            rows, more = await backend._batcher.receive("more.a", 1)
            assert (len(rows), more) == (1, True)
            rows, more = await backend._batcher.receive("more.a", 1)
            assert (len(rows), more) == (1, False)
            assert await backend._batcher.receive("more.a", 1) == ([], False)
            # The batched statement: one flag per queue.
            for n in range(3):
                await layer.send("more.a", {"n": n})
            got = await backend._db.query(
                backend._sql.receive_batch,
                {"queues": ["more.a", "more.b", "more.c"], "limits": [2, 1, 1]},
            )
            flagged = sorted(str(row[0]) for row in got if row[1] is None)
            assert flagged == ["more.a"]
            assert sorted(str(row[0]) for row in got if row[1] is not None) == [
                "more.a",
                "more.a",
                "more.b",
            ]

    asyncio.run(main())


def test_a_reader_that_took_the_last_row_waits_for_a_notify_before_claiming(
    pg_url: str,
) -> None:
    """No claim after the last row: the next receive waits for a NOTIFY, and misses none."""

    async def main() -> None:
        async with _reader_and_writer(pg_url) as (backend, writer):
            # Listened to once (a first receive that finds a row sets up no LISTEN).
            assert await backend.receive("last.q", timeout=0.2) == []
            await writer.send("last.q", {"n": 1})
            await asyncio.sleep(0.2)  # its NOTIFY has come and gone
            assert len(await backend.receive("last.q", timeout=3, limit=1)) == 1
            listener = backend._listener
            assert listener is not None
            watch = listener.peek(backend._channel("last.q"))
            assert watch is not None
            assert watch.drained  # known from the claim itself: no empty claim needed
            # Sent by another process while no receive runs: the wake-up still counts.
            await writer.send("last.q", {"n": 2})
            await asyncio.sleep(0.2)
            started = time.monotonic()
            assert len(await backend.receive("last.q", timeout=3, limit=1)) == 1
            assert time.monotonic() - started < 1

    asyncio.run(main())


async def _through(layer: layers.ChannelLayer, channel: str, count: int) -> None:
    """Send ``count`` messages to ``channel``, then receive them, checking their order."""
    for n in range(count):
        await layer.send(channel, {"n": n})
    for n in range(count):
        assert (await layer.receive(channel))["n"] == n


async def _handed(layer: layers.ChannelLayer, channel: str) -> None:
    """One message sent to ``channel`` while a receive of ``layer`` waits on it."""
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.05)
    await layer.send(channel, {"handed": True})
    assert await asyncio.wait_for(waiting, 5) == {"handed": True}


async def _until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``done()`` (checked every 50 ms), or ``timeout`` seconds."""
    for _ in range(int(timeout / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)


def test_the_messages_table_is_vacuumed_after_many_deletes(
    pg_server: str, fresh_schema: str
) -> None:
    async def main() -> None:
        url = with_params(pg_server, schema=fresh_schema, vacuum_every=20)
        async with layers.from_url(url) as layer:
            await _through(layer, "vac.q", 50)
            backend = backend_of(layer)
            await _until(lambda: backend._vacuum.runs >= 2)
            assert backend._vacuum.runs >= 2

    asyncio.run(main())
    # The server's own count of vacuums (n_dead_tup is no proof: deleting sessions
    # report their deletes up to a second late, after the vacuum has removed them).
    rows = sql(
        pg_server,
        "SELECT vacuum_count FROM pg_stat_user_tables"
        " WHERE schemaname = %s AND relname = 'messages'",
        fresh_schema,
    )
    (vacuums,) = rows[0]
    assert isinstance(vacuums, int)
    assert vacuums >= 2


def test_expired_rows_deleted_by_the_cleanup_count_toward_a_vacuum(
    pg_server: str, fresh_schema: str
) -> None:
    async def main() -> None:
        url = with_params(pg_server, schema=fresh_schema, vacuum_every=20)
        async with layers.from_url(url, expiry=0.05) as layer:
            for n in range(30):
                await layer.send("vac.expired", {"n": n})
            await asyncio.sleep(0.1)
            backend = backend_of(layer)
            assert backend._vacuum.runs == 0  # nothing delivered, nothing deleted yet
            assert await backend.cleanup() == 30
            await _until(lambda: backend._vacuum.runs >= 1)
            assert backend._vacuum.runs == 1

    asyncio.run(main())


def test_a_role_that_does_not_own_the_table_does_not_vacuum_it(
    pg_server: str, fresh_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    role = f"layers_novac_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with layers.from_url(with_params(pg_server, schema=fresh_schema)) as owner:
            await owner.send("novac.warm", {"n": 0})  # creates the schema as its owner
        sql(pg_server, f"CREATE ROLE {role} LOGIN")
        sql(pg_server, f"GRANT USAGE ON SCHEMA {fresh_schema} TO {role}")
        sql(pg_server, f"GRANT ALL ON ALL TABLES IN SCHEMA {fresh_schema} TO {role}")
        url = with_params(pg_server, schema=fresh_schema, vacuum_every=5, user=role)
        async with layers.from_url(url) as layer:
            await _through(layer, "novac.q", 10)
            backend = backend_of(layer)
            await _until(lambda: backend._vacuum._every == 0)
            assert backend._vacuum.runs == 0
            assert backend._vacuum._every == 0  # told once, then no more tries

    try:
        with caplog.at_level("INFO", logger="layers.postgres"):
            asyncio.run(main())
    finally:
        sql(pg_server, f"DROP OWNED BY {role}")
        sql(pg_server, f"DROP ROLE IF EXISTS {role}")
    assert any("does not own it" in r.getMessage() for r in caplog.records)


#: A release's ``send_one`` that is not this one's: it refuses every send.
_STALE_SEND = (
    "CREATE OR REPLACE FUNCTION {schema}.send_one(send_queue text, send_payload bytea,"
    " send_expiry float8, send_cap bigint, send_channel text, OUT queued bigint,"
    " OUT stored boolean) LANGUAGE plpgsql AS"
    " $$BEGIN RAISE EXCEPTION 'a previous release''s body'; END$$"
)


@pytest.mark.parametrize(
    ("version", "old_function"),
    [
        (1, "DROP FUNCTION {schema}.send_one"),  # version 1 had none
        (SCHEMA_VERSION - 1, _STALE_SEND),  # whichever version changed the body last
    ],
    ids=["version-1", "one-behind"],
)
def test_an_older_schema_is_upgraded_in_place_and_keeps_its_messages(
    pg_server: str, fresh_schema: str, version: int, old_function: str
) -> None:
    """An older release's schema gets this release's ``send_one``; queued messages stay."""

    async def main() -> None:
        url = with_params(pg_server, schema=fresh_schema)
        async with layers.from_url(url) as layer:
            await layer.send("old.q", {"n": 1})
        sql(pg_server, old_function.format(schema=fresh_schema))
        sql(
            pg_server,
            f"UPDATE {fresh_schema}.meta SET value = %s WHERE key = 'schema_version'",
            str(version),
        )
        # A new application_name makes this layer check the schema as a new process would.
        async with layers.from_url(with_params(url, application_name="upgraded")) as layer:
            await layer.send("old.q", {"n": 2})
            assert [(await layer.receive("old.q"))["n"] for _ in range(2)] == [1, 2]

    asyncio.run(main())
    assert sql(pg_server, f"SELECT value FROM {fresh_schema}.meta") == [(str(SCHEMA_VERSION),)]


def _store_rows(pg_server: str, table: str, queue: str, count: int = 20000) -> None:
    """Insert ``count`` rows into ``table`` behind the layer's back, ten minutes from expiry.

    ``queue`` is an SQL expression, which may use ``n``, the row's number from 1.
    """
    sql(
        pg_server,
        f"INSERT INTO {table} (queue, expires_at, payload) SELECT {queue},"
        f" now() + interval '10 minutes', '\\x00' FROM generate_series(1, {count}) AS n",
    )


async def _log_plans(layer: layers.ChannelLayer, plans: list[str]) -> None:
    """Append to ``plans`` every plan the server runs on ``layer``'s one pooled connection.

    auto_explain, nested statements (send_one's) included, reported to the client.
    """

    async def explain(conn: psycopg.AsyncConnection[Any]) -> None:
        conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
            " SET auto_explain.log_nested_statements = on; SET client_min_messages = log"
        )

    await backend_of(layer)._db.lease(explain)


@pytest.mark.parametrize("table", ["vacuumed", "new"])
@pytest.mark.parametrize("poll_only", [False, True], ids=["pooled", "poll_only"])
def test_plans_made_on_an_empty_table_keep_using_the_index(
    pg_server: str, fresh_schema: str, poll_only: bool, table: str
) -> None:
    """A backlog that arrives after the plans were made is not scanned whole.

    The server keeps a session's plans (prepared statements, send_one's PL/pgSQL).
    A plan made on a table a vacuum left empty is a sequential scan, which then
    reads every row of every queue. One made on a new table, which the planner
    guesses at ten pages, is a bitmap scan, which reads every entry of the queue,
    live and dead, and sorts them, at each claim (instead of walking the queue's
    head in the index and stopping at the first live row). The server's own account
    of the plans it ran (auto_explain, on the pool's only connection) shows neither.
    """
    url = with_params(pg_server, schema=fresh_schema, pool_min_size=1, pool_max_size=1)
    if poll_only:
        url = with_params(url, poll_only="true")
    plans: list[str] = []

    async def main() -> None:
        async with layers.from_url(url) as layer:
            await _through(layer, "plan.warm", 1)  # the schema, and an empty table
        messages = f"{fresh_schema}.messages"
        sql(pg_server, f"ALTER TABLE {messages} SET (autovacuum_enabled = false)")
        if table == "vacuumed":
            sql(pg_server, f"VACUUM {messages}")  # the planner now knows the table as empty
        async with layers.from_url(with_params(url, application_name="plans")) as layer:
            await _through(layer, "plan.q", 10)  # the session plans on the empty table
            _store_rows(pg_server, messages, "'plan.other'")
            await _log_plans(layer, plans)
            await _through(layer, "plan.q", 2)

    asyncio.run(main())
    ran = [plan for plan in plans if "on messages" in plan]
    assert len(ran) >= 2, plans  # a send and a receive at least
    assert not [plan for plan in ran if "Seq Scan on messages" in plan], ran
    assert not [plan for plan in ran if "Bitmap Heap Scan on messages" in plan], ran


@pytest.mark.parametrize("capacity", [100, 100000])
def test_a_short_queue_is_read_through_its_own_index_beside_a_long_one(
    pg_server: str, fresh_schema: str, capacity: int
) -> None:
    """Counting a queue never walks the other queues' rows in expiry order.

    The claim's "more" check and the capacity count read a queue's live rows up to a
    limit. Once the statistics say one queue holds most of the table (a backlog, a
    busy channel), the plan the server keeps for them (generic: made for any queue)
    could read the expiry index instead, filtering out every other queue's row: a
    claim on an empty queue then read the whole table. With a capacity below the
    backlog's span, send's count runs too (the span check passes it by otherwise).
    """
    url = with_params(
        pg_server, schema=fresh_schema, pool_min_size=1, pool_max_size=1, capacity=capacity
    )
    plans: list[str] = []

    async def main() -> None:
        async with layers.from_url(url) as layer:
            await _through(layer, "plan.warm", 1)  # the schema
        messages = f"{fresh_schema}.messages"
        sql(pg_server, f"ALTER TABLE {messages} SET (autovacuum_enabled = false)")
        _store_rows(pg_server, messages, "'plan.long'")
        sql(pg_server, f"ANALYZE {messages}")
        async with layers.from_url(with_params(url, application_name="plans")) as layer:
            for _ in range(3):  # past the server's five custom plans, for every statement
                await _through(layer, "plan.short", 4)
            for _ in range(6):  # the same for the hand-off's look at the queue
                await _handed(layer, "plan.short")
            await _log_plans(layer, plans)
            await _handed(layer, "plan.short")
            if capacity < 20000:  # the span is past the capacity: send counts the queue
                with pytest.raises(layers.ChannelFull):
                    await layer.send("plan.long", {"n": 0})
            else:
                await layer.send("plan.long", {"n": 0})
            await _through(layer, "plan.short", 2)

    asyncio.run(main())
    ran = [plan for plan in plans if "on messages" in plan]
    assert len(ran) >= 3, plans
    assert [plan for plan in ran if "AS handed" in plan], ran  # the hand-off's look ran
    assert not [plan for plan in ran if "messages_expires_at" in plan], ran


def test_statistics_may_scan_the_table_they_read_whole(pg_server: str, fresh_schema: str) -> None:
    """The plan guard is lifted for the statistics' own transaction."""
    url = with_params(pg_server, schema=fresh_schema, pool_min_size=1, pool_max_size=1)
    plans: list[str] = []

    async def main() -> None:
        async with layers.from_url(url) as layer:
            await _through(layer, "stats.warm", 1)
            table = f"{fresh_schema}.messages"
            _store_rows(pg_server, table, "'stats.' || (n % 50)")
            sql(pg_server, f"ANALYZE {table}")
            await _log_plans(layer, plans)
            statistics = await layer.statistics()
            assert statistics.pending == 20000

    asyncio.run(main())
    counted = [plan for plan in plans if "count(*)" in plan and "on messages" in plan]
    assert len(counted) == 1, plans
    assert "Seq Scan on messages" in counted[0], counted


def test_a_bad_synchronous_commit_names_the_allowed_values_and_the_bad_one() -> None:
    with pytest.raises(ConfigurationError, match=r"remote_apply, or default .* not 'maybe'"):
        PostgresBackend.prepare_options({"synchronous_commit": "maybe"})


def test_a_first_receive_that_finds_a_message_waits_for_no_listen(pg_url: str) -> None:
    """An event loop's first receive (each ``async_to_sync`` call is one) claims at once:
    a queued message comes without the listener's connection and LISTEN."""
    layer = layers.from_url(with_params(pg_url, poll_interval=5))

    async def send() -> None:
        await layer.flush()
        await layer.send("first.look", {"n": 1})

    async def take() -> None:
        assert await layer.receive("first.look") == {"n": 1}
        listener = backend_of(layer)._listener
        assert listener is not None
        assert listener.peek(backend_of(layer)._channel("first.look")) is None

    asyncio.run(send())
    asyncio.run(take())


def test_an_aclose_cut_short_by_a_timeout_still_closes_and_gives_back(pg_url: str) -> None:
    """With ``prefetch``: the caller's timeout fires at once; the pool still closes, and
    what the reader had prefetched is back in the table, in order."""

    async def main() -> None:
        layer = layers.from_url(with_params(pg_url, prefetch=100))
        await layer.flush()
        for n in range(50):
            await layer.send("close.cut", {"n": n})
        assert await layer.receive("close.cut") == {"n": 0}  # the reader took the rest
        db = backend_of(layer)._db
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await layer.aclose()
        for _ in range(500):  # up to 5 s
            if not db.is_open:
                break
            await asyncio.sleep(0.01)
        assert not db.is_open  # the pool closed after all
        async with layers.from_url(pg_url) as other:
            got = [(await other.receive("close.cut"))["n"] for _ in range(49)]
            assert got == list(range(1, 50))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(other.receive("close.cut"), 0.3)

    asyncio.run(main())


def test_a_claim_cancelled_while_queued_for_a_batch_does_not_hang(pg_url: str) -> None:
    """A claim waiting for the next batch is cancelled, and the batch's task runs first.

    The batch leaves the cancelled claim out, so it never runs: its caller must raise
    ``CancelledError`` at once, not wait for an outcome nothing will bring (it did,
    for ever, and so did the event loop's end). In a subprocess, so a hang fails.
    """
    code = f"""
import asyncio, layers
from layers.backends.postgres import PostgresBackend

async def main():
    async with layers.from_url({pg_url!r}) as layer:
        await layer.flush()
        backend = layer._state().backend
        assert isinstance(backend, PostgresBackend)
        batcher = backend._batcher
        first = asyncio.create_task(batcher.receive("batch.first", 1))  # runs inline
        await asyncio.sleep(0)
        queued = asyncio.create_task(batcher.receive("batch.queued", 1))
        await asyncio.sleep(0)  # queued for the next batch, whose task is scheduled
        queued.cancel()  # its caller resumes after that task's first step
        done, _ = await asyncio.wait([queued], timeout=3)
        print("done" if queued in done and queued.cancelled() else "hung")
        print(await first)

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.split() == ["done", "([],", "False)"], out.stdout
