"""Pytest plugin for the catalogue runs: points ``layer_factory`` at ``$LAYERS_BROKEN``.

``LAYERS_BROKEN=correct`` runs the suite on the unmodified memory backend, the
control that shows the harness itself passes.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from broken import make_factory


@pytest.fixture
def layer_factory() -> Any:
    return make_factory(os.environ["LAYERS_BROKEN"])
