"""The shipped conformance suite against PostgreSQL, in a subprocess (as CI runs it).

Running it in its own interpreter also exercises the suite's multi-process tests
and start-up of the schema from a cold process.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .conftest import with_params

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_conformance_suite_passes(pg_server: str, run_conformance: Callable[..., None]) -> None:
    url = with_params(pg_server, schema="layers_test_pg_conformance")
    run_conformance(url, warnings="default", timeout=900)
