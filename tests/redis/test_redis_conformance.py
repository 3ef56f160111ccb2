"""The conformance suite on several sharded hosts and through Sentinel (real servers).

The single-host run is CI's (``--layer-url redis://127.0.0.1:6379/1``). Each run here
is a subprocess: ``pytest -p layers.conformance_tests --layer-url URL``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run_suite(url: str) -> None:
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
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_conformance_on_three_sharded_hosts(spawn) -> None:  # type: ignore[no-untyped-def]
    servers = [spawn() for _ in range(3)]
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    run_suite(f"redis://{hosts}/0")


def test_conformance_through_sentinel(sentinel_setup) -> None:  # type: ignore[no-untyped-def]
    run_suite(sentinel_setup.url)
