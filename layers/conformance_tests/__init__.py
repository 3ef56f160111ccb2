"""The conformance suite: a pytest plugin that proves a backend keeps the contract.

Run it on any layer URL the registry resolves::

    pytest -p layers.conformance_tests --layer-url redis://localhost:6379/0 \
        --pyargs layers.conformance_tests

or ``layers conformance URL`` for a per-rule report, or in a plugin's own test suite:
enable the plugin (``pytest_plugins = ["layers.conformance_tests"]`` in the top-level
``conftest.py``) and override the ``layer_factory`` fixture (see
:mod:`layers.conformance_tests.plugin`). The plugin then adds the suite's modules to
the run by itself.
"""

from layers.conformance_tests.plugin import LayerFactory, async_test, requires

#: Loading this package as a pytest plugin loads the hooks and fixtures of ``plugin``.
pytest_plugins = ["layers.conformance_tests.plugin"]

__all__ = ["LayerFactory", "async_test", "pytest_plugins", "requires"]
