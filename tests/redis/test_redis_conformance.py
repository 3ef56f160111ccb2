"""The conformance suite on several sharded hosts and through Sentinel (real servers).

The single-host run is CI's (``--layer-url redis://127.0.0.1:6379/1``). Each run here
is a subprocess: ``pytest -p layers.conformance_tests --layer-url URL``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_conformance_on_three_sharded_hosts(spawn, run_conformance) -> None:  # type: ignore[no-untyped-def]
    servers = [spawn() for _ in range(3)]
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    run_conformance(f"redis://{hosts}/0")


def test_conformance_through_sentinel(sentinel_setup, run_conformance) -> None:  # type: ignore[no-untyped-def]
    run_conformance(sentinel_setup.url)
