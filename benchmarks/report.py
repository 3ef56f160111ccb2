"""Turn the cells of a run into a Markdown table, a JSON file and PNG charts.

Tables show, per family, the median over repetitions of each metric and its ratio
to the family's reference spec. Ratios are "times better than the reference":
throughput divided by the reference's, or the reference's latency divided by this
one's, so ``x2.00`` (printed with a multiplication sign) always means twice as
good. A scenario that lost, duplicated or reordered a message shows the counts
next to its speed; one that failed shows why.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.specs import FAMILIES, Spec

__all__ = ["METRICS", "Metric", "markdown", "write_charts", "write_json"]

TIMES = "\u00d7"
NONE = "\u2013"


@dataclass(frozen=True)
class Metric:
    """One row of a table: which scenario it reads and how."""

    key: str
    label: str
    scenario: str
    value: Callable[[dict[str, Any]], float | None]
    higher_is_better: bool = True
    unit: str = ""


def _rate(cell: dict[str, Any]) -> float | None:
    return cell["delivered"] / cell["seconds"] if cell.get("seconds") else None


def _mbps(cell: dict[str, Any]) -> float | None:
    return cell.get("bytes", 0) / cell["seconds"] / 1e6 if cell.get("seconds") else None


METRICS = [
    Metric("seq", "sequential, 1 channel (msg/s)", "sequential", _rate),
    Metric("conc", "concurrent, N channels (msg/s)", "concurrent", _rate),
    Metric("rr50", "request/reply p50 (µs)", "request_reply", lambda c: c.get("p50_us"), False),
    Metric("rr99", "request/reply p99 (µs)", "request_reply", lambda c: c.get("p99_us"), False),
    Metric("group", "group_send to 100 (deliveries/s)", "group", _rate),
    Metric("k1", "1 KB payload (msg/s)", "payload_1k", _rate),
    Metric("k1mb", "1 KB payload (MB/s)", "payload_1k", _mbps),
    Metric("k64", "64 KB payload (msg/s)", "payload_64k", _rate),
    Metric("k64mb", "64 KB payload (MB/s)", "payload_64k", _mbps),
    Metric("xproc", "cross-process (msg/s)", "cross_process", _rate),
    Metric("xrr50", "cross-process request/reply p50 (µs)", "cross_process_rr",
           lambda c: c.get("p50_us"), False),
    Metric("xrr99", "cross-process request/reply p99 (µs)", "cross_process_rr",
           lambda c: c.get("p99_us"), False),
    Metric("startup", "start-up burst, 20 fresh consumers (msg/s)", "cross_process_startup",
           _rate),
    Metric("restart", "consumer restart mid-backlog (msg/s)", "cross_process_restart", _rate),
]  # fmt: skip


def _cells_for(cells: list[dict[str, Any]], spec: str, scenario: str) -> list[dict[str, Any]]:
    return [c for c in cells if c["spec"] == spec and c["scenario"] == scenario]


def median_value(cells: list[dict[str, Any]], spec: str, metric: Metric) -> float | None:
    """Median of a metric over a spec's successful repetitions (None if none succeeded)."""
    values = [
        metric.value(c) for c in _cells_for(cells, spec, metric.scenario) if c["status"] == "ok"
    ]
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _flags(runs: list[dict[str, Any]]) -> str:
    totals = {k: sum(c.get(k, 0) for c in runs) for k in ("lost", "duplicated", "reordered")}
    parts = [f"{k} {v}" for k, v in totals.items() if v]
    return " **WRONG: " + ", ".join(parts) + "**" if parts else ""


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell_text(cells: list[dict[str, Any]], spec: str, metric: Metric, ref: float | None) -> str:
    runs = _cells_for(cells, spec, metric.scenario)
    if not runs:
        return NONE
    failed = [c for c in runs if c["status"] != "ok"]
    if failed and len(failed) == len(runs):
        first = failed[0]
        if first["status"] in ("n/a", "unavailable"):
            return str(first["status"])
        return _escape(f"{first['status']}: {first.get('error', '')}"[:90])
    value = median_value(cells, spec, metric)
    text = NONE if value is None else _fmt(value)
    if value is not None and ref and value > 0:
        ratio = value / ref if metric.higher_is_better else ref / value
        text += f" ({TIMES}{ratio:.2f})"
    text += _flags(runs)
    if failed:
        first = failed[0]
        note = f"{first['status']}: {first.get('error', '')[:60]}"
        text += _escape(f" ({len(failed)}/{len(runs)} runs {note})")
    return text


def _resource_rows(cells: list[dict[str, Any]], labels: list[str]) -> list[str]:
    cpu_row, rss_row = ["CPU s per 1,000 msg (client side)"], ["peak RSS (MB)"]
    for label in labels:
        ok = [c for c in cells if c["spec"] == label and c["status"] == "ok" and c.get("delivered")]
        delivered = sum(c["delivered"] for c in ok)
        cpu_row.append(
            f"{sum(c['cpu_s'] for c in ok) / delivered * 1000:.3f}" if delivered else NONE
        )
        rss = [c["rss_mb"] for c in cells if c["spec"] == label and "rss_mb" in c]
        rss_row.append(f"{max(rss):.0f}" if rss else NONE)
    return ["| " + " | ".join(cpu_row) + " |", "| " + " | ".join(rss_row) + " |"]


def family_table(
    cells: list[dict[str, Any]], specs: list[Spec], reference: str | None
) -> list[str]:
    """The Markdown lines of one family's table (metrics as rows, specs as columns)."""
    labels = [s.label for s in specs]
    header = [f"{label} (ref)" if label == reference else label for label in labels]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(labels) + 1) + "|"]
    scenarios = {c["scenario"] for c in cells}
    for metric in METRICS:
        if metric.scenario not in scenarios:
            continue
        ref = median_value(cells, reference, metric) if reference in labels else None
        row = [metric.label] + [_cell_text(cells, label, metric, ref) for label in labels]
        lines.append("| " + " | ".join(row) + " |")
    lines.extend(_resource_rows(cells, labels))
    if reference in labels:
        lines += ["", summary(cells, labels, reference)]
    return lines


def summary(cells: list[dict[str, Any]], labels: list[str], reference: str) -> str:
    """Each spec's geometric mean of its ratios to the reference, in a sentence or two.

    MB/s rows are left out (they repeat the msg/s ratio); only metrics both specs
    measured count, and a spec with wrong answers is marked as such. When the
    reference failed a run or answered wrongly somewhere, a second sentence gives
    the means over the metrics where it answered correctly in every run: a ratio to
    a run that lost messages (or timed out) compares nothing.
    """
    sound = {
        m.scenario for m in METRICS if _answered_correctly(_cells_for(cells, reference, m.scenario))
    }
    parts = _means(cells, labels, reference, None)
    if not parts:
        return ""
    text = f"Geometric mean of the ratios to `{reference}`: " + "; ".join(parts) + "."
    if any(_flags(_cells_for(cells, reference, m.scenario)) for m in METRICS):
        text += f" `{reference}` itself gave wrong answers in this run."
    if any(m.scenario not in sound for m in METRICS if median_value(cells, reference, m)):
        clean = _means(cells, labels, reference, sound)
        if clean:
            text += (
                f" Over the metrics where `{reference}` answered correctly in every run: "
                + "; ".join(clean)
                + "."
            )
    return text


def _answered_correctly(runs: list[dict[str, Any]]) -> bool:
    """Every run of a cell ended ``ok`` with nothing lost, duplicated or reordered."""
    return bool(runs) and all(c["status"] == "ok" for c in runs) and not _flags(runs)


def _means(
    cells: list[dict[str, Any]], labels: list[str], reference: str, only: set[str] | None
) -> list[str]:
    """Each non-reference spec's mean and metric count (only scenarios in ``only``)."""
    parts = []
    for label in labels:
        if label == reference:
            continue
        ratios = []
        for metric in METRICS:
            if only is not None and metric.scenario not in only:
                continue
            value = median_value(cells, label, metric)
            ref = median_value(cells, reference, metric)
            if metric.key.endswith("mb") or not value or not ref:
                continue
            ratios.append(value / ref if metric.higher_is_better else ref / value)
        if ratios:
            wrong = any(_flags(_cells_for(cells, label, m.scenario)) for m in METRICS)
            mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            note = f"`{label}` {TIMES}{mean:.2f} over {len(ratios)} metrics"
            parts.append(note + (" (with wrong answers)" if wrong else ""))
    return parts


def markdown(
    cells: list[dict[str, Any]],
    specs: list[Spec],
    statuses: dict[str, dict[str, Any]],
    references: dict[str, str],
    scratch: str = "",
) -> str:
    """The full Markdown report: one table per family, then what each spec is."""
    out: list[str] = []
    for family in FAMILIES:
        members = [s for s in specs if s.family == family]
        if not members:
            continue
        reference = references.get(family)
        out += [f"### {family}", ""]
        if reference and reference not in [s.label for s in members]:
            reference = None
        out += family_table(cells, members, reference)
        out.append("")
        for spec in members:
            status = statuses.get(spec.label, {})
            target = spec.target + (" " + json.dumps(spec.config) if spec.config else "")
            if scratch:  # the run's scratch directory means nothing to a reader
                target = target.replace(scratch, "$TMPDIR")
            line = f"- `{spec.label}`: `{target}`"
            if "unavailable" in status:
                line += f" — **unavailable: {_escape(status['unavailable'])}**"
            out.append(line)
        out.append("")
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    """Write every repetition of every cell, with the run's metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))


def _families(specs: list[Spec], statuses: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for spec in specs:
        if statuses.get(spec.label, {}).get("ready"):
            found.setdefault(spec.family, []).append(spec.label)
    return found


def _bars(ax: Any, cells: list[dict[str, Any]], labels: list[str], metrics: list[Metric]) -> None:
    labels = [lb for lb in labels if any(median_value(cells, lb, m) for m in metrics)]
    width = 0.8 / max(len(labels), 1)
    for k, label in enumerate(labels):
        values = [median_value(cells, label, m) or 0.0 for m in metrics]
        xs = [i + k * width for i in range(len(metrics))]
        bars = ax.bar(xs, values, width, label=label)
        for bar, metric in zip(bars, metrics, strict=True):
            if _flags(_cells_for(cells, label, metric.scenario)):
                bar.set_hatch("xx")  # a wrong answer: lost, duplicated or reordered
                bar.set_edgecolor("red")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))])
    ax.set_xticklabels(
        [m.label.split(" (")[0] for m in metrics], rotation=20, ha="right", fontsize=8
    )
    ax.set_yscale("log")
    ax.legend(fontsize=7)


def write_charts(
    directory: Path,
    cells: list[dict[str, Any]],
    specs: list[Spec],
    statuses: dict[str, dict[str, Any]],
) -> list[Path]:
    """Write throughput.png and latency.png (one panel per family); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    families = _families(specs, statuses)
    if not families:
        return []
    charts = [
        ("throughput.png", [m for m in METRICS if m.higher_is_better and not m.key.endswith("mb")],
         "messages/s (log)"),
        ("latency.png", [m for m in METRICS if not m.higher_is_better],
         "µs (log), lower is better"),
    ]  # fmt: skip
    written = []
    for name, metrics, ylabel in charts:
        fig, axes = plt.subplots(len(families), 1, figsize=(9, 3.2 * len(families)), squeeze=False)
        for ax, (family, labels) in zip(axes[:, 0], families.items(), strict=True):
            _bars(ax, cells, labels, metrics)
            ax.set_title(f"{family} (hatched red: wrong answers)", fontsize=10)
            ax.set_ylabel(ylabel, fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / name, dpi=90)
        plt.close(fig)
        written.append(directory / name)
    return written
