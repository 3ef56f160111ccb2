"""Channels' own machinery (communicators, get_channel_layer, runworker) on our layers.

``backend_url`` runs a test on every built-in backend; each test gets a private
namespace (a fresh SQLite file, Redis prefix or PostgreSQL schema).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("LAYERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "LAYERS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _with(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={v}" for k, v in params.items())


def make_url(backend: str, tmp_path: Path) -> str:
    """A layer URL of ``backend`` in a namespace of its own."""
    tag = uuid.uuid4().hex[:10]
    if backend == "memory":
        return f"memory://t{tag}"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/channels-{tag}.db"
    if backend == "redis":
        return _with(REDIS_URL, prefix=f"chreal{tag}")
    return _with(POSTGRES_URL, schema=f"chreal_{tag}")


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL on each built-in backend, in a namespace of its own (dropped afterwards)."""
    url = make_url(request.param, tmp_path)
    yield url
    if request.param == "postgres":
        import psycopg

        schema = url.rsplit("schema=", 1)[1]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
