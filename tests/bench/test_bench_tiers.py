"""Smoke test of the tier benchmark: it runs and reports (no timing is asserted)."""

from __future__ import annotations

import pytest

from benchmarks import tiers


@pytest.mark.slow
def test_tier_benchmark_runs_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--url", "memory://", "--requests", "40", "--rounds", "1", "--concurrency", "2"]
    assert tiers.main(args) == 0
    out = capsys.readouterr().out
    assert "| memory | direct |" in out
    assert "| memory | tiers |" in out
    assert "memory: throughput" in out
