"""Configuration of the Redis backend: ``hosts`` entries, URLs and shard routing.

Every accepted form of a host (a URL string, a ``(host, port)`` pair, a dict of
redis-py connection keyword arguments, a Sentinel dict) becomes one immutable
:class:`HostSpec`. A :class:`Router` maps queue and group names to hosts by
rendezvous hashing; it is shared by every per-loop backend of one layer.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.asyncio.connection import ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff

from layers.backends.redis._connection import Connector, connect_options
from layers.core.errors import ConfigurationError
from layers.core.redact import redact_url

__all__ = ["DEFAULT_HOST", "HostSpec", "Router", "hosts_from_url", "parse_hosts", "url_query_names"]

DEFAULT_HOST = "redis://localhost:6379"

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")


@dataclass(frozen=True)
class HostSpec:
    """One Redis deployment the layer shards over: a server, or a Sentinel-managed master.

    ``id`` names the host for consistent hashing: the scheme, address and database
    (never the password). Renaming a host moves the names routed to it.
    """

    id: str
    url: str | None = field(default=None, repr=False)  # may hold a password
    kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    sentinel_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def make_pool(self) -> tuple[ConnectionPool, Sentinel | None]:
        """redis-py's pool for these options (no I/O); the Sentinel manager when there is one."""
        kwargs = _with_defaults(self.kwargs)
        if self.sentinels:
            manager = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
                list(self.sentinels), sentinel_kwargs=dict(self.sentinel_kwargs)
            )
            pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
                self.master_name, manager, **kwargs
            )
            return pool, manager
        if self.url is not None:
            return ConnectionPool.from_url(self.url, **kwargs), None
        return ConnectionPool(**kwargs), None

    def make_connector(self, *, check: bool = False) -> Connector:
        """Our connection factory for this host (no I/O), from redis-py's parsed options.

        redis-py's public pool reads the URL or keyword form (the backend's
        configuration format); the backend opens the connections itself. With
        ``check``, redis-py also builds one connection object, rejecting unknown
        options with ``TypeError``. Bad values raise ``ValueError``.
        """
        pool, sentinel = self.make_pool()
        if check:
            pool.make_connection()  # type: ignore[no-untyped-call]
        options = connect_options(pool.connection_class, pool.connection_kwargs)
        return Connector(options, self.id, sentinel, self.master_name)


#: URL query options that take effect (see ``connect_options`` and ``tls_context``).
URL_OPTIONS_IN_EFFECT = frozenset(
    {
        "db",
        "username",
        "password",
        "client_name",
        "lib_name",
        "lib_version",
        "socket_connect_timeout",
        "socket_keepalive",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_exclude_verify_flags",
        "ssl_include_verify_flags",
        "ssl_keyfile",
        "ssl_min_version",
        "ssl_password",
    }
)
#: Options redis-py's own URL parser reads that have no effect here, accepted so that a
#: URL written for redis-py or channels_redis keeps working (docs/backends/redis.md).
URL_OPTIONS_WITHOUT_EFFECT = frozenset(
    {
        "socket_timeout",
        "health_check_interval",
        "max_connections",
        "retry_on_timeout",
        "protocol",
        "socket_read_size",
        "timeout",
    }
)


@functools.cache
def url_query_names() -> frozenset[str]:
    """The names a Redis URL's query may hold: ``prefix`` and the connection options.

    Those that take effect, and those redis-py's URL parser reads that are accepted
    without effect; ``sentinel_``-prefixed forms configure the connections to the
    sentinels of a ``redis+sentinel://`` URL. redis-py's other keyword arguments (its
    internals among them) are refused in a URL, with the valid names; the dict form of
    ``hosts`` passes keyword arguments to redis-py as they are.
    """
    names = URL_OPTIONS_IN_EFFECT | URL_OPTIONS_WITHOUT_EFFECT
    return frozenset({"prefix"} | names | {f"sentinel_{name}" for name in names})


def _with_defaults(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    # Connect attempts may be retried (nothing was sent yet); commands never are:
    # the backend sends commands itself, so a reply lost on a dropped connection can
    # never make a write happen twice.
    out.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
    out.setdefault("socket_connect_timeout", 5.0)
    out["decode_responses"] = False
    return out


def _sentinel_spec(entry: Mapping[str, Any]) -> HostSpec:
    entry = dict(entry)
    master_name = entry.pop("master_name", None)
    sentinels = entry.pop("sentinels", None)
    sentinel_kwargs = entry.pop("sentinel_kwargs", None) or {}
    if not isinstance(master_name, str) or not master_name:
        raise ConfigurationError("hosts", "a Sentinel entry needs a 'master_name' string")
    pairs: list[tuple[str, int]] = []
    for item in sentinels or ():
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise ConfigurationError("hosts", f"sentinels must be (host, port) pairs: {item!r}")
        pairs.append((str(item[0]), int(item[1])))
    if not pairs:
        raise ConfigurationError("hosts", "a Sentinel entry needs at least one sentinel")
    db = entry.get("db", 0)
    return HostSpec(
        id=f"sentinel:{master_name}/{db}",
        kwargs=entry,
        sentinels=tuple(pairs),
        master_name=master_name,
        sentinel_kwargs=dict(sentinel_kwargs),
    )


def _url_id(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = dict(parse_qsl(parts.query)).get("db", "0")
        return f"unix:{parts.path}/{db}"
    db = (parts.path or "/0").strip("/") or "0"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"


def _entry_specs(entry: object) -> list[HostSpec]:
    if isinstance(entry, str):
        return hosts_from_url(entry)[0]
    if isinstance(entry, list | tuple):
        if len(entry) != 2:
            raise ConfigurationError("hosts", f"a host pair must be (host, port): {entry!r}")
        host, port = str(entry[0]), int(entry[1])
        return [HostSpec(id=f"{host}:{port}/0", kwargs={"host": host, "port": port})]
    if isinstance(entry, Mapping):
        if "sentinels" in entry or "master_name" in entry:
            return [_sentinel_spec(entry)]
        if "address" in entry:
            rest = {k: v for k, v in entry.items() if k != "address"}
            address = entry["address"]
            if isinstance(address, list | tuple):
                rest.update(host=str(address[0]), port=int(address[1]))
                return _entry_specs(rest)
            specs = hosts_from_url(str(address))[0]
            return [HostSpec(id=s.id, url=s.url, kwargs={**s.kwargs, **rest}) for s in specs]
        kwargs = dict(entry)
        if "path" in kwargs:
            spec_id = f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
        else:
            host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
            spec_id = f"{host}:{port}/{kwargs.get('db', 0)}"
        return [HostSpec(id=spec_id, kwargs=kwargs)]
    raise ConfigurationError("hosts", f"unsupported host entry {redact_url(repr(entry))}")


def parse_hosts(hosts: object) -> list[HostSpec]:
    """Turn a channels_redis-style ``hosts`` value into host specs.

    ``None`` or an empty list means ``redis://localhost:6379``. A bare string is an
    error, as in channels_redis (give a list, even for one host).
    """
    if not hosts:
        return hosts_from_url(DEFAULT_HOST)[0]
    if isinstance(hosts, str | bytes):
        raise ConfigurationError(
            "hosts", "must be a list of hosts, even for one host (e.g. ['redis://localhost:6379'])"
        )
    if not isinstance(hosts, Sequence):
        raise ConfigurationError("hosts", f"must be a list, not {type(hosts).__name__}")
    specs = [spec for entry in hosts for spec in _entry_specs(entry)]
    ids = [spec.id for spec in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigurationError("hosts", f"the same host is listed twice: {', '.join(duplicates)}")
    return specs


def _split_netloc(netloc: str) -> tuple[str, list[str]]:
    userinfo, _, hostlist = netloc.rpartition("@")
    return userinfo, [h for h in hostlist.split(",") if h]


def hosts_from_url(url: str) -> tuple[list[HostSpec], dict[str, str]]:
    """Parse a layer URL into host specs and the backend options in its query.

    Forms: ``redis://[user:password@]host[:port][,host2[:port]...][/db][?options]``
    (several comma-separated hosts are sharded), ``rediss://`` (TLS), ``unix:///path
    ?db=N``, ``redis+sentinel://[user:password@]s1:26379[,s2:26379]/master_name[/db]``.
    The ``prefix`` query parameter is returned as a backend option; the others are
    redis-py connection options (``socket_timeout``, ``ssl_cert_reqs``...).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        raise ConfigurationError(
            "url",
            f"{scheme}:// is a Redis Cluster URL: use it as the layer URL, or "
            "layers.backends.redis.cluster.RedisClusterChannelLayer with the nodes as hosts",
        )
    if scheme not in _SCHEMES:
        raise ConfigurationError("url", f"not a Redis URL: {redact_url(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if scheme != "rediss":
        for key, _ in query:
            if key.startswith("ssl_"):
                raise ConfigurationError(
                    key, f"a TLS option, for rediss:// URLs only (this URL is {scheme}://)"
                )
    options = {k: v for k, v in query if k == "prefix"}
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    if scheme == "unix":
        # Spelled out: urlunsplit drops the "//" of an empty host, and recent redis-py
        # accepts only "unix://".
        clean = f"unix://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
        return [HostSpec(id=_url_id(clean), url=clean)], options
    userinfo, hostlist = _split_netloc(parts.netloc)
    auth = f"{userinfo}@" if userinfo else ""
    if scheme == "redis+sentinel":
        return [_sentinel_from_url(parts.path, auth, hostlist, rest, url)], options
    if not hostlist:
        hostlist = ["localhost:6379"]
    specs = []
    for host in hostlist:
        single = f"{scheme}://{auth}{host}{parts.path}" + (f"?{rest}" if rest else "")
        specs.append(HostSpec(id=_url_id(single), url=single))
    return specs, options


def _sentinel_from_url(path: str, auth: str, hostlist: list[str], query: str, url: str) -> HostSpec:
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ConfigurationError(
            "url",
            "expected redis+sentinel://host:port[,host:port]/master_name[/db]: "
            f"{redact_url(url)!r}",
        )
    master_name = unquote(segments[0])
    db = segments[1] if len(segments) > 1 else "0"
    # redis-py parses the auth and connection options; the address is a placeholder.
    kwargs: dict[str, Any] = dict(parse_url(f"redis://{auth}placeholder/{db}?{query}"))
    for key in ("host", "port", "connection_class"):
        kwargs.pop(key, None)
    sentinel_kwargs = {
        key.removeprefix("sentinel_"): kwargs.pop(key)
        for key in list(kwargs)
        if key.startswith("sentinel_")
    }
    sentinels = []
    for host in hostlist:
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
        sentinels.append((name.strip("[]"), int(port)))
    return _sentinel_spec(
        {
            **kwargs,
            "master_name": master_name,
            "sentinels": sentinels,
            "sentinel_kwargs": sentinel_kwargs,
        }
    )


class Router:
    """Maps a queue or group name to a host index: rendezvous (highest random weight) hashing.

    For a name, every host gets the score BLAKE2b-64 of the host id, a newline and the name, read
    as a big-endian integer, and the highest score wins. The result depends only on
    the host ids and the name, so every process agrees without coordination (no
    Python ``hash()``, which is salted per process); adding or removing one of N
    hosts moves only about 1/N of the names.
    """

    _CACHE_LIMIT = 65536

    def __init__(self, ids: Sequence[str]) -> None:
        self._prefixes = [f"{host_id}\n".encode() for host_id in ids]
        self._cache: dict[str, int] = {}

    def index(self, name: str) -> int:
        """Return the index of the host that stores ``name``."""
        found = self._cache.get(name)
        if found is not None:
            return found
        encoded = name.encode()
        best, best_score = 0, -1
        for i, prefix in enumerate(self._prefixes):
            score = int.from_bytes(hashlib.blake2b(prefix + encoded, digest_size=8).digest())
            if score > best_score:
                best, best_score = i, score
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[name] = best
        return best
