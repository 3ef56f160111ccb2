"""The Redis backend on a real six-node Redis Cluster: conformance, failover, resharding.

The cluster (three primaries, three replicas on loopback) is started once for the
module by the ``redis_cluster`` fixture. Tests that change it (resharding, killing
a primary) run last and leave it healthy again.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

import layers
from layers.backends.redis.cluster import key_slot
from layers.core.errors import BackendError, ChannelFull, ConfigurationError

from .servers import RedisCluster

pytestmark = pytest.mark.slow


def _commandstat(cluster: RedisCluster, port: int, command: str) -> int:
    for line in cluster.cli(port, "INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def test_group_send_costs_one_write_per_queue_and_one_round_trip_per_node(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from layers.backends.redis import _pipe

    writes: list[tuple[str, int]] = []
    original = _pipe.Pipe.write_nowait

    def counting(self: _pipe.Pipe, batch: list[Any]) -> None:
        writes.append((self.where, len(batch)))
        original(self, batch)

    async def main() -> None:
        async with layers.from_url(redis_cluster.url + "?prefix=fan") as layer:
            plain = [f"fan.member{i}" for i in range(100)]
            replies = [await layer.new_channel() for _ in range(20)]  # one inbox
            for member in plain + replies:
                await layer.group_add("fan", member)
            nodes = {_owner_port(redis_cluster, key_slot(m)) for m in plain}
            assert len(nodes) == 3  # the members really are spread over every primary
            await layer.group_send("fan", {"n": 0})  # loads the script on every node
            for member in plain + replies:
                assert await layer.receive(member) == {"n": 0}
            for port in redis_cluster.primaries():
                redis_cluster.cli(port, "CONFIG", "RESETSTAT")
            monkeypatch.setattr(_pipe.Pipe, "write_nowait", counting)
            await layer.group_send("fan", {"n": 1})
            monkeypatch.undo()
            evalsha = sum(
                _commandstat(redis_cluster, p, "evalsha") for p in redis_cluster.primaries()
            )
            assert evalsha == 101  # 100 plain channels + 1 inbox for 20 reply channels
            # The member read, then at most two pipeline writes per node (the first
            # command of a loop iteration goes out at once, the rest together).
            assert len(writes) <= 1 + 2 * 3, writes
            for member in plain + replies:
                assert await layer.receive(member) == {"n": 1}
            await layer.flush()

    asyncio.run(main())


def test_flush_reaches_every_primary(redis_cluster: RedisCluster) -> None:
    async def main() -> None:
        async with layers.from_url(redis_cluster.url + "?prefix=flushme") as layer:
            for i in range(60):
                await layer.send(f"flush.chan{i}", {"i": i})
                await layer.group_add(f"flush.group{i}", f"flush.chan{i}")
            counts = [
                len(redis_cluster.cli(p, "KEYS", "flushme:*").split())
                for p in redis_cluster.primaries()
            ]
            assert all(c > 0 for c in counts)
            assert sum(counts) == 120
            await layer.flush()
            for port in redis_cluster.primaries():
                assert redis_cluster.cli(port, "KEYS", "flushme:*") == ""

    asyncio.run(main())


def test_cluster_url_on_a_single_server_is_a_configuration_error(shared_url: str) -> None:
    parts = urlsplit(shared_url)
    url = f"redis+cluster://{parts.hostname}:{parts.port}"

    async def main() -> None:
        async with layers.from_url(url) as layer:
            with pytest.raises(ConfigurationError, match="not a Redis Cluster node"):
                await layer.send("some.chan", {})

    asyncio.run(main())


def test_single_server_url_on_a_cluster_node_says_to_use_the_cluster_url(
    redis_cluster: RedisCluster,
) -> None:
    url = f"redis://127.0.0.1:{redis_cluster.primaries()[0]}/0?prefix=wrongmode"

    async def main() -> None:
        async with layers.from_url(url) as layer:
            results = await asyncio.gather(
                *(layer.send(f"wrong.chan{i}", {}) for i in range(30)), return_exceptions=True
            )
            errors = [r for r in results if r is not None]
            assert errors  # two thirds of the channels live on other nodes
            for error in errors:
                assert isinstance(error, BackendError)
                assert "redis+cluster://" in str(error)
        async with layers.from_url(redis_cluster.url + "?prefix=wrongmode") as layer:
            await layer.flush()

    asyncio.run(main())


def test_credentials_never_show_in_errors(redis_cluster: RedisCluster) -> None:
    port = redis_cluster.ports[0]

    async def main() -> None:
        async with layers.from_url(f"redis+cluster://nobody:hunter22@127.0.0.1:{port}") as layer:
            with pytest.raises(BackendError) as info:
                await layer.send("some.chan", {})
            text = f"{info.value} {info.value!r} {info.value.__cause__!r} {layer!r}"
            assert "hunter22" not in text
            assert "WRONGPASS" in text or "invalid username-password" in text

    asyncio.run(main())


def test_blocking_receive_outlives_a_short_socket_timeout_on_resp3(
    redis_cluster: RedisCluster,
) -> None:
    # redis-py 8 made socket_timeout 5 s and RESP3 the defaults; blocking pops must
    # not be cut by either (their own read deadline is the block time plus a margin).
    url = redis_cluster.url + "?prefix=slowpop&socket_timeout=0.5&protocol=3"

    async def main() -> None:
        async with layers.from_url(url) as layer:

            async def late() -> None:
                await asyncio.sleep(1.5)
                await layer.send("slow.chan", {"late": True})

            sender = asyncio.create_task(late())
            assert await asyncio.wait_for(layer.receive("slow.chan"), 10) == {"late": True}
            await sender
            await layer.flush()

    asyncio.run(main())


def test_wait_replicas_confirms_each_send_on_a_replica(redis_cluster: RedisCluster) -> None:
    url = redis_cluster.url + "?prefix=waitok&wait_replicas=1&wait_timeout=2"

    async def main() -> None:
        for port in redis_cluster.primaries():
            redis_cluster.cli(port, "CONFIG", "RESETSTAT")
        async with layers.from_url(url) as layer:
            for i in range(30):
                await layer.send(f"wait.chan{i}", {"i": i})
            for i in range(5):
                await layer.group_add("wait.group", f"wait.chan{i}")
            await layer.group_send("wait.group", {"g": True})
            waits = sum(_commandstat(redis_cluster, p, "wait") for p in redis_cluster.primaries())
            assert waits >= 30 + 1  # one per send, at least one for the group_send
            for i in range(30):
                assert await layer.receive(f"wait.chan{i}") == {"i": i}
            await layer.flush()

    asyncio.run(main())


def test_wait_replicas_beyond_the_replicas_raises_but_stores_once(
    redis_cluster: RedisCluster,
) -> None:
    url = redis_cluster.url + "?prefix=waitko&wait_replicas=2&wait_timeout=0.2"

    async def main() -> None:
        async with layers.from_url(url) as layer:
            with pytest.raises(BackendError, match="only 1 of 2 replicas"):
                await layer.send("wait.short", {"n": 1})
            # Stored once, as the error says: it is delivered, and only once.
            assert await layer.receive("wait.short") == {"n": 1}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(layer.receive("wait.short"), 0.5)
            await layer.flush()

    asyncio.run(main())


# -- traffic through a disruption -------------------------------------------------------


class Tally:
    """What a test's producers sent and its consumers received, per channel."""

    def __init__(self, channels: list[str]) -> None:
        self.channels = channels
        self.confirmed: dict[str, list[tuple[int, float]]] = {c: [] for c in channels}
        self.uncertain: dict[str, set[int]] = {c: set() for c in channels}
        self.received: dict[str, list[int]] = {c: [] for c in channels}
        self.send_errors: list[str] = []

    def check_no_duplicate_no_reorder_no_invention(self) -> None:
        for channel in self.channels:
            got = self.received[channel]
            assert len(got) == len(set(got)), f"duplicates on {channel}: {got}"
            assert got == sorted(got), f"reordered on {channel}: {got}"
            sent = {seq for seq, _ in self.confirmed[channel]} | self.uncertain[channel]
            assert set(got) <= sent, f"{channel} received what was never sent"

    def lost(self, after: float = -math.inf) -> dict[str, list[int]]:
        """Confirmed sends (confirmed after ``after``, monotonic) that nobody received."""
        out = {}
        for channel in self.channels:
            got = set(self.received[channel])
            missing = [s for s, at in self.confirmed[channel] if at > after and s not in got]
            if missing:
                out[channel] = missing
        return out


async def run_traffic(
    url: str,
    channels: list[str],
    disrupt: Callable[[], None],
    *,
    before: float = 1.0,
    after: float = 1.0,
    pause: float = 0.002,
) -> tuple[Tally, float, float]:
    """Send and receive on ``channels`` while ``disrupt()`` runs in a thread.

    Returns the tally and the monotonic times the disruption started and ended.
    After the producers stop, a consumer gives up only when no message came for 20 s
    (a slow, busy machine only makes draining slower): a hung ``receive`` fails the
    test through the missing messages.
    """
    layer = layers.from_url(url)
    tally = Tally(channels)
    stop = asyncio.Event()
    produced = asyncio.Event()
    stopped: list[float] = []

    async def produce(channel: str) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            try:
                await layer.send(channel, {"type": "t", "seq": seq})
            except ChannelFull:
                await asyncio.sleep(0.05)  # not stored: the consumer is behind
                continue
            except BackendError as exc:
                tally.uncertain[channel].add(seq)
                tally.send_errors.append(f"{type(exc).__name__}: {exc}")
            else:
                tally.confirmed[channel].append((seq, time.monotonic()))
            await asyncio.sleep(pause)

    async def consume(channel: str) -> None:
        got = tally.received[channel]
        last = time.monotonic()
        while True:
            confirmed = tally.confirmed[channel]
            if produced.is_set():  # every send has returned: the tally is final
                if confirmed and got and got[-1] >= confirmed[-1][0]:
                    return
                if time.monotonic() > max(stopped[0], last) + 20:
                    # No message for 20 s while some are missing: a hung receive (or
                    # a loss); the caller's checks report it.
                    return
            try:
                # A cancelled receive loses nothing (the contract), so poll in slices.
                message = await asyncio.wait_for(layer.receive(channel), 0.5)
            except TimeoutError:
                continue
            got.append(message["seq"])
            last = time.monotonic()

    producers = [asyncio.create_task(produce(c)) for c in channels]
    consumers = [asyncio.create_task(consume(c)) for c in channels]
    try:
        await asyncio.sleep(before)
        started = time.monotonic()
        await asyncio.to_thread(disrupt)
        ended = time.monotonic()
        await asyncio.sleep(after)
        stopped.append(time.monotonic())
        stop.set()
        await asyncio.gather(*producers)
        produced.set()
        async with asyncio.timeout(300):
            await asyncio.gather(*consumers)
        await layer.flush()
    finally:
        for task in producers + consumers:
            task.cancel()
        await asyncio.gather(*producers, *consumers, return_exceptions=True)
        await layer.aclose()
    return tally, started, ended


def _channels_on(
    port: int, cluster: RedisCluster, count: int, slots: range | None = None
) -> list[str]:
    """``count`` channel names stored on the primary at ``port`` (within ``slots`` if given)."""
    ranges = [
        tuple(int(x) for x in part.split("-")) if "-" in part else (int(part), int(part))
        for row in cluster.slot_map(port)
        if row[0].endswith(f":{port}")
        for part in row[1:]
        if not part.startswith("[")
    ]
    names = []
    i = 0
    while len(names) < count:
        name = f"cluster.chan{i}"
        slot = key_slot(name)
        if any(lo <= slot <= hi for lo, hi in ranges) and (slots is None or slot in slots):
            names.append(name)
        i += 1
    return names


# -- resharding and failover (they change the cluster: they run last) -------------------


def test_resharding_during_traffic_loses_and_duplicates_nothing(redis_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: RedisCluster = redis_cluster
    source, target = cluster.primaries()[:2]
    moved = 400
    first = min(
        int(part.split("-")[0])
        for row in cluster.slot_map(source)
        if row[0].endswith(f":{source}")
        for part in row[1:]
        if not part.startswith("[")
    )
    # redis-cli moves the source's lowest slots first: pick channels there.
    channels = _channels_on(source, cluster, 12, range(first, first + moved // 2))

    def reshard() -> None:
        out = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "reshard",
                f"127.0.0.1:{source}",
                "--cluster-from",
                cluster.node_id(source),
                "--cluster-to",
                cluster.node_id(target),
                "--cluster-slots",
                str(moved),
                "--cluster-yes",
                "--cluster-pipeline",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr
        cluster.wait_agreement()

    url = cluster.url + "?prefix=reshard"
    # A slow consumer side (no pause for producers) keeps backlogs to migrate.
    tally, _, _ = asyncio.run(run_traffic(url, channels, reshard, pause=0.001))
    # The channels now live on the target: the traffic really crossed the move.
    owner = {row[0]: row[1:] for row in cluster.slot_map(target)}
    assert any(f":{target}" in node for node in owner)
    assert all(_owner_port(cluster, key_slot(c)) == target for c in channels)
    tally.check_no_duplicate_no_reorder_no_invention()
    assert not tally.send_errors, tally.send_errors[:5]
    assert not tally.lost(), tally.lost()
    assert sum(len(v) for v in tally.received.values()) > 100


def _owner_port(cluster: RedisCluster, slot: int) -> int:
    for row in cluster.slot_map(cluster.running()[0].port):
        for part in row[1:]:
            if part.startswith("["):
                continue
            lo, _, hi = part.partition("-")
            if int(lo) <= slot <= int(hi or lo):
                return int(row[0].rpartition(":")[2])
    raise AssertionError(f"slot {slot} has no owner")


def test_failover_during_traffic_no_duplicate_no_hung_receive(redis_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: RedisCluster = redis_cluster
    victim = cluster.primaries()[-1]
    others = [p for p in cluster.primaries() if p != victim]
    channels = _channels_on(victim, cluster, 8) + _channels_on(others[0], cluster, 4)
    promoted: list[float] = []

    def kill_primary() -> None:
        cluster.node(victim).proc.kill()  # type: ignore[union-attr]
        cluster.node(victim).proc.wait()  # type: ignore[union-attr]
        cluster.node(victim).proc = None
        cluster.wait_agreement()
        promoted.append(time.monotonic())

    url = cluster.url + "?prefix=failover"
    try:
        tally, _, _ = asyncio.run(run_traffic(url, channels, kill_primary, after=2.0))
        new_owner = _owner_port(cluster, key_slot(channels[0]))
        assert new_owner != victim
    finally:
        cluster.node(victim).start()  # it rejoins as a replica
        cluster.wait_agreement()
    tally.check_no_duplicate_no_reorder_no_invention()
    # Everything confirmed once the replica had taken over was delivered...
    assert not tally.lost(after=promoted[0]), tally.lost(after=promoted[0])
    # ...and the traffic on the victim's channels resumed there.
    for channel in channels:
        assert tally.received[channel], channel
        assert tally.received[channel][-1] == tally.confirmed[channel][-1][0]
    # Only writes acknowledged but not yet replicated when the primary died may be
    # lost (asynchronous replication): on loopback, a handful at most.
    lost_before = sum(len(v) for v in tally.lost().values())
    assert lost_before <= 5 * len(channels), tally.lost()
    print(f"failover: {lost_before} lost, {len(tally.send_errors)} send errors")
