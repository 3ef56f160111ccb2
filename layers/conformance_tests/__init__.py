"""The conformance suite: a pytest plugin that proves a backend keeps the contract.

Run it on any layer URL the registry resolves::

    pytest -p layers.conformance_tests --layer-url redis://localhost:6379/0 --pyargs layers.conformance_tests

or in a plugin's own test suite: enable the plugin (``pytest_plugins =
["layers.conformance_tests"]`` in a ``conftest.py``) and override the
``layer_factory`` fixture (see :mod:`layers.conformance_tests.plugin`).
"""

from layers.conformance_tests.plugin import *  # noqa: F403 - pytest plugin hooks and fixtures
from layers.conformance_tests.plugin import __all__ as _plugin_all

__all__ = list(_plugin_all)
