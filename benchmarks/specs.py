"""Layer specs: what the harness can run, how to name it and how to build it.

A spec is written ``[label=]target`` on the command line, where ``target`` is

- one of our URLs (``memory://``, ``redis://host:6379/8``, ``postgresql://...``,
  ``sqlite:///path.db``): built with :func:`layers.from_url`;
- a dotted class path, optionally followed by ``:`` and a JSON object of keyword
  arguments (``channels_redis.core.RedisChannelLayer:{"hosts": ["redis://..."]}``):
  any Channels-compatible layer, built as ``Class(**config)``;
- ``baseline:NAME`` for a bare-driver loop from :mod:`benchmarks.baselines`.

``{tmp}`` in a target is replaced by the run's scratch directory, ``{redis}`` and
``{postgres}`` by the server URLs (``LAYERS_BENCH_REDIS_URL``,
``LAYERS_BENCH_POSTGRES_URL``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_REFERENCES",
    "FAMILIES",
    "Spec",
    "default_specs",
    "expand",
    "parse_spec",
    "postgres_url",
    "redis_url",
]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+-]*://")

FAMILIES = ("memory", "redis", "postgres", "sqlite", "other")

_SCHEME_FAMILY = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+sentinel": "redis",
    "redis+cluster": "redis",
    "postgres": "postgres",
    "postgresql": "postgres",
    "sqlite": "sqlite",
}

#: Peers' layer classes: (family, cross-process?, needs Django settings?).
_KNOWN_CLASSES: dict[str, tuple[str, bool, bool]] = {
    "channels.layers.InMemoryChannelLayer": ("memory", False, False),
    "channels_redis.core.RedisChannelLayer": ("redis", True, False),
    "channels_redis.pubsub.RedisPubSubChannelLayer": ("redis", True, False),
    "channels_postgres.core.PostgresChannelLayer": ("postgres", True, True),
    "channels_sqlite.layers.SqliteChannelLayer": ("sqlite", True, True),
    "channels_lite.layers.core.SQLiteChannelLayer": ("sqlite", True, True),
    "channels_lite.layers.aio.AIOSQLiteChannelLayer": ("sqlite", True, True),
}

_BASELINE_FAMILY = {
    "redis-lpush-brpop": "redis",
    "redis-pipelined": "redis",
    "psycopg-skip-locked": "postgres",
    "aiosqlite-returning": "sqlite",
}

#: The spec each family's ratios are computed against, unless ``--reference`` says.
DEFAULT_REFERENCES = {
    "memory": "channels-inmemory",
    "redis": "channels_redis",
    "postgres": "channels_postgres",
    "sqlite": "channels-lite-aio",
}

#: Every layer is given this capacity so that no scenario measures back-pressure.
BENCH_CAPACITY = 100_000


def redis_url() -> str:
    """The Redis server for benchmarks (database 8 unless configured)."""
    return os.environ.get("LAYERS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")


def postgres_url() -> str:
    """The PostgreSQL database for benchmarks."""
    return os.environ.get("LAYERS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Spec:
    """One layer to measure: a label, how to build it and which family it belongs to."""

    label: str
    kind: str  # "url", "class" or "baseline"
    target: str
    config: dict[str, Any] = field(default_factory=dict)
    family: str = "other"
    cross_process: bool | None = None  # None: ask the layer's capabilities (ours)
    needs_django: bool = False

    def to_json(self) -> str:
        """Serialize for a worker process."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def _default_label(kind: str, target: str) -> str:
    if kind == "url":
        return "layers-" + _SCHEME_FAMILY.get(urlsplit(target).scheme, urlsplit(target).scheme)
    if kind == "baseline":
        return target
    return target.rsplit(".", 1)[-1]


def parse_spec(text: str) -> Spec:
    """Parse ``[label=]target`` (see the module docstring); raise ValueError if malformed."""
    label = ""
    head, sep, rest = text.partition("=")
    if sep and "://" not in head and ":" not in head and "{" not in head:
        label, text = head.strip(), rest.strip()
    if text.startswith("baseline:"):
        name = text.removeprefix("baseline:")
        if name not in _BASELINE_FAMILY:
            raise ValueError(f"unknown baseline {name!r}; known: {', '.join(_BASELINE_FAMILY)}")
        return Spec(
            label or name, "baseline", name, family=_BASELINE_FAMILY[name], cross_process=True
        )
    if _URL.match(text):
        family = _SCHEME_FAMILY.get(urlsplit(text).scheme.lower(), "other")
        return Spec(label or _default_label("url", text), "url", text, family=family)
    path, _, raw = text.partition(":")
    if "." not in path:
        raise ValueError(f"{text!r} is neither a URL, a dotted class path nor baseline:NAME")
    config = json.loads(raw) if raw.strip() else {}
    if not isinstance(config, dict):
        raise ValueError(f"the JSON config of {path!r} must be an object")
    ours = path.split(".")[2] if path.startswith("layers.backends.") else ""
    if ours:  # one of our layer classes: its capabilities say whether it is cross-process
        family, cross, django = _SCHEME_FAMILY.get(ours, "other"), None, False
    else:
        family, cross, django = _KNOWN_CLASSES.get(path, ("other", False, False))
    return Spec(
        label or _default_label("class", path), "class", path, config, family, cross, django
    )


def default_specs() -> list[str]:
    """The specs of a default run: ours, the peers and the bare-driver baselines."""
    redis, pg = "{redis}", "{postgres}"
    cap = BENCH_CAPACITY
    return [
        f"layers-memory=memory://?capacity={cap}",
        f'channels-inmemory=channels.layers.InMemoryChannelLayer:{{"capacity": {cap}}}',
        f"layers-redis={redis}?prefix=benchours&capacity={cap}",
        "channels_redis=channels_redis.core.RedisChannelLayer:"
        f'{{"hosts": ["{redis}"], "prefix": "benchpeer", "capacity": {cap}}}',
        "channels_redis-pubsub=channels_redis.pubsub.RedisPubSubChannelLayer:"
        f'{{"hosts": ["{redis}"], "prefix": "benchpubsub"}}',
        "baseline:redis-lpush-brpop",
        "baseline:redis-pipelined",
        f"layers-postgres={pg}?schema=bench_layers&capacity={cap}",
        "layers-postgres-prefetch=layers.backends.postgres.PostgresChannelLayer:"
        f'{{"url": "{pg}?schema=bench_prefetch", "capacity": {cap}, "prefetch": 100}}',
        "channels_postgres=channels_postgres.core.PostgresChannelLayer:{}",
        "baseline:psycopg-skip-locked",
        f"layers-sqlite=sqlite:///{{tmp}}/layers.db?capacity={cap}",
        'channels-sqlite=channels_sqlite.layers.SqliteChannelLayer:{"database": "channels_sqlite",'
        f' "capacity": {cap}, "polling_interval": 0.01}}',
        'channels-lite-aio=channels_lite.layers.aio.AIOSQLiteChannelLayer:{"database":'
        f' "channels_lite", "capacity": {cap}}}',
        "baseline:aiosqlite-returning",
    ]


def expand(text: str, tmp: str) -> str:
    """Replace ``{tmp}``, ``{redis}`` and ``{postgres}`` placeholders in a target."""
    return (
        text.replace("{tmp}", tmp)
        .replace("{redis}", redis_url())
        .replace("{postgres}", postgres_url())
    )
