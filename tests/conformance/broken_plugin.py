"""Pytest plugin for the catalogue runs: points ``layer_factory`` at ``$LAYERS_BROKEN``.

``LAYERS_BROKEN=correct`` runs the suite on the unmodified memory backend, the
control that shows the harness itself passes. Entries built on the SQLite backend
store in a fresh temporary folder and give worker processes a URL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
from broken import layer_url as entry_url
from broken import make_factory

_FOLDER = tempfile.mkdtemp(prefix="layers-broken-")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the entry's temporary folder (its SQLite files) when the run ends."""
    shutil.rmtree(_FOLDER, ignore_errors=True)


@pytest.fixture
def layer_factory() -> Any:
    return make_factory(os.environ["LAYERS_BROKEN"], _FOLDER)


@pytest.fixture
def layer_url() -> str | None:
    return entry_url(os.environ["LAYERS_BROKEN"], _FOLDER)
