"""Reply-inbox messages carried in NOTIFY payloads: delivered once, in order, durable.

A reply channel's message rides in its NOTIFY when it fits; the row stays the
durable copy until the reader deletes it. These tests check that the payload path
is really taken (the row outlives the delivery), that a claim finding an already
delivered row skips it (after a listener reconnect), that a notification lost while
the listener reconnects is found in the table, that mixed carried and claimed
messages keep their order, and that ``flush`` drops notes already queued.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

import layers
from layers.backends.postgres import PostgresBackend, PostgresChannelLayer, _inbox, _replies
from layers.core.errors import BackendError

from .servers import sql, with_params

pytestmark = pytest.mark.postgres

SCHEMA = "layers_test_notes"


def backend_of(layer: layers.ChannelLayer) -> PostgresBackend:
    backend = layer._state().backend
    assert isinstance(backend, PostgresBackend)
    return backend


def inbox_rows(url: str, reply: str) -> int:
    inbox = reply[: reply.index("!") + 1]
    rows = sql(url.split("?")[0], f"SELECT count(*) FROM {SCHEMA}.messages WHERE queue = %s", inbox)
    return int(rows[0][0])  # type: ignore[call-overload]


async def kill_listener(url: str, app: str) -> int:
    """Terminate the LISTEN connection of application ``app``; return how many died."""
    rows = await asyncio.to_thread(
        sql,
        url.split("?")[0],
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = %s AND query LIKE '%%LISTEN %%'",
        app,
    )
    return int(rows[0][0])  # type: ignore[call-overload]


@pytest.fixture
def url(pg_server: str) -> str:
    return with_params(pg_server, schema=SCHEMA, application_name=f"notes-{uuid.uuid4().hex[:8]}")


Pair = tuple[layers.ChannelLayer, layers.ChannelLayer]


def with_pair(url: str, body: Callable[[Pair], Awaitable[None]]) -> None:
    """Run ``body(reader, writer)`` in a fresh event loop, with a time limit."""

    async def main() -> None:
        async with layers.from_url(url) as reader, layers.from_url(url) as writer:
            async with asyncio.timeout(60):
                await body((reader, writer))

    asyncio.run(main())


async def warm(reader: layers.ChannelLayer, writer: layers.ChannelLayer) -> str:
    """A reply channel whose inbox is LISTENed to and drained (notes in use)."""
    reply = await reader.new_channel()
    await writer.send(reply, {"warm": True})
    async with asyncio.timeout(10):
        assert await reader.receive(reply) == {"warm": True}
    return reply


async def nothing_within(layer: layers.ChannelLayer, channel: str, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            got = await layer.receive(channel)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {got!r}")


# -- the ledger on its own ---------------------------------------------------------------


def test_ledger_skips_a_claimed_row_already_delivered_from_its_note() -> None:
    led = _inbox.InboxLedger()
    assert led.acquire("owner")
    assert led.take_note(7)
    started = led.begin_claim()
    assert led.end_claim(1, started, [7, 8]) == [False, True]
    assert led.delivered == set()


def test_ledger_drops_a_note_of_a_claimed_row_until_the_claim_marker() -> None:
    led = _inbox.InboxLedger()
    led.acquire("owner")
    started = led.begin_claim()
    assert led.end_claim(1, started, [5]) == [True]
    assert not led.take_note(5)  # the note came after the claim took the row
    led.marker(1)
    assert led.claimed == {}
    assert led.claims == {}


def test_ledger_marker_releases_claims_completed_before_its_claim_started() -> None:
    led = _inbox.InboxLedger()
    led.acquire("owner")
    led.end_claim(1, led.begin_claim(), [1])  # its marker never reaches the owner
    second = led.begin_claim()
    led.end_claim(2, second, [2])
    led.marker(2)
    assert led.claims == {}
    assert led.claimed == {}


def test_ledger_keeps_an_id_another_claim_may_still_return() -> None:
    led = _inbox.InboxLedger()
    led.acquire("owner")
    assert led.take_note(3)
    started = led.begin_claim()  # in flight: it may have deleted row 3
    led.deleted([3], set())
    assert 3 in led.delivered
    assert led.end_claim(9, started, [3]) == [False]
    assert 3 not in led.delivered
    # Deleted by something else (expiry) while no claim runs: forgotten at once.
    assert led.take_note(4)
    led.deleted([4], set())
    assert led.delivered == set()


def test_ledger_has_one_owner() -> None:
    led = _inbox.InboxLedger()
    assert led.acquire("a")
    assert not led.acquire("b")
    led.release("a")
    assert led.acquire("b")


def test_parse_note() -> None:
    assert _inbox.parse_note("p12:aGk=\n") == (12, b"hi")
    assert _inbox.parse_note("") == (_inbox.CLAIM, None)
    assert _inbox.parse_note("m5") == (_inbox.MARKER, 5)
    assert _inbox.parse_note("zzz") == (_inbox.CLAIM, None)


# -- on the server -------------------------------------------------------------------------


def test_reply_is_delivered_from_the_notify_and_its_row_deleted_later(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(pair: Pair) -> None:
        reader, writer = pair
        reply = await warm(reader, writer)
        await asyncio.sleep(0.2)  # the warm-up row's delete
        monkeypatch.setattr(_replies, "_DELETE_DELAY", 0.5)
        await writer.send(reply, {"n": 1})
        async with asyncio.timeout(10):
            assert await reader.receive(reply) == {"n": 1}
        # Delivered while its row still exists: it came from the NOTIFY, not a claim.
        assert await asyncio.to_thread(inbox_rows, url, reply) == 1
        await asyncio.sleep(1.0)
        assert await asyncio.to_thread(inbox_rows, url, reply) == 0
        assert backend_of(reader)._inboxes.ledger(reply[: reply.index("!") + 1]).delivered == set()

    with_pair(url, body)


def test_claim_after_listener_reconnect_skips_rows_already_delivered(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(pair: Pair) -> None:
        reader, writer = pair
        reply = await warm(reader, writer)
        monkeypatch.setattr(_replies, "_DELETE_DELAY", 30.0)
        for i in range(3):
            await writer.send(reply, {"n": i})
        async with asyncio.timeout(10):
            got = [await reader.receive(reply) for _ in range(3)]
        assert got == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert await asyncio.to_thread(inbox_rows, url, reply) >= 3  # not deleted yet
        app = dict(p.split("=") for p in url.split("?")[1].split("&"))["application_name"]
        assert await kill_listener(url, app) == 1
        # The reconnected listener makes the reader claim: it finds the three rows.
        await writer.send(reply, {"n": 3})
        async with asyncio.timeout(10):
            assert await reader.receive(reply) == {"n": 3}
        await nothing_within(reader, reply, 1.5)  # past a poll: still no duplicate

    with_pair(url, body)


def test_notification_lost_while_reconnecting_is_found_in_the_table(url: str) -> None:
    async def body(pair: Pair) -> None:
        reader, writer = pair
        reply = await warm(reader, writer)
        app = dict(p.split("=") for p in url.split("?")[1].split("&"))["application_name"]
        sent = 0
        received: list[int] = []

        async def consume() -> None:
            while True:
                received.append((await reader.receive(reply))["n"])

        task = asyncio.create_task(consume())
        try:
            for round_ in range(3):
                await kill_listener(url, app)
                for _ in range(20):  # some of these NOTIFYs go nowhere
                    try:
                        await writer.send(reply, {"n": sent})
                    except BackendError:
                        continue
                    sent += 1
                await asyncio.sleep(0.05 * round_)
            async with asyncio.timeout(15):
                while len(received) < sent:  # noqa: ASYNC110 - polling a plain list
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.2)  # a poll later: nothing more arrives
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert received == list(range(sent))

    with_pair(url, body)


def test_carried_and_claimed_messages_keep_their_order(url: str) -> None:
    async def body(pair: Pair) -> None:
        reader, writer = pair
        reply = await warm(reader, writer)
        # Around the carrying limit, and far above it: both paths, interleaved.
        sizes = [10, 9000, 20, *range(5500, 5720, 11), 70_000, 30, 9000, 40]
        for i, size in enumerate(sizes):
            await writer.send(reply, {"n": i, "data": b"x" * size})
        async with asyncio.timeout(20):
            got = [await reader.receive(reply) for _ in sizes]
        assert [m["n"] for m in got] == list(range(len(sizes)))
        assert [len(m["data"]) for m in got] == sizes
        await nothing_within(reader, reply, 1.2)

    with_pair(url, body)


def test_group_send_and_batched_sends_to_reply_channels_arrive_once_in_order(url: str) -> None:
    async def body(pair: Pair) -> None:
        reader, writer = pair
        await warm(reader, writer)
        replies = [await reader.new_channel() for _ in range(3)]
        group = f"g{uuid.uuid4().hex[:8]}"
        for reply in replies:
            await writer.group_add(group, reply)
        # Concurrent sends leave in one batched statement; group_send in another.
        await asyncio.gather(*(writer.send(replies[0], {"n": i}) for i in range(50)))
        await writer.group_send(group, {"g": 1, "big": b"y" * 7000})
        await writer.group_send(group, {"g": 2})
        async with asyncio.timeout(20):
            first = [await reader.receive(replies[0]) for _ in range(52)]
            others = [[await reader.receive(r) for _ in range(2)] for r in replies[1:]]
        assert sorted(m["n"] for m in first[:50]) == list(range(50))
        assert [m["g"] for m in first[50:]] == [1, 2]
        for got in others:
            assert [m["g"] for m in got] == [1, 2]
        for reply in replies:
            await nothing_within(reader, reply, 0.3)

    with_pair(url, body)


def test_flush_drops_notes_already_queued(url: str) -> None:
    async def body(pair: Pair) -> None:
        reader, writer = pair
        reply = await warm(reader, writer)
        await writer.send(reply, {"old": True})
        await asyncio.sleep(0.3)  # its NOTIFY reached the reader's listener
        await reader.flush()
        await nothing_within(reader, reply, 1.2)
        await writer.send(reply, {"new": True})
        async with asyncio.timeout(10):
            assert await reader.receive(reply) == {"new": True}

    with_pair(url, body)


def test_a_second_event_loop_of_the_layer_never_duplicates(url: str) -> None:
    async def main() -> None:
        """Two loops (threads) of one layer read one inbox: each reply arrives once."""
        layer = layers.from_url(url)
        async with layers.from_url(url) as writer:
            reply = await layer.new_channel()
            await writer.send(reply, {"warm": True})
            async with asyncio.timeout(10):
                assert await layer.receive(reply) == {"warm": True}
            other = await layer.new_channel()
            got_other: list[dict[str, object]] = []

            def second_loop() -> None:
                async def run() -> None:
                    try:
                        while True:
                            async with asyncio.timeout(3):
                                got_other.append(await layer.receive(other))
                    except TimeoutError:
                        pass
                    finally:
                        await layer.aclose()

                asyncio.run(run())

            thread = asyncio.create_task(asyncio.to_thread(second_loop))
            await asyncio.sleep(0.3)
            for i in range(30):
                await writer.send(reply if i % 2 else other, {"n": i})
            got: list[dict[str, object]] = []
            try:
                async with asyncio.timeout(3):
                    while True:
                        got.append(await layer.receive(reply))
            except TimeoutError:
                pass
            await thread
            await layer.aclose()
        mine = [m["n"] for m in got]
        theirs = [m["n"] for m in got_other]
        # Each loop may see only its own channel's messages, never one twice.
        assert len(mine) == len(set(mine))
        assert len(theirs) == len(set(theirs))
        assert set(mine) <= set(range(1, 30, 2))
        assert set(theirs) <= set(range(0, 30, 2))

    asyncio.run(main())


# -- prefetch: what a process held goes back to the head of the queue ------------------------


def test_prefetched_messages_go_back_in_order_when_the_layer_closes(url: str) -> None:
    async def main() -> None:
        channel = f"pf.{uuid.uuid4().hex[:8]}"
        async with layers.from_url(url) as writer, layers.from_url(url) as other:
            for i in range(50):
                await writer.send(channel, {"n": i})
            holder = PostgresChannelLayer(url=url, prefetch=100)
            async with asyncio.timeout(10):
                assert await holder.receive(channel) == {"n": 0}
            # Let its reader go idle first: a close that races the reader's step into
            # its linger is the core's business, not this backend's.
            await asyncio.sleep(0.2)
            await holder.aclose()  # gives back what it held
            await writer.send(channel, {"n": 50})
            async with asyncio.timeout(10):
                got = [(await other.receive(channel))["n"] for _ in range(50)]
            assert got == list(range(1, 51))
            await nothing_within(other, channel, 0.5)

    asyncio.run(main())


def test_restore_puts_payloads_before_the_oldest_row(url: str) -> None:
    async def main() -> None:
        queue = f"restore.{uuid.uuid4().hex[:8]}"
        async with layers.from_url(url) as layer:
            backend = await layer._state().ready()
            assert isinstance(backend, PostgresBackend)
            assert await backend.send(queue, b"late", expiry=60, capacity=10)
            assert await backend.restore(queue, [(b"first", 60.0), (b"second", 60.0)])
            assert await backend.restore(queue, [(b"zeroth", 60.0), (b"gone", 0.001)])
            await asyncio.sleep(0.05)
            got = await backend.receive(queue, timeout=1, limit=10)
            assert got == [b"zeroth", b"first", b"second", b"late"]
            empty = f"restore.{uuid.uuid4().hex[:8]}"
            assert await backend.restore(empty, [(b"a", 60.0)])
            assert await backend.send(empty, b"b", expiry=60, capacity=10)
            assert await backend.receive(empty, timeout=1, limit=10) == [b"a", b"b"]

    asyncio.run(main())


# -- the listener ------------------------------------------------------------------------


def test_notifications_read_while_the_listener_runs_a_statement_are_not_lost(
    pg_server: str,
) -> None:
    """The driver reads notifications that arrive during LISTEN: they must reach the notes.

    Each new channel makes the listener run a LISTEN statement on its connection while
    another connection NOTIFYs a watched channel in a tight loop; every notification
    sent must be queued as a note, whichever way it was read.
    """
    from layers.backends.postgres._listener import Listener, notify_channel

    sent = 1500  # below MAX_NOTES, so nothing is dropped for want of a reader

    def notify_many(channel: str) -> None:
        import psycopg

        with psycopg.connect(pg_server, autocommit=True) as conn:
            for _ in range(sent):
                conn.execute("SELECT pg_notify(%s, '')", (channel,))

    async def main() -> None:
        listener = Listener(pg_server, {})
        try:
            channel = notify_channel(SCHEMA, f"watched-{uuid.uuid4().hex}")
            watch = listener.watch(channel)
            watch.notes = _inbox.Notes()
            async with asyncio.timeout(10):
                await watch.listening.wait()
            sender = asyncio.create_task(asyncio.to_thread(notify_many, channel))
            others = 0
            while not sender.done():  # a LISTEN statement per new channel, meanwhile
                other = listener.watch(notify_channel(SCHEMA, f"other-{others}"))
                others += 1
                async with asyncio.timeout(10):
                    await other.listening.wait()
            await sender
            for _ in range(100):  # up to 10 s for the last ones to arrive
                if len(watch.notes) >= sent:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
            assert len(watch.notes) == sent
            assert others > 10  # the statements really overlapped the notifications
        finally:
            await listener.aclose()

    asyncio.run(main())


def test_a_quiet_listener_checks_its_connection(
    pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no notification for a health interval, the listener runs ``SELECT 1``."""
    from layers.backends.postgres import _listener

    monkeypatch.setattr(_listener, "_HEALTH_INTERVAL", 0.2)
    app = f"quiet-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        listener = _listener.Listener(pg_server, {"application_name": app})
        try:
            watch = listener.watch(_listener.notify_channel(SCHEMA, "quiet"))
            async with asyncio.timeout(10):
                await watch.listening.wait()
            await asyncio.sleep(1.0)  # several quiet intervals
            query = "SELECT query FROM pg_stat_activity WHERE application_name = %s"
            rows = await asyncio.to_thread(sql, pg_server, query, app)
            assert rows == [("SELECT 1",)]
        finally:
            await listener.aclose()

    asyncio.run(main())
