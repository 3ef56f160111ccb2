"""The slot map of a Redis Cluster for one event loop: which primary owns each slot."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from redis.exceptions import ResponseError

from layers.backends.redis._cluster_config import SLOTS, address, node_spec
from layers.backends.redis._config import HostSpec
from layers.backends.redis._errors import ClusterRedirect, redirect_of
from layers.backends.redis._shard import Shard
from layers.core.errors import BackendError, BackendUnavailable, ConfigurationError

__all__ = ["REFRESH_INTERVAL", "REFRESH_TIMEOUT", "RETRY_FOR", "SlotMap"]

#: How long a refused or unsent command is retried (failover, slot migration), seconds.
RETRY_FOR = 20.0
#: Time allowed to one node to answer ``CLUSTER SLOTS``, seconds.
REFRESH_TIMEOUT = 2.0
#: Minimum time between two slot-map reloads caused by errors, seconds.
REFRESH_INTERVAL = 0.25


class SlotMap:
    """The owner of each slot (read with ``CLUSTER SLOTS``, fixed by ``MOVED``) and the nodes.

    Nodes are :class:`~layers.backends.redis._shard.Shard` objects with the seed's
    credentials and options; they share one stash, so a queue's stash follows it
    from node to node.
    """

    def __init__(self, template: HostSpec, seeds: list[tuple[str, int]]) -> None:
        self.template = template
        self.seeds = seeds
        self.nodes: dict[tuple[str, int], Shard] = {}
        self.slots: list[Shard | None] = [None] * SLOTS
        self.stash: dict[str, list[bytes]] = {}
        self.refresh_task: asyncio.Task[None] | None = None
        self.refreshed = -math.inf
        self.tasks: set[asyncio.Task[None]] = set()

    def node(self, host: str, port: int) -> Shard:
        """The node at ``host:port``, created (no I/O) on first use."""
        shard = self.nodes.get((host, port))
        if shard is None:
            shard = Shard(node_spec(self.template, host, port))
            shard.stash = self.stash  # a queue's stash follows it from node to node
            self.nodes[(host, port)] = shard
        return shard

    def owner(self, slot: int) -> Shard:
        """The primary owning ``slot``; :class:`ClusterRedirect` ``CLUSTERDOWN`` if none."""
        shard = self.slots[slot]
        if shard is None:
            raise ClusterRedirect(f"redis cluster: slot {slot} has no node", "CLUSTERDOWN")
        return shard

    async def refresh(self) -> None:
        """Reload the slot map (one ``CLUSTER SLOTS``); concurrent callers share one reload."""
        task = self.refresh_task
        if task is None or task.done():
            task = self.refresh_task = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(task)

    def stale(self) -> None:
        """A node failed: reload the slot map in the background (rate-limited)."""
        if time.monotonic() < self.refreshed + REFRESH_INTERVAL:
            return
        task = self.refresh_task
        if task is not None and not task.done():
            return
        self.refreshed = time.monotonic()
        task = self.refresh_task = asyncio.get_running_loop().create_task(self._load())
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # a background reload's failure is retried by the next error

    async def _load(self) -> None:
        known = {id(s): s for s in self.slots if s is not None}
        candidates = [*known.values()]
        candidates += [s for s in self.nodes.values() if id(s) not in known]
        candidates += [self.node(host, port) for host, port in self.seeds]
        failures: list[str] = []
        seen: set[int] = set()
        for shard in candidates:
            if id(shard) in seen:
                continue
            seen.add(id(shard))
            try:
                async with asyncio.timeout(REFRESH_TIMEOUT):
                    reply = await shard.execute("CLUSTER", "SLOTS")
            except (BackendError, TimeoutError) as exc:
                failures.append(f"{shard.spec.id}: {exc or type(exc).__name__}")
                continue
            if isinstance(reply, ResponseError):
                if "cluster support disabled" in str(reply).lower():
                    raise ConfigurationError(
                        "hosts",
                        f"{shard.spec.id} is not a Redis Cluster node (cluster support "
                        "disabled); use a redis:// URL (RedisChannelLayer) for a single "
                        "server or sharded servers",
                    ) from reply
                failures.append(f"{shard.spec.id}: {reply}")
                continue
            if self._apply(shard, reply):
                self.refreshed = time.monotonic()
                return
            failures.append(f"{shard.spec.id}: no slot is assigned")
        reasons = "; ".join(failures)
        raise BackendUnavailable(f"redis cluster: no node gave the slot map ({reasons})")

    def _apply(self, asked: Shard, reply: Any) -> bool:
        slots: list[Shard | None] = [None] * SLOTS
        default_host = address(asked.spec)[0]
        for entry in reply or ():
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            if host in ("", "?"):
                host = default_host
            owner = self.node(host, int(primary[1]))
            slots[start : end + 1] = [owner] * (end - start + 1)
        if not any(s is not None for s in slots):
            return False
        self.slots = slots
        return True

    async def follow(self, error: BackendError, slot: int, started: float) -> Shard | None:
        """Act on a refused or unsent command; the node to retry on with ``ASKING``, if any."""
        redirect = redirect_of(error)
        if redirect is not None and redirect.kind == "MOVED":
            self.slots[redirect.slot] = self.node(redirect.host, redirect.port)
            self.stale()  # a slot moved: others may have too
            return None
        if redirect is not None and redirect.kind == "ASK":
            return self.node(redirect.host, redirect.port)
        # TRYAGAIN, CLUSTERDOWN, or a node that cannot be reached: wait, reload, retry.
        if time.monotonic() - started > RETRY_FOR:
            raise error
        await asyncio.sleep(0.1)
        with contextlib.suppress(BackendError):
            await self.refresh()
        return None

    async def aclose(self) -> None:
        """Stop the reloads and close every node's connections; the map is empty again."""
        tasks = [*self.tasks]
        if self.refresh_task is not None:
            tasks.append(self.refresh_task)
        self.refresh_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        nodes, self.nodes = self.nodes, {}
        self.slots = [None] * SLOTS
        for shard in nodes.values():
            await shard.aclose()

    def primaries(self) -> list[Shard]:
        """The nodes that own slots, each once."""
        return list({id(s): s for s in self.slots if s is not None}.values())
