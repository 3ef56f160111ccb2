"""The geometric-mean sentence under a family's table."""

from __future__ import annotations

from typing import Any

from benchmarks.report import TIMES, summary


def _cell(spec: str, scenario: str, rate: float, **extra: Any) -> dict[str, Any]:
    cell = {
        "spec": spec,
        "scenario": scenario,
        "status": "ok",
        "delivered": 1000,
        "seconds": 1000 / rate,
    }
    cell.update(extra)
    return cell


def test_a_reference_with_wrong_answers_gets_a_second_mean_without_them() -> None:
    cells = [
        _cell("ours", "sequential", 200.0),
        _cell("peer", "sequential", 100.0),
        _cell("ours", "concurrent", 800.0),
        _cell("peer", "concurrent", 100.0),
        # The peer lost messages here: its ratio compares nothing.
        _cell("ours", "cross_process_restart", 50.0),
        _cell("peer", "cross_process_restart", 100.0, lost=5),
    ]
    text = summary(cells, ["ours", "peer"], "peer")
    # Over all three: (2 * 8 * 0.5) ** (1/3) = 2.
    assert f"`ours` {TIMES}2.00 over 3 metrics" in text
    assert "`peer` itself gave wrong answers" in text
    # Over the two the peer answered correctly: (2 * 8) ** (1/2) = 4.
    assert text.endswith(
        "Over the metrics where `peer` answered correctly in every run: "
        f"`ours` {TIMES}4.00 over 2 metrics."
    )


def test_a_reference_that_failed_a_run_is_left_out_of_the_second_mean() -> None:
    cells = [
        _cell("ours", "sequential", 300.0),
        _cell("peer", "sequential", 100.0),
        _cell("ours", "cross_process_startup", 100.0),
        _cell("peer", "cross_process_startup", 200.0),
        {"spec": "peer", "scenario": "cross_process_startup", "status": "timeout"},
    ]
    text = summary(cells, ["ours", "peer"], "peer")
    assert f"`ours` {TIMES}1.22 over 2 metrics." in text  # sqrt(3 * 0.5)
    assert "itself gave wrong answers" not in text
    assert text.endswith(f"correctly in every run: `ours` {TIMES}3.00 over 1 metrics.")


def test_a_sound_reference_gets_one_mean() -> None:
    cells = [_cell("ours", "sequential", 150.0), _cell("peer", "sequential", 100.0)]
    assert summary(cells, ["ours", "peer"], "peer") == (
        f"Geometric mean of the ratios to `peer`: `ours` {TIMES}1.50 over 1 metrics."
    )
