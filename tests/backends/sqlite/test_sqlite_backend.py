"""The SQLite backend's primitives, on a real file in a temporary folder."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiosqlite
import pytest
from asgiref.sync import async_to_sync

from layers.backends.sqlite import SqliteBackend, SqliteChannelLayer, _connect, _hub, _sql
from layers.backends.sqlite import backend as backend_module
from layers.core.backend import Put
from layers.core.errors import BackendError, ConfigurationError

from .conftest import BackendFactory, arun


def _count(path: Path, table: str = "layers_messages") -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _insert_raw(path: Path, queue: str, payload: bytes, expires_in: float = 60.0) -> None:
    """Write a row the way another process would: another connection, no notify."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO layers_messages (queue, expires_at, payload) VALUES (?, ?, ?)",
            (queue, time.time() + expires_in, payload),
        )
    finally:
        conn.close()


def _watchers(path: Path | None = None) -> list[threading.Thread]:
    prefix = f"layers-sqlite-watch:{path}" if path else "layers-sqlite-watch"
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def _wait_for_no_watcher(path: Path) -> None:
    """Wait (bounded) until the watcher thread of ``path`` has exited."""
    for _ in range(500):
        if not _watchers(path):
            return
        time.sleep(0.01)


# -- the file -----------------------------------------------------------------------


def test_first_use_creates_the_file_in_wal_mode_with_the_schema(
    make_backend: BackendFactory, db_path: Path
) -> None:
    @arun
    async def run() -> None:
        backend = make_backend()
        assert not db_path.exists()  # noqa: ASYNC240 - construction does no I/O
        await backend.open()
        await backend.aclose()

    run()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _sql.SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"layers_messages", "layers_groups"} <= tables


def test_a_file_from_a_newer_schema_is_refused(make_backend: BackendFactory, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {_sql.SCHEMA_VERSION + 1}")

    @arun
    async def run() -> None:
        with pytest.raises(ConfigurationError, match="newer") as info:
            await make_backend().open()
        assert info.value.setting == "path"

    run()


def test_a_file_that_is_not_a_database_names_the_path(
    make_backend: BackendFactory, db_path: Path
) -> None:
    db_path.write_bytes(b"this is not a database, just some text " * 100)

    @arun
    async def run() -> None:
        with pytest.raises(ConfigurationError) as info:
            await make_backend().open()
        assert info.value.setting == "path"

    run()


# -- send and receive -----------------------------------------------------------------


@arun
async def test_fifo_and_limit(make_backend: BackendFactory) -> None:
    backend = make_backend()
    await backend.open()
    try:
        for i in range(10):
            assert await backend.send("q", b"%d" % i, expiry=60, capacity=100)
        assert await backend.receive("q", timeout=0, limit=3) == [b"0", b"1", b"2"]
        assert await backend.receive("q", timeout=0, limit=100) == [b"%d" % i for i in range(3, 10)]
        assert await backend.receive("q", timeout=0) == []
    finally:
        await backend.aclose()


@arun
async def test_capacity_is_exact_and_counts_only_unexpired(make_backend: BackendFactory) -> None:
    backend = make_backend()
    await backend.open()
    try:
        assert await backend.send("c", b"short", expiry=0.2, capacity=2)
        assert await backend.send("c", b"long", expiry=60, capacity=2)
        assert not await backend.send("c", b"full", expiry=60, capacity=2)
        await asyncio.sleep(0.3)  # "short" expires and frees a place
        assert await backend.send("c", b"again", expiry=60, capacity=2)
        assert await backend.receive("c", timeout=0, limit=10) == [b"long", b"again"]
    finally:
        await backend.aclose()


@arun
async def test_expired_payloads_are_never_returned(make_backend: BackendFactory) -> None:
    backend = make_backend()
    await backend.open()
    try:
        await backend.send("e", b"old", expiry=0.1, capacity=10)
        await asyncio.sleep(0.2)
        await backend.send("e", b"new", expiry=60, capacity=10)
        assert await backend.receive("e", timeout=0, limit=10) == [b"new"]
    finally:
        await backend.aclose()


@arun
async def test_send_many_keeps_order_and_skips_full_queues(make_backend: BackendFactory) -> None:
    backend = make_backend()
    await backend.open()
    try:
        assert await backend.send("full", b"x", expiry=60, capacity=1)
        puts = [
            Put("a", b"a1", 60, 10),
            Put("full", b"f", 60, 1),
            Put("b", b"b1", 60, 10),
            Put("a", b"a2", 60, 10),  # same queue again: a later statement
            Put("tiny", b"t1", 60, 1),
            Put("tiny", b"t2", 60, 1),  # the first filled it
        ]
        assert await backend.send_many(puts) == [True, False, True, True, True, False]
        assert await backend.receive("a", timeout=0, limit=10) == [b"a1", b"a2"]
        assert await backend.receive("full", timeout=0, limit=10) == [b"x"]
        assert await backend.receive("tiny", timeout=0, limit=10) == [b"t1"]
    finally:
        await backend.aclose()


@arun
async def test_send_many_over_several_chunks(make_backend: BackendFactory) -> None:
    backend = make_backend()
    await backend.open()
    try:
        puts = [Put(f"g{i}", b"%d" % i, 60, 5) for i in range(450)]
        assert await backend.send_many(puts) == [True] * 450
        assert await backend.receive("g449", timeout=0) == [b"449"]
    finally:
        await backend.aclose()


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "fallback"])
def test_both_take_and_insert_paths_agree(
    make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch, returning: bool
) -> None:
    """The pre-3.35 path (BEGIN IMMEDIATE; SELECT; DELETE) behaves like RETURNING."""
    monkeypatch.setattr(backend_module, "HAS_RETURNING", returning)

    @arun
    async def run() -> None:
        backend = make_backend()
        assert backend._returning is returning
        await backend.open()
        try:
            for i in range(5):
                await backend.send("p", b"%d" % i, expiry=60, capacity=5)
            assert not await backend.send("p", b"x", expiry=60, capacity=5)
            assert await backend.send_many([Put("p", b"y", 60, 5), Put("o", b"z", 60, 5)]) == [
                False,
                True,
            ]
            assert await backend.receive("p", timeout=0, limit=2) == [b"0", b"1"]
            assert await backend.receive("p", timeout=0, limit=9) == [b"2", b"3", b"4"]
            assert await backend.receive("o", timeout=0) == [b"z"]
        finally:
            await backend.aclose()

    run()


@arun
async def test_concurrent_tasks_on_one_instance_never_duplicate(
    make_backend: BackendFactory,
) -> None:
    """Many tasks share one connection; the lock keeps every take atomic."""
    backend = make_backend()
    await backend.open()
    total = 300
    got: list[bytes] = []

    async def consume() -> None:
        while True:
            items = await backend.receive("shared", timeout=0.5, limit=3)
            if not items:
                return
            got.extend(items)

    async def produce(start: int) -> None:
        for i in range(start, total, 3):
            assert await backend.send("shared", b"%d" % i, expiry=60, capacity=total)

    try:
        await asyncio.gather(*(produce(s) for s in range(3)))
        await asyncio.gather(*(consume() for _ in range(4)))
    finally:
        await backend.aclose()
    assert sorted(int(x) for x in got) == list(range(total))


# -- waking up ------------------------------------------------------------------------


@arun
async def test_in_process_send_wakes_a_receiver_without_the_watcher(
    make_backend: BackendFactory,
) -> None:
    """With a 10 s poll, only the direct in-process wake-up can answer within 5 s."""
    receiver, sender = make_backend(poll_interval=10), make_backend(poll_interval=10)
    await receiver.open()
    await sender.open()
    try:
        waiting = asyncio.create_task(receiver.receive("w", timeout=5))
        await asyncio.sleep(0.05)
        await sender.send("w", b"hello", expiry=60, capacity=10)
        assert await waiting == [b"hello"]
    finally:
        await receiver.aclose()
        await sender.aclose()


def test_in_process_wake_up_crosses_event_loops(make_backend: BackendFactory) -> None:
    """A receive in another thread's loop is woken by a send here (call_soon_threadsafe)."""
    result: list[list[bytes]] = []
    started = threading.Event()

    def other_loop() -> None:
        async def run() -> None:
            backend = make_backend(poll_interval=10)
            await backend.open()
            try:
                started.set()
                result.append(await backend.receive("x", timeout=5))
            finally:
                await backend.aclose()

        asyncio.run(run())

    thread = threading.Thread(target=other_loop)
    thread.start()
    assert started.wait(10)

    @arun
    async def send() -> None:
        backend = make_backend(poll_interval=10)
        await backend.open()
        try:
            await asyncio.sleep(0.05)
            await backend.send("x", b"across", expiry=60, capacity=10)
        finally:
            await backend.aclose()

    send()
    thread.join(10)
    assert result == [[b"across"]]


@arun
async def test_watcher_wakes_for_a_commit_by_another_connection(
    make_backend: BackendFactory, db_path: Path
) -> None:
    """A row written by a foreign connection (no in-process notify) is found by the watcher."""
    backend = make_backend(poll_interval=0.005)
    await backend.open()
    try:
        waiting = asyncio.create_task(backend.receive("far", timeout=10))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(_insert_raw, db_path, "other", b"not for us")
        await asyncio.to_thread(_insert_raw, db_path, "far", b"from afar")
        assert await waiting == [b"from afar"]
        assert await backend.receive("other", timeout=0) == [b"not for us"]
    finally:
        await backend.aclose()


async def _stale_read(backend: SqliteBackend, db_path: Path) -> aiosqlite.Cursor:
    """Leave ``backend``'s connection in a read transaction another process then outdates.

    SQLite answers a write on such a connection with SQLITE_BUSY at once, without its
    busy handler; the same immediate answer has been seen between processes in
    ordinary use (a send of ``layers demo --processes 2`` failed with it).
    """
    for i in range(2):
        await backend.send("held", b"%d" % i, expiry=60, capacity=10)
    conn = backend._conn  # this project's own state, to stand in for SQLite's reasons
    assert conn is not None
    cursor = await conn.execute("SELECT payload FROM layers_messages WHERE queue = 'held'")
    assert await cursor.fetchone() is not None  # the statement stays open: a read snapshot
    await asyncio.to_thread(_insert_raw, db_path, "elsewhere", b"newer")
    return cursor


@arun
async def test_an_immediate_busy_is_waited_out_like_a_busy_lock(
    make_backend: BackendFactory, db_path: Path
) -> None:
    """A write SQLite refuses at once as busy is retried until ``busy_timeout``."""
    backend = make_backend(busy_timeout=5.0)
    await backend.open()
    try:
        cursor = await _stale_read(backend, db_path)
        release = asyncio.get_running_loop().call_later(
            0.2, lambda: asyncio.ensure_future(cursor.close())
        )
        try:
            assert await backend.send("q", b"kept", expiry=60, capacity=10)
        finally:
            release.cancel()
        assert await backend.receive("q", timeout=0) == [b"kept"]
    finally:
        await backend.aclose()


@arun
async def test_opening_a_file_with_the_schema_needs_no_write_lock(
    make_backend: BackendFactory, db_path: Path
) -> None:
    """Each ``async_to_sync`` call opens the backend in a new event loop: while another
    connection writes, that open reads the schema version instead of waiting for the
    write lock to run a dozen ``CREATE ... IF NOT EXISTS``."""
    first = make_backend()
    await first.open()
    await first.send("q", b"kept", expiry=60, capacity=10)
    await first.aclose()  # the last instance: the next open starts afresh
    blocker = sqlite3.connect(db_path, isolation_level=None)
    backend = make_backend(busy_timeout=5)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        await backend.open()
        assert time.monotonic() - started < 2  # did not wait out busy_timeout
    finally:
        blocker.close()
        await backend.aclose()
    backend = make_backend()
    await backend.open()
    try:
        assert await backend.receive("q", timeout=0) == [b"kept"]
    finally:
        await backend.aclose()


@arun
async def test_a_busy_that_outlasts_busy_timeout_fails_and_loses_nothing(
    make_backend: BackendFactory, db_path: Path
) -> None:
    backend = make_backend(busy_timeout=0.3)
    await backend.open()
    try:
        cursor = await _stale_read(backend, db_path)
        started = time.monotonic()
        with pytest.raises(BackendError, match="locked"):
            await backend.send("q", b"refused", expiry=60, capacity=10)
        await cursor.close()
        # Takes run on their own connection, never inside a read snapshot: what refuses
        # them is a write lock held elsewhere for longer than busy_timeout.
        blocker = sqlite3.connect(db_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(BackendError, match="locked"):
                await backend.receive("held", timeout=0)
        finally:
            blocker.close()
        assert time.monotonic() - started >= 0.5  # each waited about busy_timeout
        assert await backend.receive("q", timeout=0) == []
        assert await backend.receive("held", timeout=0, limit=10) == [b"0", b"1"]
    finally:
        await backend.aclose()


@arun
async def test_receive_times_out_empty(make_backend: BackendFactory) -> None:
    backend = make_backend()
    await backend.open()
    try:
        assert await backend.receive("nothing", timeout=0.05) == []
    finally:
        await backend.aclose()


@arun
async def test_cancelled_receive_returns_a_take_in_flight(make_backend: BackendFactory) -> None:
    """Cancel a receive while its DELETE runs: it waits for it and returns its rows."""
    backend = make_backend()
    await backend.open()
    try:
        for i in range(3):
            await backend.send("cx", b"%d" % i, expiry=60, capacity=10)
        task = asyncio.create_task(backend.receive("cx", timeout=5, limit=2))
        await asyncio.sleep(0)  # the task hands the take to its thread and waits there
        task.cancel()
        assert await task == [b"0", b"1"]  # see Backend.receive: taken, so returned
        assert await backend.receive("cx", timeout=0, limit=10) == [b"2"]
    finally:
        await backend.aclose()


@arun
async def test_a_restore_cancelled_while_it_waits_for_the_lock_reports_it_ran(
    make_backend: BackendFactory, db_path: Path
) -> None:
    """A restore cancelled while its statement waits for another connection's write
    lock returns True once the statement ran (see ``Backend.restore``), and stores once;
    one that could not run, the lock held past ``busy_timeout``, returns False."""
    backend = make_backend(busy_timeout=0.6)
    await backend.open()
    try:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            task = asyncio.create_task(backend.restore("rx", [(b"r0", 60.0)]))
            await asyncio.sleep(0.1)  # handed to the thread, waiting for the lock
            task.cancel()
            await asyncio.sleep(0.1)
            assert not task.done(), "a cancelled restore did not wait for its statement"
            blocker.execute("ROLLBACK")
            assert await task is True
            blocker.execute("BEGIN IMMEDIATE")
            task = asyncio.create_task(backend.restore("rx", [(b"r1", 60.0)]))
            await asyncio.sleep(0.1)
            task.cancel()
            assert await task is False  # refused as busy: nothing stored
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        assert await backend.receive("rx", timeout=0, limit=10) == [b"r0"]
    finally:
        await backend.aclose()


@arun
async def test_cancelled_waiting_receive_takes_nothing(make_backend: BackendFactory) -> None:
    backend = make_backend()
    await backend.open()
    try:
        task = asyncio.create_task(backend.receive("cw", timeout=5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.send("cw", b"later", expiry=60, capacity=10)
        assert await backend.receive("cw", timeout=0) == [b"later"]
    finally:
        await backend.aclose()


# -- groups and flush -----------------------------------------------------------------


@arun
async def test_groups(make_backend: BackendFactory) -> None:
    backend = make_backend()
    await backend.open()
    try:
        await backend.group_add("g", "a", expiry=60)
        await backend.group_add("g", "a", expiry=60)
        await backend.group_add("g", "b", expiry=0.1)
        await backend.group_add("h", "c", expiry=60)
        assert sorted(await backend.group_channels("g")) == ["a", "b"]
        await asyncio.sleep(0.2)
        assert await backend.group_channels("g") == ["a"]
        await backend.group_add("g", "b", expiry=60)  # re-adding refreshes
        await backend.group_discard("g", "a")
        await backend.group_discard("g", "never")
        assert await backend.group_channels("g") == ["b"]
        assert await backend.group_channels("h") == ["c"]
    finally:
        await backend.aclose()


@arun
async def test_flush_empties_the_file(make_backend: BackendFactory, db_path: Path) -> None:
    backend = make_backend()
    await backend.open()
    try:
        await backend.send("f", b"1", expiry=60, capacity=10)
        await backend.group_add("g", "f", expiry=60)
        await backend.flush()
        assert _count(db_path) == 0
        assert _count(db_path, "layers_groups") == 0
        assert await backend.receive("f", timeout=0) == []
    finally:
        await backend.aclose()


# -- staying bounded ------------------------------------------------------------------


@arun
async def test_expired_rows_are_deleted_in_batches(
    make_backend: BackendFactory, db_path: Path
) -> None:
    # The writer's first write runs its first cleanup; the next is an hour away, so
    # however slowly the machine runs, nothing deletes the rows once they expire. Then a
    # layer that cleans up every 10 ms deletes them, one batch per send.
    writer = make_backend(cleanup_interval=3600)
    await writer.open()
    try:
        await writer.send("alive", b"y", expiry=60, capacity=100)  # the first cleanup
        total = backend_module._CLEANUP_BATCH * 2 + 10
        puts = [Put(f"dead{i}", b"x", 0.05, 10) for i in range(total)]
        await writer.send_many(puts)
        await writer.group_add("gone", "x", expiry=0.05)
        await asyncio.sleep(0.1)
        await writer.send("alive", b"y", expiry=60, capacity=100)
        assert _count(db_path) == total + 2  # expired rows stay until a cleanup runs
    finally:
        await writer.aclose()
    backend = make_backend(cleanup_interval=0.01)
    await backend.open()
    try:
        rounds = 0
        while _count(db_path) > rounds + 2 and rounds < 10:
            await asyncio.sleep(0.02)
            await backend.send("alive", b"y", expiry=60, capacity=100)
            rounds += 1
        assert _count(db_path) == rounds + 2  # only the live "alive" rows are left
        assert rounds == 3  # one batch of _CLEANUP_BATCH per send: 500 + 500 + 10
        assert _count(db_path, "layers_groups") == 0
    finally:
        await backend.aclose()


@arun
async def test_wal_file_stays_bounded(make_backend: BackendFactory, db_path: Path) -> None:
    """16 MiB pass through; checkpoints and journal_size_limit keep the WAL near 4 MiB."""
    backend = make_backend(cleanup_interval=0.05)
    await backend.open()
    try:
        payload = b"p" * 8192
        for _ in range(2048):
            await backend.send("big", payload, expiry=60, capacity=10)
            assert await backend.receive("big", timeout=0) == [payload]
        wal = Path(f"{db_path}-wal")
        limit = _connect.JOURNAL_SIZE_LIMIT
        assert wal.stat().st_size <= 2 * limit  # noqa: ASYNC240
    finally:
        await backend.aclose()


# -- lifecycle ------------------------------------------------------------------------


@arun
async def test_aclose_is_idempotent_and_stops_the_watcher(
    make_backend: BackendFactory, db_path: Path
) -> None:
    never_opened = make_backend()
    await never_opened.aclose()
    backend = make_backend()
    await backend.open()
    assert await backend.receive("idle", timeout=0.05) == []  # starts the watcher
    assert _watchers()
    assert _watchers(db_path)
    await backend.aclose()
    await backend.aclose()
    assert str(db_path) not in _hub._hubs
    await asyncio.to_thread(_wait_for_no_watcher, db_path)
    assert not _watchers(db_path)


def test_many_event_loops_through_async_to_sync(
    make_layer: Callable[..., SqliteChannelLayer], db_path: Path
) -> None:
    """async_to_sync makes a loop per call; every call's connection is released."""
    layer = make_layer()
    for i in range(15):
        async_to_sync(layer.send)("loops", {"i": i})
    got = [async_to_sync(layer.receive)("loops")["i"] for _ in range(15)]
    assert got == list(range(15))
    assert str(db_path) not in _hub._hubs  # every loop's backend was closed with its loop
    _wait_for_no_watcher(db_path)
    assert not _watchers(db_path)


@arun
async def test_queue_sizes_match_the_rows(make_backend: BackendFactory, db_path: Path) -> None:
    """The per-queue row counts kept by triggers agree with the table after mixed work."""
    backend = make_backend(cleanup_interval=0.01)
    await backend.open()
    try:
        for i in range(30):
            await backend.send(f"s{i % 4}", b"x", expiry=0.05 if i % 3 else 60, capacity=50)
        await backend.send_many([Put(f"s{k}", b"y", 60, 50) for k in range(6)])
        await backend.receive("s1", timeout=0, limit=3)
        await asyncio.sleep(0.1)
        await backend.send("s0", b"z", expiry=60, capacity=50)  # runs a cleanup round
        with sqlite3.connect(db_path) as conn:
            sizes = dict(conn.execute("SELECT queue, size FROM layers_queues WHERE size > 0"))
            rows = dict(conn.execute("SELECT queue, count(*) FROM layers_messages GROUP BY queue"))
            empty = conn.execute("SELECT count(*) FROM layers_queues WHERE size <= 0").fetchone()
        assert sizes == rows
        assert empty == (0,)
        await backend.flush()
        assert _count(db_path, "layers_queues") == 0
    finally:
        await backend.aclose()


@arun
async def test_rows_reported_for_a_take_whose_caller_has_gone_are_not_kept(
    make_backend: BackendFactory, db_path: Path
) -> None:
    """A take reports each row it deletes (``layers_keep``) for a cancelled caller; once
    that caller stopped waiting (after ``_KEPT_WAIT``), a row reported late is not kept
    for good under a token nobody will read again."""
    backend = make_backend()
    await backend.open()
    try:
        await backend.send("lk", b"0", expiry=60, capacity=10)
        blocker = sqlite3.connect(db_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            task = asyncio.create_task(backend.receive("lk", timeout=5))
            await asyncio.sleep(0.1)  # the take waits for the lock in its thread
            task.cancel()
            await asyncio.sleep(0.1)
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        assert await asyncio.wait_for(task, 5) == [b"0"]  # waited for, and returned
        assert backend._kept == {}
        backend._keep_row(10**9, 1, time.time() + 60, b"late")  # a caller that has gone
        assert backend._kept == {}
    finally:
        await backend.aclose()
