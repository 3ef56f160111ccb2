"""Redis backend: lists per queue, single-key Lua scripts, sharding, Sentinel, TLS.

Features
    A drop-in for ``channels_redis.core.RedisChannelLayer``: every option of it is
    accepted with the same meaning, so switching is changing the ``BACKEND`` path.
    Per-channel FIFO by list position (no sender clocks); at-most-once delivery
    (atomic pops, no "in-flight" re-queueing, nothing ever re-sent after a lost
    reply); expiry and capacity checked atomically in one Lua script using the
    server's ``TIME``; groups as sorted sets scored by membership expiry;
    ``group_send`` writes once per receiving inbox, pipelined once per host.
    Concurrent commands of one event loop are coalesced into one pipeline
    (auto-pipelining), non-blocking pops included, so receives on many busy
    queues share round trips; only pops that must wait block, each on a dedicated
    connection per queue.
    Survives restarts and dropped connections: commands in flight fail with
    :class:`~layers.BackendError`, the next call reconnects (connects are retried
    with backoff), and the layer's readers resume. Needs Redis 6.2 or later
    (7.0+ recommended: ``BLMPOP``) and redis-py 5 or later, which reads the
    configuration and finds Sentinel masters; the backend opens and greets its
    connections itself and parses replies with hiredis when installed.

Connection URL
    ``redis://[[user]:password@]host[:port][/db][?options]``; ``rediss://`` for TLS
    (``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem``); ``unix:///path/redis.sock?db=1``.
    Several comma-separated hosts are sharded:
    ``redis://:secret@10.0.0.1:6379,10.0.0.2:6379/0`` (user, password, database
    and options apply to every host). Sentinel:
    ``redis+sentinel://[[user]:password@]s1:26379[,s2:26379]/master_name[/db]``
    (``?sentinel_password=...`` authenticates to the sentinels). Query options:
    ``prefix``, the layer options (``expiry``, ``capacity``...), and connection
    options with redis-py's names (``socket_connect_timeout``, ``socket_keepalive``,
    ``client_name``, ``ssl_*``...; the Redis backend's documentation lists
    which take effect). Redis Cluster: ``redis+cluster://``
    and ``rediss+cluster://`` (:mod:`layers.backends.redis.cluster`).

Options
    ``hosts``
        A list of hosts (default ``["redis://localhost:6379"]``). Each entry is a
        URL string (any form above), a ``(host, port)`` pair, a dict of redis-py
        connection keyword arguments (``{"host": ..., "port": ..., "password": ...}``,
        or ``{"address": "redis://...", **kwargs}``), or a Sentinel dict
        ``{"sentinels": [(host, port), ...], "master_name": "mymaster",
        "sentinel_kwargs": {...}, **master_connection_kwargs}``. A bare string is an
        error, as in channels_redis. Several entries are sharded (below).
    ``prefix``
        Namespace of every key (default ``"asgi"``); must not contain ``{`` or ``}``.
    ``expiry``, ``group_expiry``, ``capacity``, ``channel_capacity``,
    ``symmetric_encryption_keys``, ``serializer_format``
        The layer options, same meaning as in channels_redis (see
        :class:`layers.ChannelLayer`).
    ``random_prefix_length``
        Accepted for compatibility and ignored: lists need no uniqueness prefix.

Data layout (cluster-ready: every script touches one key, every key has a hash tag)
    Queue (a normal channel, or one process's reply inbox ``prefix.ID!``): a LIST
    ``<prefix>:q:{<queue>}`` whose elements are a 13-digit server-time expiry in ms
    followed by the payload; the key's TTL follows its newest element. Group: a
    ZSET ``<prefix>:g:{<group>}``, member = channel, score = membership expiry (ms,
    server time).

Sharding
    With several hosts, each queue and group name goes to one host by rendezvous
    hashing (:class:`~layers.backends.redis._config.Router`): every host scores
    BLAKE2b-64 of the host id, a newline and the name, and the highest wins. A reply channel
    is routed by its inbox (``prefix.ID!``) on both send and receive. Adding or
    removing one of N hosts moves about 1/N of the names (their stored messages
    are stranded until they expire).

Capabilities
    ``groups``, ``flush``, ``cross_process``, ``cross_host``.

Use as a Django Channels ``BACKEND``::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layers.backends.redis.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://localhost:6379/0"]},
        }
    }
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from layers.core.errors import BackendError, ConfigurationError, MissingDriver

try:
    import redis.asyncio  # noqa: F401 - the driver; fail early with the extra's name
    from redis.exceptions import NoScriptError, RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDriver("redis", "redis", "redis") from exc

from layers.backends.redis import _scripts
from layers.backends.redis._config import (
    HostSpec,
    Router,
    hosts_from_url,
    parse_hosts,
    url_query_names,
)
from layers.backends.redis._errors import NotSent, translate
from layers.backends.redis._shard import Shard
from layers.core.backend import Backend, BackendStatistics, Capability, Put, QueueStatistics
from layers.core.layer import ChannelLayer
from layers.core.wakeups import cancel_requested

__all__ = ["RedisBackend", "RedisChannelLayer", "RedisConfig"]


@dataclass(frozen=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


_SEND = _Script.of(_scripts.SEND)
_GROUP_ADD = _Script.of(_scripts.GROUP_ADD)
_RESTORE = _Script.of(_scripts.RESTORE)
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


@dataclass(frozen=True)
class RedisConfig:
    """The validated options shared by every per-loop :class:`RedisBackend` of a layer."""

    hosts: tuple[HostSpec, ...]
    router: Router
    prefix: str


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned command's outcome as seen (no "never retrieved" warning)."""
    if not future.cancelled():
        future.exception()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _element(now_ms: float, expiry_ms: int, payload: bytes) -> bytes:
    """A queue element: the payload behind its expiry stamp (server time, ms)."""
    return b"%013d" % int(now_ms + expiry_ms) + payload


#: KEYS[1] = queue key; ARGV[1] = now (ms). Returns {live elements, first live stamp}.
_QUEUE_STATISTICS = """
local now = tonumber(ARGV[1])
local n, first = 0, 0
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local t = tonumber(string.sub(item, 1, 13))
  if t > now then
    n = n + 1
    if first == 0 then first = t end
  end
end
return {n, first}
"""


class RedisBackend(Backend):
    """Storage on one or more Redis servers for one event loop. See the module docs."""

    name = "redis"
    capabilities = frozenset(
        {
            Capability.GROUPS,
            Capability.FLUSH,
            Capability.CROSS_PROCESS,
            Capability.CROSS_HOST,
            Capability.STATISTICS,
        }
    )

    def __init__(self, *, config: RedisConfig) -> None:
        self._config = config
        self._router = config.router
        self._queue_prefix = f"{config.prefix}:q:"
        self._group_prefix = f"{config.prefix}:g:"
        self._shards: list[Shard] = []

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """``hosts``, ``prefix`` and ``random_prefix_length`` (channels_redis's names)."""
        return frozenset({"hosts", "prefix", "random_prefix_length"})

    @classmethod
    def url_option_names(cls) -> frozenset[str]:
        """``prefix`` and the redis-py connection options (``socket_timeout``...)."""
        return url_query_names()

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """Map a ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URL."""
        specs, options = hosts_from_url(url)
        return {"hosts": specs, **options}

    @classmethod
    def prepare_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``hosts`` and ``prefix`` once; build the shared router (no I/O)."""
        allowed = {"hosts", "prefix", "random_prefix_length"}
        for key in options:
            if key not in allowed:
                raise ConfigurationError(
                    key,
                    f"unknown option for the redis backend (known: {', '.join(sorted(allowed))})",
                )
        hosts = options.get("hosts")
        if isinstance(hosts, Sequence) and hosts and all(isinstance(h, HostSpec) for h in hosts):
            specs = list(hosts)
        else:
            specs = parse_hosts(hosts)
        prefix = options.get("prefix", "asgi")
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                "prefix", f"must be a non-empty str without braces: {prefix!r}"
            )
        for spec in specs:
            try:
                spec.make_connector(check=True)
            except (TypeError, ValueError, RedisError) as exc:
                raise ConfigurationError("hosts", f"bad options for {spec.id}: {exc}") from exc
        config = RedisConfig(tuple(specs), Router([s.id for s in specs]), prefix)
        return {"config": config}

    # -- helpers ----------------------------------------------------------------------

    def _shard(self, name: str) -> Shard:
        shards = self._shards
        if not shards:
            raise BackendError("the redis backend is not open")
        return shards[0] if len(shards) == 1 else shards[self._router.index(name)]

    async def _eval(
        self, shard: Shard, script: _Script, key: str, *args: Any, settle: bool = False
    ) -> Any:
        """Run ``script`` by its SHA, by its source if the server lost its script cache.

        ``settle``: cancelled once the command was written, wait for its reply and
        return it as it is (a :class:`ResponseError` too), the cancellation staying
        requested; :class:`NotSent` if it was never written; ``CancelledError`` if no
        reply came (the outcome unknown). A reply of a cancelled call is never followed
        by a second command.
        """
        for command, name in (("EVALSHA", script.sha), ("EVAL", script.source)):
            future = shard.execute(command, name, 1, key, *args)
            if not settle:
                reply = await future
            else:
                try:
                    reply = await asyncio.shield(future)
                except asyncio.CancelledError:
                    reply = await shard.reply_of_cancelled(future)
                    if reply is not None:
                        return reply
                    failed = future.done() and not future.cancelled() and future.exception()
                    if isinstance(failed, NotSent):
                        raise failed from None  # never written
                    raise
            if not isinstance(reply, NoScriptError):  # else not run: the cache was lost
                break
        if isinstance(reply, ResponseError):
            raise translate(reply, shard.spec.id)
        return reply

    # -- the contract -----------------------------------------------------------------

    async def open(self) -> None:
        """Prepare one connection set per host; connections open lazily on first use."""
        if not self._shards:
            self._shards = [Shard(spec) for spec in self._config.hosts]

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        """One ``SEND`` script on the queue's host: trim, check capacity, ``RPUSH``, ``PEXPIRE``.

        Atomic on the server. Cancellation: stored once or not at all (the command
        is never re-sent). Raises :class:`~layers.BackendError` if the host fails.
        """
        key = self._queue_prefix + "{" + queue + "}"
        shard, expiry_ms = self._shard(queue), _ms(expiry)
        element = _element(await shard.server_ms(), expiry_ms, payload)
        reply = await self._eval(shard, _SEND, key, expiry_ms, capacity, element)
        return bool(reply == 1)

    async def send_many(self, puts: Sequence[Put]) -> list[bool]:
        """One ``SEND`` script per put, one pipeline per host (see ``Backend.send_many``)."""
        # Every command is queued with no await between them, so they share pipelines;
        # plain futures, no task per put. The clocks are read first.
        shards = [self._shard(put.queue) for put in puts]
        now = {id(shard): await shard.server_ms() for shard in shards}
        calls = []
        for put, shard in zip(puts, shards, strict=True):
            key = self._queue_prefix + "{" + put.queue + "}"
            expiry_ms = _ms(put.expiry)
            element = _element(now[id(shard)], expiry_ms, put.payload)
            args = (key, expiry_ms, put.capacity, element)
            calls.append((shard, args, shard.execute("EVALSHA", _SEND.sha, 1, *args)))
        results = []
        try:
            for shard, args, future in calls:
                reply = await future
                if isinstance(reply, NoScriptError):  # not run: the script cache was lost
                    reply = await shard.execute("EVAL", _SEND.source, 1, *args)
                if isinstance(reply, ResponseError):
                    raise translate(reply, shard.spec.id)
                results.append(reply == 1)
        finally:
            for _, _, future in calls[len(results) + 1 :]:
                future.add_done_callback(_retrieve)
        return results

    async def restore(self, queue: str, payloads: Sequence[tuple[bytes, float]]) -> bool:
        """One ``RESTORE`` script: ``LPUSH`` back at the head, in order; see ``Backend.restore``.

        Cancelled, it waits for the script's reply (the command is written whatever
        happens to its caller): True when it ran, False when the server refused it
        (a lost script cache: not run), the cancellation staying requested. No
        reply (the connection failed): ``CancelledError``, the outcome unknown.
        """
        key = self._queue_prefix + "{" + queue + "}"
        args: list[Any] = []
        for payload, expiry in payloads:
            args += (max(1, _ms(expiry)), payload)
        try:
            reply = await self._eval(self._shard(queue), _RESTORE, key, *args, settle=True)
        except NotSent:
            if cancel_requested():
                return False  # cancelled before it was written: not run
            raise
        # Cancelled, the reply comes as it is: a refusal (a lost script cache) did not run.
        return not isinstance(reply, ResponseError)

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        """Pipelined ``LPOP``; if the queue is empty, ``BLMPOP`` on the queue's own connection.

        Expired payloads are dropped. Cancelled once a pop is sent, it waits for the
        reply (a ``BLMPOP`` is first ended with ``CLIENT UNBLOCK``) and returns what
        was popped, the cancellation staying requested (see
        :meth:`~layers.Backend.receive`); if no reply comes, the connection is closed
        and a payload the server popped is lost, never duplicated. A connection error
        raises :class:`~layers.BackendError`; the next call reconnects.
        """
        key = self._queue_prefix + "{" + queue + "}"
        return await self._shard(queue).pop(key, timeout, max(1, limit))

    async def group_add(self, group: str, channel: str, *, expiry: float) -> None:
        """``GROUP_ADD`` script: drop expired members, ``ZADD`` with the new expiry."""
        key = self._group_prefix + "{" + group + "}"
        await self._eval(self._shard(group), _GROUP_ADD, key, _ms(expiry), channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """``ZREM``; a no-op for a non-member. Removed or left as it was if cancelled."""
        key = self._group_prefix + "{" + group + "}"
        await self._shard(group).call("ZREM", key, channel)

    async def group_channels(self, group: str) -> list[str]:
        """Unexpired members: ``ZRANGE key (now +inf BYSCORE``, read-only, no script.

        "Now" is the server clock as estimated from ``TIME`` (refreshed every 30 s);
        expired members are removed by the next ``group_add`` or with the key.
        """
        key = self._group_prefix + "{" + group + "}"
        shard = self._shard(group)
        now = int(await shard.server_ms())
        members = await shard.call("ZRANGE", key, f"({now}", "+inf", "BYSCORE")
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def statistics(self) -> BackendStatistics:
        """``SCAN`` this prefix's keys on every host; count live elements and members.

        Read-only. Per queue, one read-only script counts the unexpired elements and
        returns the first one's expiry stamp (no payload crosses the network).
        """
        return await self._statistics_on(self._shards)

    async def _statistics_on(self, shards: Sequence[Shard]) -> BackendStatistics:
        """:meth:`statistics` over ``shards`` (every host, or every cluster primary)."""
        prefix = _GLOB_SPECIAL.sub(r"\\\1", self._config.prefix)
        queues: list[QueueStatistics] = []
        groups: dict[str, int] = {}
        for shard in shards:
            now = int(await shard.server_ms())
            for kind in ("q", "g"):
                cursor: Any = b"0"
                while True:
                    cursor, keys = await shard.call(
                        "SCAN", cursor, "MATCH", f"{prefix}:{kind}:{{*", "COUNT", 1000
                    )
                    for key in keys:
                        text = key.decode() if isinstance(key, bytes) else str(key)
                        name = text[text.index("{") + 1 : -1]
                        if kind == "g":
                            groups[name] = int(await shard.call("ZCOUNT", key, f"({now}", "+inf"))
                            continue
                        count, first = await shard.call("EVAL", _QUEUE_STATISTICS, 1, key, now)
                        if int(count):
                            queues.append(
                                QueueStatistics(name, int(count), (int(first) - now) / 1000)
                            )
                    if int(cursor) == 0:
                        break
        return BackendStatistics(queues, groups)

    async def flush(self) -> None:
        """``SCAN`` + ``UNLINK`` this prefix's keys on every host (never ``KEYS``)."""
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self._config.prefix) + ":[qg]:{*"
        for shard in self._shards:
            cursor = b"0"
            while True:
                cursor, keys = await shard.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                if keys:
                    await shard.call("UNLINK", *keys)
                if int(cursor) == 0:
                    break

    async def aclose(self) -> None:
        """Close every connection and pipeline of this loop. Idempotent, never raises."""
        shards, self._shards = self._shards, []
        for shard in shards:
            await shard.aclose()


class RedisChannelLayer(ChannelLayer):
    """A :class:`~layers.ChannelLayer` on Redis: the Django Channels ``BACKEND`` path.

    Accepts channels_redis's options (``hosts``, ``prefix``, ``expiry``,
    ``group_expiry``, ``capacity``, ``channel_capacity``,
    ``symmetric_encryption_keys``, ``serializer_format``) with the same meaning.
    """

    backend_class = RedisBackend
