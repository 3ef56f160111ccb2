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

import pytest

import layers
from layers.backends.redis.cluster import key_slot
from layers.core.errors import BackendError, ChannelFull

# The fixture's class (tests/redis/conftest.py); this directory is not a package,
# because a package named "redis" would hide the driver.
RedisCluster = Any

pytestmark = pytest.mark.slow


def test_conformance_on_a_six_node_cluster(redis_cluster, run_conformance) -> None:  # type: ignore[no-untyped-def]
    run_conformance(redis_cluster.url + "?prefix=conformance")


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
    Every consumer must get its channel's last confirmed message within 20 s of the
    producers stopping: a hung ``receive`` fails the test.
    """
    layer = layers.from_url(url)
    tally = Tally(channels)
    stop = asyncio.Event()

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
        while True:
            confirmed = tally.confirmed[channel]
            if stop.is_set() and confirmed and got and got[-1] >= confirmed[-1][0]:
                return
            try:
                message = await asyncio.wait_for(layer.receive(channel), 20)
            except TimeoutError:
                return  # checked by the caller: anything confirmed and missing is lost
            got.append(message["seq"])

    try:
        producers = [asyncio.create_task(produce(c)) for c in channels]
        consumers = [asyncio.create_task(consume(c)) for c in channels]
        await asyncio.sleep(before)
        started = time.monotonic()
        await asyncio.to_thread(disrupt)
        ended = time.monotonic()
        await asyncio.sleep(after)
        stop.set()
        await asyncio.gather(*producers)
        async with asyncio.timeout(60):
            await asyncio.gather(*consumers)
        await layer.flush()
    finally:
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
