"""The Redis backend against a real server: layout, atomicity, pipelining, lifecycle."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis
from asgiref.sync import async_to_sync

import layers
from layers.backends.redis import RedisChannelLayer
from layers.core.errors import BackendError, ChannelFull


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url.split("?")[0])


def named_clients(url: str, name: str, *, settle: int | None = None) -> int:
    """Count the server's clients called ``name``; with ``settle``, wait for that count."""
    for _ in range(50):
        count = sum(1 for c in client(url).client_list() if c.get("name") == name)
        if settle is None or count == settle:
            break
        time.sleep(0.05)  # the server notices a closed socket a moment later
    return count


def test_keys_carry_hash_tags_and_a_ttl(shared_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(shared_url, expiry=30) as layer:
            await layer.send("chat.room", {"n": 1})
            reply = await layer.new_channel()
            await layer.send(reply, {"n": 2})
            await layer.group_add("room", reply)
            prefix = layer._backend_options["config"].prefix
            r = client(shared_url)
            keys = sorted(k.decode() for k in r.scan_iter(f"{prefix}:*"))
            inbox = reply[: reply.index("!") + 1]
            assert keys == sorted(
                [f"{prefix}:q:{{chat.room}}", f"{prefix}:q:{{{inbox}}}", f"{prefix}:g:{{room}}"]
            )
            assert 0 < r.pttl(f"{prefix}:q:{{chat.room}}") <= 30_000
            await layer.flush()
            assert list(r.scan_iter(f"{prefix}:*")) == []

    asyncio.run(main())


def test_capacity_is_atomic_under_concurrent_sends(shared_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(shared_url, capacity=10) as layer:
            results = await asyncio.gather(
                *(layer.send("full.chan", {"i": i}) for i in range(60)), return_exceptions=True
            )
            stored = [r for r in results if r is None]
            assert len(stored) == 10
            assert all(isinstance(r, ChannelFull) for r in results if r is not None)
            got = [(await layer.receive("full.chan"))["i"] for _ in range(10)]
            assert got == list(range(10))
            await layer.flush()

    asyncio.run(main())


def test_concurrent_sends_share_pipelines(shared_url: str) -> None:
    name = "layers-test-pipelining"
    url = shared_url + f"&client_name={name}"

    async def main() -> None:
        async with layers.from_url(url, capacity=1000) as layer:
            await asyncio.gather(*(layer.send("pipe.chan", {"i": i}) for i in range(500)))
            # 500 concurrent sends share one pipelining connection.
            assert named_clients(shared_url, name) == 1
            await layer.flush()
        assert named_clients(shared_url, name, settle=0) == 0

    asyncio.run(main())


def test_group_send_writes_once_per_inbox(shared_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            members = [await layer.new_channel() for _ in range(5)]
            for member in members:
                await layer.group_add("fan", member)
            await layer.group_add("fan", "plain.chan")
            await layer.group_send("fan", {"hello": True})
            prefix = layer._backend_options["config"].prefix
            inbox = members[0][: members[0].index("!") + 1]
            r = client(shared_url)
            assert r.llen(f"{prefix}:q:{{{inbox}}}") == 1
            assert r.llen(f"{prefix}:q:{{plain.chan}}") == 1
            for member in members:
                assert await layer.receive(member) == {"hello": True}
            await layer.flush()

    asyncio.run(main())


def test_flush_leaves_other_prefixes_alone(shared_url: str) -> None:
    other_url = shared_url.replace("prefix=", "prefix=other")

    async def main() -> None:
        async with layers.from_url(shared_url) as a, layers.from_url(other_url) as b:
            await a.send("same.name", {"from": "a"})
            await b.send("same.name", {"from": "b"})
            await a.flush()
            assert await b.receive("same.name") == {"from": "b"}
            await b.flush()

    asyncio.run(main())


def test_server_errors_are_ours_and_chained(shared_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            prefix = layer._backend_options["config"].prefix
            client(shared_url).set(f"{prefix}:q:{{wrong.type}}", "not a list")
            with pytest.raises(BackendError) as info:
                await layer.send("wrong.type", {})
            assert isinstance(info.value.__cause__, redis.ResponseError)
            await layer.flush()

    asyncio.run(main())


def test_async_to_sync_many_times_leaks_nothing(shared_url: str) -> None:
    name = "layers-test-loops"
    layer = RedisChannelLayer(
        hosts=[{"address": shared_url.split("?")[0], "client_name": name}],
        prefix=shared_url.rsplit("prefix=", 1)[1],
    )
    for i in range(15):
        async_to_sync(layer.send)("loops.chan", {"i": i})
        assert async_to_sync(layer.receive)("loops.chan") == {"i": i}
    assert named_clients(shared_url, name, settle=0) == 0
    async_to_sync(layer.flush)()


def test_sharded_reply_channels_route_by_inbox(spawn) -> None:  # type: ignore[no-untyped-def]
    one, two = spawn(), spawn()
    url = f"redis://127.0.0.1:{one.port},127.0.0.1:{two.port}/0"

    async def main() -> None:
        async with layers.from_url(url) as layer:
            replies = [await layer.new_channel() for _ in range(20)]
            for i, reply in enumerate(replies):
                await layer.send(reply, {"i": i})
                await layer.send(f"plain.{i}", {"i": i})
            for i, reply in enumerate(replies):
                assert await layer.receive(reply) == {"i": i}
                assert await layer.receive(f"plain.{i}") == {"i": i}
            # Normal channels spread over both hosts.
            for i in range(20):
                await layer.send(f"plain.{i}", {"i": i})
            sizes = [client(s.url).dbsize() for s in (one, two)]
            assert sum(sizes) == 20
            assert min(sizes) > 0
            await layer.flush()
            assert [client(s.url).dbsize() for s in (one, two)] == [0, 0]

    asyncio.run(main())


def test_a_cancelled_blocking_pop_is_unblocked_not_waited_out(shared_url: str) -> None:
    """Cancelled in ``BLMPOP``, a receive ends it with ``CLIENT UNBLOCK`` and returns at
    once: it neither waits out the server-side timeout nor closes the connection, whose
    reply could hold a payload popped meanwhile."""

    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            backend = await layer._state().ready()
            task = asyncio.create_task(backend.receive("unblock.chan", timeout=5))
            await asyncio.sleep(0.2)  # blocked on the server now
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started < 1.0
            await backend.send("unblock.chan", b"next", expiry=60, capacity=10)
            assert await backend.receive("unblock.chan", timeout=1) == [b"next"]
            await layer.flush()

    asyncio.run(main())


def test_a_cancelled_pop_answered_with_an_error_ends_cancelled(shared_url: str) -> None:
    """A pop cancelled in flight whose reply is an error (WRONGTYPE here; MOVED in a
    cluster) raises ``CancelledError``: not a ``TypeError`` that the reader would retry."""

    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            backend = await layer._state().ready()
            prefix = layer._backend_options["config"].prefix
            client(shared_url).set(f"{prefix}:q:{{wrong.type}}", b"not a list")
            assert await backend.receive("wrong.warm", timeout=0) == []  # clock read
            task = asyncio.create_task(backend.receive("wrong.type", timeout=1))
            await asyncio.sleep(0)  # the pop is written
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await layer.flush()

    asyncio.run(main())


def test_a_restore_cancelled_in_flight_waits_for_its_reply(shared_url: str) -> None:
    """A restore cancelled once written returns whether it ran (``Backend.restore``):
    True when the script ran, False when the server refused it (a lost script cache)."""

    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            backend = await layer._state().ready()
            assert await backend.receive("restore.flight", timeout=0) == []  # clock read
            # The server knows the script (its first EVALSHA may meet an empty cache).
            assert await backend.restore("restore.flight", [(b"warm", 60.0)]) is True
            assert await backend.receive("restore.flight", timeout=0) == [b"warm"]
            task = asyncio.create_task(backend.restore("restore.flight", [(b"r0", 60.0)]))
            await asyncio.sleep(0)  # the script is written
            task.cancel()
            assert await task is True
            assert await backend.receive("restore.flight", timeout=0, limit=5) == [b"r0"]
            client(shared_url).script_flush()  # the next EVALSHA is refused: not run
            task = asyncio.create_task(backend.restore("restore.flight", [(b"r1", 60.0)]))
            await asyncio.sleep(0)
            task.cancel()
            assert await task is False
            assert await backend.receive("restore.flight", timeout=0, limit=5) == []
            await layer.flush()

    asyncio.run(main())


def test_a_restore_cancelled_before_it_was_written_reports_nothing_stored() -> None:
    """Cancelled while its connection fails to open (nothing written), a restore
    returns False: the core keeps the payloads instead of dropping them."""

    async def main() -> None:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        async with layers.from_url(f"redis://127.0.0.1:{port}/0") as layer:
            backend = await layer._state().ready()
            task = asyncio.create_task(backend.restore("restore.unsent", [(b"r", 60.0)]))
            await asyncio.sleep(0)
            task.cancel()
            assert await task is False

    asyncio.run(main())


def test_a_receive_cancelled_mid_pop_loses_nothing(shared_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            backend = await layer._state().ready()
            assert await backend.receive("stash.chan", timeout=0, limit=1) == []
            for i in range(3):
                assert await backend.send("stash.chan", b"m%d" % i, expiry=60, capacity=10)
            # The first pop is written at once; cancel its caller before the reply.
            task = asyncio.create_task(backend.receive("stash.chan", timeout=1, limit=2))
            await asyncio.sleep(0)
            task.cancel()
            # The pop was sent: the cancelled call waits for it and returns what it
            # took (see Backend.receive), then the rest follows, in order.
            got = await task
            assert got == [b"m0", b"m1"]
            got += await backend.receive("stash.chan", timeout=1, limit=5)
            assert got == [b"m0", b"m1", b"m2"]
            await layer.flush()

    asyncio.run(main())


def test_pops_of_many_queues_share_one_round_trip(shared_url: str) -> None:
    name = "layers-test-shared-pops"
    url = shared_url + f"&client_name={name}"

    async def main() -> None:
        async with layers.from_url(url) as layer:
            backend = await layer._state().ready()
            queues = [f"many.chan{i}" for i in range(20)]
            await asyncio.gather(
                *(backend.send(q, q.encode(), expiry=60, capacity=10) for q in queues)
            )
            got = await asyncio.gather(*(backend.receive(q, timeout=1, limit=1) for q in queues))
            assert got == [[q.encode()] for q in queues]
            # Non-empty queues are popped through the pipelining connection only.
            assert named_clients(shared_url, name) == 1
            await layer.flush()

    asyncio.run(main())


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f" * 40, 1, "asgi:q:{chät.room}", 60_000, 100, b"\x00\r\n\xff" * 9),
        ("SCAN", b"0", "MATCH", "asgi:[qg]:{*", "COUNT", 1000),
        ("LPOP", "k", 3),
        ("X", 1.5, -2, b""),
        ("EVALSHA", "abc", 1, "k", 1000, 100, b"x" * 65536),
        ("RPUSH", "k", b"y" * 1023, b"z" * 1024, "\u00e9" * 600),
    ],
)
def test_our_command_packer_matches_redis_py(args: tuple[bytes | str | int | float, ...]) -> None:
    from redis.asyncio.connection import Connection

    from layers.backends.redis._resp import pack_command

    assert pack_command(args) == b"".join(Connection().pack_command(*args))


def test_our_command_packer_refuses_unknown_types() -> None:
    from layers.backends.redis._resp import pack_command

    with pytest.raises(TypeError):
        pack_command(("SET", "k", True))


@pytest.mark.parametrize("fast_parser", [True, False], ids=["hiredis", "pure-python"])
def test_both_reply_readers_keep_order_and_error_values(
    shared_url: str, fast_parser: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from layers.backends.redis import _resp

    if not fast_parser:
        monkeypatch.setattr(_resp, "HiredisReader", None)
    elif _resp.HiredisReader is None:
        pytest.skip("hiredis is not installed: only the pure-Python reader exists")

    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            prefix = layer._backend_options["config"].prefix
            client(shared_url).set(f"{prefix}:q:{{wrong.kind}}", "not a list")
            results = await asyncio.gather(
                *(layer.send(f"order.{i % 3}", {"i": i}) for i in range(30)),
                layer.send("wrong.kind", {}),
                return_exceptions=True,
            )
            assert results[:30] == [None] * 30
            assert isinstance(results[30], BackendError)
            for k in range(3):
                got = [(await layer.receive(f"order.{k}"))["i"] for _ in range(10)]
                assert got == list(range(k, 30, 3))
            await layer.flush()

    asyncio.run(main())


def test_expired_members_are_not_returned_and_are_pruned_by_group_add(shared_url: str) -> None:
    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            backend = await layer._state().ready()
            prefix = layer._backend_options["config"].prefix
            await backend.group_add("ttl.group", "short.chan", expiry=0.05)
            await backend.group_add("ttl.group", "long.chan", expiry=60)
            assert sorted(await backend.group_channels("ttl.group")) == ["long.chan", "short.chan"]
            await asyncio.sleep(0.2)
            assert await backend.group_channels("ttl.group") == ["long.chan"]
            await backend.group_add("ttl.group", "long.chan", expiry=60)
            assert client(shared_url).zcard(f"{prefix}:g:{{ttl.group}}") == 1
            await layer.flush()

    asyncio.run(main())


def test_send_many_reports_a_failed_put_and_keeps_the_others(shared_url: str) -> None:
    from layers.core.backend import Put

    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            backend = await layer._state().ready()
            prefix = layer._backend_options["config"].prefix
            client(shared_url).set(f"{prefix}:q:{{bad.kind}}", "not a list")
            puts = [Put(q, q.encode(), 60, 10) for q in ("many.a", "bad.kind", "many.b")]
            with pytest.raises(BackendError):
                await backend.send_many(puts)
            # Each put is its own command: the others ran, once.
            assert await backend.receive("many.a", timeout=1, limit=5) == [b"many.a"]
            assert await backend.receive("many.b", timeout=1, limit=5) == [b"many.b"]
            assert await backend.send_many(puts[::2]) == [True, True]
            await layer.flush()

    asyncio.run(main())


def test_a_malformed_inbox_element_costs_only_itself(shared_url: str) -> None:
    """One element without an expiry stamp in a reply inbox: the valid ones still arrive."""

    async def main() -> None:
        async with layers.from_url(shared_url) as layer:
            replies = [await layer.new_channel() for _ in range(5)]
            for n, reply in enumerate(replies[:2]):
                await layer.send(reply, {"n": n})
            inbox = replies[0][: replies[0].index("!") + 1]
            prefix = layer._backend_options["config"].prefix
            client(shared_url).rpush(f"{prefix}:q:{{{inbox}}}", b"not a stamped element")
            for n, reply in enumerate(replies[2:], start=2):
                await layer.send(reply, {"n": n})
            got = []
            for reply in replies:
                async with asyncio.timeout(10):
                    got.append((await layer.receive(reply))["n"])
            assert got == [0, 1, 2, 3, 4]
            await layer.flush()

    asyncio.run(main())


def test_an_element_is_stamped_with_the_server_clock_plus_its_expiry(shared_url: str) -> None:
    """The client writes the stamp from its estimate of the server's TIME, not its own clock."""

    async def main() -> None:
        async with layers.from_url(shared_url, expiry=30) as layer:
            await layer.send("stamp.q", {"n": 1})  # the first send reads TIME
            await layer.group_add("stamp.g", "stamp.q")
            await layer.group_send("stamp.g", {"n": 2})
            prefix = layer._backend_options["config"].prefix
            r = client(shared_url)
            seconds, micros = r.time()
            server_ms = seconds * 1000 + micros // 1000
            elements = r.lrange(f"{prefix}:q:{{stamp.q}}", 0, -1)
            assert len(elements) == 2
            for element in elements:
                stamp = int(element[:13])
                # Sent a moment ago with a 30 s expiry, by the server's clock.
                assert server_ms + 29_000 <= stamp <= server_ms + 30_500, (stamp, server_ms)
            assert [(await layer.receive("stamp.q"))["n"] for _ in range(2)] == [1, 2]

    asyncio.run(main())
