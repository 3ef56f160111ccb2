"""The shipped conformance suite against PostgreSQL, in a subprocess (as CI runs it).

Running it in its own interpreter also exercises the suite's multi-process tests
and start-up of the schema from a cold process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import with_params

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_conformance_suite_passes(pg_server: str) -> None:
    url = with_params(pg_server, schema="layers_test_pg_conformance")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "layers.conformance_tests",
        "--layer-url",
        url,
        "--pyargs",
        "layers.conformance_tests",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
