"""The conformance suite: a pytest plugin that proves a backend keeps the contract.

Run it on any layer URL the registry resolves::

    pytest -p layers.conformance_tests --layer-url redis://localhost:6379/0 \
        --pyargs layers.conformance_tests

or ``layers conformance URL`` for a per-rule report, or in a plugin's own test suite:
enable the plugin (``pytest_plugins = ["layers.conformance_tests"]`` in the top-level
``conftest.py``) and override the ``layer_factory`` fixture (see
:mod:`layers.conformance_tests.plugin`). The plugin then adds the suite's modules to
the run by itself.

Importing this package needs neither pytest nor hypothesis (so ``layers conformance
--help`` works without them); the names below load the plugin on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layers.conformance_tests.plugin import (
        LayerFactory,
        async_test,
        hypothesis_settings,
        requires,
        scaled,
        thorough_only,
    )

#: Loading this package as a pytest plugin loads the hooks and fixtures of ``plugin``.
pytest_plugins = ["layers.conformance_tests.plugin"]

__all__ = [
    "LayerFactory",
    "async_test",
    "hypothesis_settings",
    "pytest_plugins",
    "requires",
    "scaled",
    "thorough_only",
]

_LAZY = frozenset(__all__) - {"pytest_plugins"}


def __getattr__(name: str) -> Any:
    """Import the plugin's public names on first use (the plugin needs pytest)."""
    if name in _LAZY:
        from layers.conformance_tests import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
