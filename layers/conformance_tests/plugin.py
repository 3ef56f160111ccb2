"""Pytest hooks and fixtures of the conformance suite.

Fixtures a plugin author may override (in a ``conftest.py``):

``layer_factory``
    A callable ``factory(**options) -> ChannelLayer``. The suite passes layer
    options such as ``expiry=0.5`` or ``capacity=3`` to test time- and
    capacity-dependent rules quickly. Every layer it returns must share one store
    (two layers from the factory are two "processes" of one deployment).
    Default: ``layers.from_url(--layer-url, **options)``.
``layer_url``
    The URL given with ``--layer-url`` (or ``LAYERS_CONFORMANCE_URL``). Tests that
    start other OS processes need it, to build an equivalent layer there; without
    one they skip, saying so.

Each test gets a fresh event loop. Tests are plain functions wrapped by
:func:`async_test`, so the suite needs no async pytest plugin.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ParamSpec, Protocol

import pytest

from layers.core.layer import ChannelLayer

__all__ = [
    "LayerFactory",
    "async_test",
    "layer",
    "layer_factory",
    "layer_url",
    "pytest_addoption",
    "pytest_configure",
]

P = ParamSpec("P")

#: The longest any single conformance test may run before it fails as hung.
TEST_TIMEOUT = float(os.environ.get("LAYERS_CONFORMANCE_TIMEOUT", "60"))


class LayerFactory(Protocol):
    """Makes layers of the deployment under test: ``factory(**layer_options)``."""

    def __call__(self, **options: Any) -> ChannelLayer: ...


def async_test(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an ``async def`` test in a fresh event loop, failing it after TEST_TIMEOUT."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(TEST_TIMEOUT):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--layer-url``."""
    group = parser.getgroup("layers", "channel-layers conformance suite")
    group.addoption(
        "--layer-url",
        default=os.environ.get("LAYERS_CONFORMANCE_URL"),
        help="URL of the layer under test, e.g. redis://localhost:6379/0 "
        "(default: $LAYERS_CONFORMANCE_URL)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's markers."""
    config.addinivalue_line("markers", "requires(capability): needs a backend capability")


@pytest.fixture
def layer_url(request: pytest.FixtureRequest) -> str | None:
    """The ``--layer-url`` option (None when not given)."""
    value = request.config.getoption("--layer-url", default=None)
    return value if isinstance(value, str) and value else None


@pytest.fixture
def layer_factory(layer_url: str | None) -> Iterator[LayerFactory]:
    """Make layers from ``--layer-url``; override this fixture to test your own layer."""
    if layer_url is None:
        pytest.fail(
            "the conformance suite needs a layer: pass --layer-url URL or override "
            "the layer_factory fixture"
        )
    from layers.core.config import from_url

    def factory(**options: Any) -> ChannelLayer:
        return from_url(layer_url, **options)

    yield factory


@pytest.fixture
def layer(layer_factory: LayerFactory) -> Iterator[ChannelLayer]:
    """A layer with default options. Tests flush it inside their own loop when needed."""
    yield layer_factory()


