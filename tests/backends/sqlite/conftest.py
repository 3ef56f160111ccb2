"""SQLite test fixtures: a fresh database file per test, and backends/layers on it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec

import pytest

from layers.backends.sqlite import SqliteBackend, SqliteChannelLayer

P = ParamSpec("P")

#: The longest any async test here may run before it fails as hung.
TEST_TIMEOUT = 60.0


def arun(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an ``async def`` test in a fresh event loop, bounded by TEST_TIMEOUT."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(TEST_TIMEOUT):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database file that does not exist yet, in a fresh temporary folder."""
    return tmp_path / "layers.db"


BackendFactory = Callable[..., SqliteBackend]


@pytest.fixture
def make_backend(db_path: Path) -> BackendFactory:
    """Make unopened backends on ``db_path`` (options as for the layer's CONFIG)."""

    def factory(**options: Any) -> SqliteBackend:
        prepared = SqliteBackend.prepare_options({"path": str(db_path), **options})
        return SqliteBackend(**prepared)

    return factory


@pytest.fixture
def make_layer(db_path: Path) -> Callable[..., SqliteChannelLayer]:
    """Make layers on ``db_path``."""

    def factory(**options: Any) -> SqliteChannelLayer:
        return SqliteChannelLayer(path=str(db_path), **options)

    return factory
