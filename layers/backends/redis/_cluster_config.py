"""Configuration of the Redis Cluster mode: seeds, node addresses, ``WAIT`` options, slots."""

from __future__ import annotations

import binascii
import math
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from layers.backends.redis._config import HostSpec, hosts_from_url
from layers.core.errors import ConfigurationError

__all__ = [
    "CLUSTER_OPTIONS",
    "CLUSTER_SCHEMES",
    "SLOTS",
    "address",
    "check_seed",
    "key_slot",
    "no_replicas",
    "node_spec",
    "seeds_from_url",
    "wait_options",
]

SLOTS = 16384

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
CLUSTER_OPTIONS = ("read_from_replicas", "wait_replicas", "wait_timeout")


def key_slot(name: str) -> int:
    """The cluster slot of the key whose hash tag is ``name`` (CRC16-XMODEM mod 16384)."""
    return binascii.crc_hqx(name.encode(), 0) % SLOTS


def address(spec: HostSpec) -> tuple[str, int]:
    if spec.url is not None:
        parts = urlsplit(spec.url)
        if parts.scheme == "unix":
            raise ConfigurationError("hosts", "cluster nodes are reached by host and port")
        return parts.hostname or "localhost", parts.port or 6379
    return str(spec.kwargs.get("host", "localhost")), int(spec.kwargs.get("port", 6379))


def node_spec(template: HostSpec, host: str, port: int) -> HostSpec:
    """The seed's credentials and options, at another node's address."""
    node_id = f"{host}:{port}"
    if template.url is not None:
        parts = urlsplit(template.url)
        userinfo, _, _ = parts.netloc.rpartition("@")
        shown = f"[{host}]" if ":" in host else host
        netloc = (f"{userinfo}@" if userinfo else "") + f"{shown}:{port}"
        return HostSpec(id=node_id, url=parts._replace(netloc=netloc, path="/0").geturl())
    return HostSpec(id=node_id, kwargs={**template.kwargs, "host": host, "port": port})


def check_seed(spec: HostSpec) -> None:
    if spec.sentinels:
        raise ConfigurationError("hosts", "a cluster seed cannot be a Sentinel entry")
    if spec.url is not None:
        parts = urlsplit(spec.url)
        db = (parts.path or "/0").strip("/") or "0"
        db = dict(parse_qsl(parts.query)).get("db", db)
    else:
        db = str(spec.kwargs.get("db", 0))
    if db != "0":
        raise ConfigurationError("hosts", f"a Redis Cluster has only database 0, not {db}")
    address(spec)


def seeds_from_url(url: str) -> tuple[list[HostSpec], dict[str, str]]:
    parts = urlsplit(url)
    plain = CLUSTER_SCHEMES.get(parts.scheme.lower())
    if plain is None:
        raise ConfigurationError(
            "url", f"expected redis+cluster:// or rediss+cluster://, got {parts.scheme}://"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in CLUSTER_OPTIONS}
    rest = urlencode([(k, v) for k, v in query if k not in CLUSTER_OPTIONS])
    specs, options = hosts_from_url(parts._replace(scheme=plain, query=rest).geturl())
    options.update(ours)
    return specs, options


def wait_options(options: dict[str, Any]) -> tuple[int, int]:
    """``wait_replicas`` (an int >= 0) and ``wait_timeout`` (seconds > 0), as ``WAIT`` args."""
    raw = options.pop("wait_replicas", 0)
    try:
        replicas = int(raw)
    except (TypeError, ValueError):
        replicas = -1
    if replicas < 0 or isinstance(raw, bool | float):
        raise ConfigurationError("wait_replicas", f"must be an int >= 0, not {raw!r}")
    raw = options.pop("wait_timeout", 1.0)
    try:
        timeout = float(raw)
    except (TypeError, ValueError):
        timeout = -1.0
    if not (0 < timeout < math.inf) or isinstance(raw, bool):
        raise ConfigurationError("wait_timeout", f"must be a number of seconds > 0, not {raw!r}")
    return replicas, max(1, round(timeout * 1000))


def no_replicas(value: object) -> None:
    if value in (False, None, "false", "False", "0", "no", 0):
        return
    raise ConfigurationError(
        "read_from_replicas",
        f"must be False (pops are writes and always run on primaries), not {value!r}",
    )
