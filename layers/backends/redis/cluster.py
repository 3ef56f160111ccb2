"""Redis Cluster mode of the Redis backend: ``redis+cluster://`` and ``rediss+cluster://``.

Features
    The same data layout, scripts and guarantees as :mod:`layers.backends.redis`, on
    a Redis Cluster (self-hosted, or a managed "cluster mode" service). Every key
    carries its queue or group name as hash tag (``<prefix>:q:{<queue>}``), so each
    queue and group lives on one slot and every script touches one key on one node.
    The client routes each command to the primary that owns its slot (a slot map
    read with ``CLUSTER SLOTS``), auto-pipelines the commands of one event-loop
    iteration per node (one round trip per node, not per command), and follows
    ``MOVED`` and ``ASK`` redirections. ``group_send`` reads the members on the
    group's node, then writes once per receiving queue (a reply inbox counts once),
    all queues of one node in one pipeline: one round trip per node, never one
    per member. ``flush`` scans every primary.

    Pops always run on primaries (``read_from_replicas`` is refused: a pop is a
    write). Blocking pops hold one connection per waiting queue, on the queue's
    node, as in single-server mode.

Failover and resharding
    A command that a node refused (``MOVED``, ``ASK``, ``TRYAGAIN``,
    ``CLUSTERDOWN``) was not executed, and a command that could not be written
    (connection refused) was not sent: both are retried, on the new owner, for up
    to :data:`RETRY_FOR` seconds while the cluster elects a replica or moves a
    slot. A command whose connection dropped after it was written is never
    re-sent (it may have run): ``send`` raises :class:`~layers.BackendUnavailable`
    and the caller may send again. So failover and resharding never duplicate a
    message. A message can be lost only if a primary acknowledged it and died
    before replicating it (Redis replicates asynchronously), or if a blocking pop's
    reply was lost with its connection. ``receive`` never hangs on a dead node: its
    connection closes, the layer retries, and the slot map is read again.

Connection URL
    ``redis+cluster://[[user]:password@]host:port[,host:port...][?options]``, the
    listed nodes being seeds (any node of the cluster will do; the others are
    discovered). ``rediss+cluster://`` for TLS (``?ssl_cert_reqs=required&
    ssl_ca_certs=/path/ca.pem``). Only database 0 exists on a cluster. Query
    options as for ``redis://`` (``prefix``, the layer options, redis-py
    connection options); ``read_from_replicas`` is accepted only as ``false``.

Options
    ``hosts``
        The seed nodes: URL strings (``redis://``, ``rediss://`` or
        ``redis+cluster://``), ``(host, port)`` pairs, or dicts of redis-py
        connection keyword arguments (``{"host": ..., "port": ..., "password":
        ..., "username": ..., "ssl": True}``). Credentials and TLS settings of the
        first seed apply to every node.
    ``prefix``, ``expiry``, ``group_expiry``, ``capacity``, ``channel_capacity``,
    ``symmetric_encryption_keys``, ``serializer_format``
        As for :class:`~layers.backends.redis.RedisChannelLayer`.
    ``read_from_replicas``
        Accepted for compatibility; only ``False``.
    ``wait_replicas``, ``wait_timeout``
        With ``wait_replicas=N`` (default 0: off), every ``send`` is followed by
        ``WAIT N`` (pipelined, same connection) and returns once N replicas hold the
        message; if fewer confirm within ``wait_timeout`` seconds (default 1), the
        message is stored once and ``send`` raises :class:`~layers.BackendError`.
        ``group_send`` waits once per node and logs a warning instead.

Capabilities
    ``groups``, ``flush``, ``cross_process``, ``cross_host``.

Use as a Django Channels ``BACKEND``::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layers.backends.redis.cluster.RedisClusterChannelLayer",
            "CONFIG": {"hosts": ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]},
        }
    }
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from layers.backends.redis import _GLOB_SPECIAL, _GROUP_ADD, _SEND, RedisBackend, RedisConfig
from layers.backends.redis import _element as element
from layers.backends.redis import _ms as ms
from layers.backends.redis import _Script as Script
from layers.backends.redis._cluster_config import (
    CLUSTER_OPTIONS,
    CLUSTER_SCHEMES,
    address,
    check_seed,
    key_slot,
    no_replicas,
    seeds_from_url,
    wait_options,
)
from layers.backends.redis._config import HostSpec, parse_hosts
from layers.backends.redis._errors import ClusterRedirect, NotSent, redirect_of, translate
from layers.backends.redis._shard import Shard
from layers.backends.redis._slot_map import RETRY_FOR, SlotMap
from layers.core.backend import BackendStatistics, Put
from layers.core.errors import BackendError, BackendUnavailable, ConfigurationError, LayerError
from layers.core.layer import ChannelLayer

try:
    from redis.exceptions import NoScriptError, RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from layers.core.errors import MissingDriver

    raise MissingDriver("redis+cluster", "redis", "redis") from exc

__all__ = ["RETRY_FOR", "RedisClusterBackend", "RedisClusterChannelLayer", "key_slot"]

#: Redirections followed for one command before giving up.
MAX_REDIRECTS = 16

logger = logging.getLogger("layers")


class RedisClusterBackend(RedisBackend):
    """Storage on a Redis Cluster for one event loop. See the module docs."""

    name = "redis+cluster"

    def __init__(self, *, config: RedisConfig, wait: tuple[int, int] = (0, 0)) -> None:
        super().__init__(config=config)
        self._wait = wait  # WAIT numreplicas timeout-ms after each send; (0, _): off
        self._map = SlotMap(config.hosts[0], [address(spec) for spec in config.hosts])
        self._open = False
        self._outage: float | None = None  # when receives first found a node unreachable

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The Redis options plus ``read_from_replicas``, ``wait_replicas``, ``wait_timeout``."""
        return super().option_names() | frozenset(CLUSTER_OPTIONS)

    @classmethod
    def url_option_names(cls) -> frozenset[str]:
        """The Redis URL options plus the cluster's own (see :meth:`option_names`)."""
        return super().url_option_names() | frozenset(CLUSTER_OPTIONS)

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """Map a ``redis+cluster://`` or ``rediss+cluster://`` URL (the hosts are seeds)."""
        specs, options = seeds_from_url(url)
        return {"hosts": specs, **options}

    @classmethod
    def prepare_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate the seeds, ``prefix`` and ``read_from_replicas`` (no I/O)."""
        options = dict(options)
        known = {"hosts", "prefix", "random_prefix_length", *CLUSTER_OPTIONS}
        for key in options:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(
                    key,
                    f"unknown option for the redis+cluster backend{hint} "
                    f"(known: {', '.join(sorted(known))})",
                )
        no_replicas(options.pop("read_from_replicas", False))
        wait = wait_options(options)
        hosts = options.get("hosts")
        if isinstance(hosts, Sequence) and not isinstance(hosts, str | bytes):
            specs: list[HostSpec] = []
            for entry in hosts:
                if isinstance(entry, HostSpec):
                    specs.append(entry)
                elif isinstance(entry, str) and urlsplit(entry).scheme.lower() in CLUSTER_SCHEMES:
                    specs.extend(seeds_from_url(entry)[0])
                else:
                    specs.extend(parse_hosts([entry]))
            options["hosts"] = specs
        prepared = super().prepare_options(options)
        config: RedisConfig = prepared["config"]
        for spec in config.hosts:
            check_seed(spec)
        return {**prepared, "wait": wait}

    # -- routing ----------------------------------------------------------------------

    def _shard(self, name: str) -> Shard:
        if not self._open:
            raise BackendError("the redis+cluster backend is not open")
        return self._map.owner(key_slot(name))

    async def _run(
        self, slot: int, *args: Any, script: Script | None = None, wait: bool = False
    ) -> Any:
        """Run one command (or script) on the slot's owner, following redirections.

        Only refused or unsent commands are re-sent; a reply lost with its connection
        raises :class:`~layers.BackendUnavailable`. Cancellation: the command runs
        once or not at all.
        """
        started = time.monotonic()
        asking: Shard | None = None
        for _ in range(MAX_REDIRECTS):
            try:
                shard = asking or self._map.owner(slot)
                reply = await self._once(
                    shard,
                    args,
                    script,
                    asking=asking is not None,
                    wait=self._wait if wait else None,
                )
            except ClusterRedirect as exc:
                error: BackendError = exc
            except NotSent as exc:
                error = exc
                self._map.stale()
            except BackendUnavailable:
                self._map.stale()
                raise
            else:
                redirect = redirect_of(reply) if isinstance(reply, ResponseError) else None
                if redirect is None:
                    if isinstance(reply, ResponseError):
                        raise translate(reply, shard.spec.id)
                    return reply
                error = redirect
            asking = await self._map.follow(error, slot, started)
        raise BackendError(f"redis cluster: too many redirections for slot {slot}")

    @staticmethod
    async def _once(
        shard: Shard,
        args: tuple[Any, ...],
        script: Script | None,
        *,
        asking: bool,
        wait: tuple[int, int] | None = None,
    ) -> Any:
        if asking:
            shard.execute("ASKING").add_done_callback(_ignore)
        if script is None:
            return await shard.execute(*args)
        future = shard.execute("EVALSHA", script.sha, *args)
        waited = _wait_after(shard, wait)
        reply = await future
        if isinstance(reply, NoScriptError):  # not run: this node lacks the script
            if asking:
                shard.execute("ASKING").add_done_callback(_ignore)
            future = shard.execute("EVAL", script.source, *args)
            waited = _wait_after(shard, wait, waited)
            reply = await future
        if waited is not None and wait is not None and reply == 1:
            await _check_acks(shard, waited, wait)
        return reply

    # -- the contract -----------------------------------------------------------------

    async def open(self) -> None:
        """Read the slot map from the first seed that answers.

        Raises :class:`~layers.ConfigurationError` if a seed is not in cluster mode,
        :class:`~layers.BackendUnavailable` if no seed answers.
        """
        if self._open:
            return
        self._open = True
        try:
            await self._map.refresh()
        except BaseException:
            self._open = False
            await self.aclose()
            raise

    async def _server_ms(self, slots: Sequence[int]) -> float:
        """The cluster's clock (ms) for expiry stamps, as one of its nodes estimates it.

        The first of ``slots``' known owners, else any node, that has read ``TIME``
        (the nodes' clocks agree to the precision of their time sync); failing that,
        it is read now, and this host's clock stands in when no node answers, so a
        send fails or fails over in ``_run``, not here.
        """
        nodes = [self._map.slots[slot] for slot in slots]
        candidates = [n for n in nodes if n is not None] + list(self._map.nodes.values())
        for node in candidates:
            estimate = node.clock_estimate()
            if estimate is not None and not node.clock_stale():
                return estimate
        for node in candidates[:1]:
            try:
                return await node.server_ms()
            except (LayerError, OSError, RedisError):
                estimate = node.clock_estimate()
                if estimate is not None:
                    return estimate
        return time.time() * 1000.0

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        """The ``SEND`` script on the queue's primary (see the module docs for failover)."""
        key = self._queue_prefix + "{" + queue + "}"
        slot, expiry_ms = key_slot(queue), ms(expiry)
        now = await self._server_ms([slot])
        args = (1, key, expiry_ms, capacity, element(now, expiry_ms, payload))
        reply = await self._run(slot, *args, script=_SEND, wait=self._wait[0] > 0)
        return bool(reply == 1)

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:
        """One ``SEND`` per put; the puts of one node share one pipeline (one round trip)."""
        if not self._open:
            raise BackendError("the redis+cluster backend is not open")
        calls: list[tuple[int, tuple[Any, ...], asyncio.Future[Any] | None]] = []
        used: dict[int, Shard] = {}
        slots = [key_slot(put.queue) for put in puts]
        now = await self._server_ms(slots)
        for put, slot in zip(puts, slots, strict=True):
            key = self._queue_prefix + "{" + put.queue + "}"
            expiry_ms = ms(put.expiry)
            args = (1, key, expiry_ms, put.capacity, element(now, expiry_ms, put.payload))
            shard = self._map.slots[slot]
            future = None if shard is None else shard.execute("EVALSHA", _SEND.sha, *args)
            calls.append((slot, args, future))
            if shard is not None:
                used[id(shard)] = shard
        # One WAIT per node, behind its sends on the same connection.
        waits = {k: (s, _wait_after(s, self._wait)) for k, s in used.items()}
        results: list[bool] = []
        try:
            for slot, args, future in calls:
                reply: Any = None
                try:
                    reply = NoScriptError() if future is None else await future
                except NotSent:
                    self._map.stale()
                    reply = NoScriptError()
                except BackendUnavailable:
                    self._map.stale()
                    raise
                if isinstance(reply, ResponseError):  # refused, not run: run it the long way
                    reply = await self._run(slot, *args, script=_SEND, wait=self._wait[0] > 0)
                results.append(reply == 1)
            for shard, waited in waits.values():
                if waited is not None:
                    try:
                        await _check_acks(shard, waited, self._wait)
                    except BackendError as exc:  # stored: a group_send does not fail for it
                        logger.warning("%s", exc)
        finally:
            for _, _, future in calls[len(results) + 1 :]:
                if future is not None:
                    future.add_done_callback(_ignore)
            for _, waited in waits.values():
                if waited is not None and not waited.done():
                    waited.add_done_callback(_ignore)
        return results

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        """Pop from the queue's primary, following redirections until ``timeout``.

        Cancellation as in single-server mode: a payload is never duplicated. A dead
        node's connection error is raised (the layer retries) after scheduling a
        reload of the slot map.
        """
        key = self._queue_prefix + "{" + queue + "}"
        slot = key_slot(queue)
        limit = max(1, limit)
        started = time.monotonic()
        deadline = started + timeout
        asking: Shard | None = None
        for _ in range(MAX_REDIRECTS):
            try:
                if asking is not None:
                    live = await asking.pop_now(key, limit, asking=True)
                    if live:
                        return live
                    asking = None
                    # The slot is moving: poll until it has moved (no blocking there).
                    await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                    if time.monotonic() >= deadline:
                        return []
                    continue
                shard = self._shard(queue)
                live = await shard.pop(key, max(0.0, deadline - time.monotonic()), limit)
                self._outage = None
                return live
            except ClusterRedirect as exc:
                error: BackendError = exc
            except NotSent as exc:
                # The node cannot be reached: a failover may be under way. Retry on
                # the new owner; raise only once it lasts longer than RETRY_FOR.
                self._map.stale()
                error = exc
                now = time.monotonic()
                self._outage = self._outage or now
                if now - self._outage > RETRY_FOR:
                    raise
            except BackendUnavailable:
                self._map.stale()
                raise
            if time.monotonic() >= deadline:
                return []
            asking = await self._map.follow(error, slot, time.monotonic())
            if time.monotonic() >= deadline and asking is None:
                return []
        return []

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        """``GROUP_ADD`` script on the group's primary."""
        key = self._group_prefix + "{" + group + "}"
        await self._run(key_slot(group), 1, key, ms(expiry), channel, script=_GROUP_ADD)

    async def group_discard(self, group: str, channel: str) -> None:
        """``ZREM`` on the group's primary."""
        key = self._group_prefix + "{" + group + "}"
        await self._run(key_slot(group), "ZREM", key, channel)

    async def group_channels(self, group: str) -> list[str]:
        """Unexpired members, read on the group's primary by server time."""
        key = self._group_prefix + "{" + group + "}"
        slot = key_slot(group)
        try:
            now = int(await self._map.owner(slot).server_ms())
        except BackendError:
            self._map.stale()
            now = int(time.time() * 1000)
        members = await self._run(slot, "ZRANGE", key, f"({now}", "+inf", "BYSCORE")
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def statistics(self) -> BackendStatistics:
        """The Redis statistics, gathered from every primary of the cluster."""
        await self._map.refresh()
        return await self._statistics_on(self._map.primaries())

    async def flush(self) -> None:
        """``SCAN`` every primary for this prefix's keys; ``UNLINK`` them (one key per command)."""
        await self._map.refresh()
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self._config.prefix) + ":[qg]:{*"
        for shard in self._map.primaries():
            cursor: Any = b"0"
            while True:
                cursor, keys = await shard.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                # One key per UNLINK: the keys of one node lie in many slots.
                futures = [shard.execute("UNLINK", key) for key in keys]
                for future in futures:
                    reply = await future
                    if isinstance(reply, ResponseError) and redirect_of(reply) is None:
                        raise translate(reply, shard.spec.id)
                if int(cursor) == 0:
                    break

    async def aclose(self) -> None:
        """Close every node's connections. Idempotent, never raises."""
        self._open = False
        await self._map.aclose()


def _wait_after(
    shard: Shard, wait: tuple[int, int] | None, previous: asyncio.Future[Any] | None = None
) -> asyncio.Future[Any] | None:
    """Queue ``WAIT`` behind the commands just queued on ``shard`` (same connection)."""
    if previous is not None:
        previous.add_done_callback(_ignore)
    if wait is None or wait[0] <= 0:
        return None
    return shard.execute("WAIT", wait[0], wait[1])


async def _check_acks(shard: Shard, waited: asyncio.Future[Any], wait: tuple[int, int]) -> None:
    acked = await waited
    if isinstance(acked, ResponseError):
        raise translate(acked, shard.spec.id)
    if int(acked) < wait[0]:
        raise BackendError(
            f"redis {shard.spec.id}: stored, but only {acked} of {wait[0]} replicas confirmed it "
            f"within {wait[1]} ms (wait_replicas); a failover now could lose it"
        )


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class RedisClusterChannelLayer(ChannelLayer):
    """A :class:`~layers.ChannelLayer` on a Redis Cluster: the Django Channels ``BACKEND`` path.

    ``hosts`` lists seed nodes; the other options are those of
    :class:`~layers.backends.redis.RedisChannelLayer`.
    """

    backend_class = RedisClusterBackend
