"""Smoke tests of the benchmark harness: it runs, and its correctness counters work.

No timing is asserted: only that the harness completes on the memory backend with a
few hundred messages, and that deliberately broken layers show up as wrong.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import layers
from benchmarks import cli
from benchmarks.broken import DuplicatingLayer, LosingLayer, ReorderingLayer
from benchmarks.scenarios import Params, Tally, run_scenario
from benchmarks.scenarios.cell import with_changes
from benchmarks.specs import parse_spec

SMALL = Params(
    messages=200, concurrency=4, group_size=10, idle_timeout=0.5, cell_timeout=20, backlog=20
)


def run(name: str, layer: Any, params: Params = SMALL) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        try:
            return await run_scenario(name, layer, params)
        finally:
            await layer.aclose()

    return asyncio.run(main())


def test_tally_counts_each_kind_of_error() -> None:
    tally = Tally(expected=5)
    for seq in (0, 2, 1, 2, 4):
        tally.record("s", seq)
    assert tally.counters() == {"delivered": 4, "lost": 1, "duplicated": 1, "reordered": 1}


@pytest.mark.parametrize(
    "scenario", ["sequential", "concurrent", "request_reply", "group", "payload_1k"]
)
def test_memory_layer_is_correct_in_every_scenario(scenario: str) -> None:
    result = run(scenario, layers.from_url("memory://?capacity=10000"))
    assert result["status"] == "ok", result
    assert (result["lost"], result["duplicated"], result["reordered"]) == (0, 0, 0)
    assert result["delivered"] == result["messages"] > 0
    assert result["seconds"] > 0


def lasting(seconds: float) -> Params:
    """``SMALL``, with fast cells going on until ``seconds``."""
    return with_changes(SMALL, min_seconds=seconds)


@pytest.mark.parametrize("scenario", ["payload_64k", "request_reply"])
def test_a_fast_cell_goes_on_until_its_minimum_time(scenario: str) -> None:
    """A tenth of the messages (64 KB: per round; request/reply: round trips), or more
    when they took less than ``min_seconds``; the counts add up, and stay right."""
    one = run(scenario, layers.from_url("memory://?capacity=10000"))
    assert one["status"] == "ok", one
    assert one["messages"] == one["delivered"] == 20  # a tenth of 200
    longer = run(scenario, layers.from_url("memory://?capacity=10000"), lasting(0.2))
    assert longer["status"] == "ok", longer
    assert longer["messages"] == longer["delivered"] > 20
    assert longer["seconds"] >= 0.2
    assert (longer["lost"], longer["duplicated"], longer["reordered"]) == (0, 0, 0)
    if scenario == "payload_64k":  # whole rounds, every byte counted
        assert longer["messages"] % 20 == 0
        assert longer["bytes"] == longer["delivered"] * 64 * 1024


def test_a_wrong_64k_round_ends_the_rounds() -> None:
    """A round that lost messages is reported as it is, not buried under more rounds."""
    result = run("payload_64k", LosingLayer(), lasting(5.0))
    assert result["lost"] > 0
    assert result["messages"] == 20


class _SlowSecondRound(LosingLayer):
    """Fine for 20 benchmark messages; then slow (the budget cuts the round) and lossy."""

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self._is_bench(message):
            self._count += 1
            if self._count > 20:
                await asyncio.sleep(0.05)
                if self._count == 22:
                    return
        await self._inner.send(channel, message)


def test_a_64k_round_cut_short_by_the_budget_still_counts() -> None:
    """Its time and its errors are part of the cell, not dropped with the round."""
    params = with_changes(lasting(5.0), budget=0.3)
    result = run("payload_64k", _SlowSecondRound(), params)
    assert result["lost"] == 1
    assert 20 < result["messages"] < 40  # the first round, and part of the second
    assert result["delivered"] == result["messages"] - 1


def test_duplicates_are_counted() -> None:
    result = run("sequential", DuplicatingLayer())
    assert result["duplicated"] == 200 // 7
    assert result["lost"] == 0


def test_reordering_is_counted() -> None:
    result = run("sequential", ReorderingLayer())
    assert result["reordered"] == 200 // 10 - 1  # the 200th message is held, never sent
    assert result["lost"] == 1


def test_losses_are_counted() -> None:
    result = run("concurrent", LosingLayer())
    assert result["lost"] == 200 // 10
    assert result["duplicated"] == 0


def test_an_unavailable_spec_is_reported_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(
        [
            "--quick", "--messages", "100", "--concurrency", "4", "--no-charts",
            "--out", str(tmp_path),
            "--scenario", "sequential", "--scenario", "cross_process",
            "--spec", "ours=memory://?capacity=10000",
            "--spec", "dup=benchmarks.broken.DuplicatingLayer:{}",
            "--spec", "missing=nowhere.NoLayer:{}",
        ]
    )  # fmt: skip
    assert status == 0
    table = capsys.readouterr().out
    assert "unavailable: ModuleNotFoundError" in table
    assert "**WRONG: duplicated 14**" in table
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert "n/a" in rows["| cross-process (msg/s)"]
    (result_file,) = tmp_path.glob("bench-*.json")
    cells = json.loads(result_file.read_text())["cells"]
    ours = [c for c in cells if c["spec"] == "ours" and c["scenario"] == "sequential"]
    assert ours[0]["status"] == "ok"
    assert ours[0]["lost"] == 0


def test_a_worker_that_dies_is_reported_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(
        [
            "--quick", "--messages", "100", "--concurrency", "4", "--no-charts",
            "--out", str(tmp_path),
            "--scenario", "sequential", "--scenario", "payload_1k",
            "--spec", "ours=memory://?capacity=10000",
            "--spec", "crash=benchmarks.broken.CrashingLayer:{}",
        ]
    )  # fmt: skip
    assert status == 0
    captured = capsys.readouterr()
    assert "crash                    sequential     rep 0  error: worker died (signal SIGKILL)" in (
        captured.err
    )
    (result_file,) = tmp_path.glob("bench-*.json")
    cells = json.loads(result_file.read_text())["cells"]
    assert [c["status"] for c in cells if c["spec"] == "ours"] == ["ok", "ok"]
    crashed = [(c["status"], c["error"]) for c in cells if c["spec"] == "crash"]
    assert crashed == [
        ("error", "worker died (signal SIGKILL)"),
        ("unavailable", "the worker process died during a scenario"),
    ]


def test_spec_parsing() -> None:
    spec = parse_spec('peer=channels_redis.core.RedisChannelLayer:{"hosts": ["redis://h:1/8"]}')
    assert (spec.label, spec.kind, spec.family) == ("peer", "class", "redis")
    assert spec.config == {"hosts": ["redis://h:1/8"]}
    url = parse_spec("redis://127.0.0.1:6379/8?prefix=x")
    assert (url.kind, url.family, url.cross_process) == ("url", "redis", None)
    assert parse_spec("baseline:redis-pipelined").family == "redis"
    with pytest.raises(ValueError, match="unknown baseline"):
        parse_spec("baseline:nope")


def test_start_up_and_restart_scenarios_run_fresh_consumer_processes(tmp_path: Path) -> None:
    status = cli.main(
        [
            "--quick", "--backlog", "40", "--no-charts", "--out", str(tmp_path),
            "--scenario", "cross_process_startup", "--scenario", "cross_process_restart",
            "--spec", f"ours=sqlite:///{tmp_path}/bench.db",
        ]
    )  # fmt: skip
    assert status == 0
    (result_file,) = tmp_path.glob("bench-*.json")
    cells = json.loads(result_file.read_text())["cells"]
    assert {c["scenario"] for c in cells} == {"cross_process_startup", "cross_process_restart"}
    for cell in cells:
        assert cell["status"] == "ok", cell
        # Start-up: 20 channels of 5 messages (the least); restart: 40 in two halves.
        assert (
            cell["delivered"]
            == cell["messages"]
            == {"cross_process_startup": 100}.get(cell["scenario"], 40)
        )
        assert cell["lost"] == cell["duplicated"] == cell["reordered"] == 0


def test_the_recorded_command_leaves_out_where_results_went() -> None:
    from benchmarks.cli import _shown

    assert _shown(["--full", "--docs", "--out", "/somewhere"]) == ["--full", "--docs"]
    assert _shown(["--out=/somewhere", "--quick"]) == ["--quick"]
