"""``layers conformance URL``: run the conformance suite on a layer URL, report per rule.

Runs pytest on the shipped suite in this process, with its own minimal pytest
configuration (so a project's ``pytest.ini`` or ``conftest.py`` cannot change it),
then prints one line per rule, grouped by capability, with the reason of every skip
and the first line of every failure. Exit status: 0 when every rule passed or was
skipped for a declared capability, 1 when any rule failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pytest

from layers.conformance_tests.plugin import PACKAGE

__all__ = ["main"]

_LABEL = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL"}


@dataclass
class _Outcome:
    group: str
    rule: str
    outcome: str = "passed"
    detail: str = ""


@dataclass(eq=False)
class _Collector:
    """A pytest plugin object that records one outcome per conformance test."""

    results: dict[str, _Outcome] = field(default_factory=dict)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if isinstance(item, pytest.Function):
                module = item.module
                group = (module.__doc__ or module.__name__).strip().splitlines()[0]
                doc = (item.function.__doc__ or item.name).strip().splitlines()[0]
                self.results[item.nodeid] = _Outcome(group, doc)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.results.pop(item.nodeid, None)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self.results.get(report.nodeid)
        if result is None or result.outcome in ("failed", "xfailed"):
            return
        if hasattr(report, "wasxfail"):
            if report.skipped:
                result.outcome, result.detail = "xfailed", str(report.wasxfail)
            return
        if report.failed:
            result.outcome, result.detail = "failed", _first_line(report)
        elif report.skipped and result.outcome == "passed":
            result.outcome = "skipped"
            longrepr = report.longrepr
            result.detail = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
            result.detail = result.detail.removeprefix("Skipped: ")


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or str(report.longrepr)
    return (f"{report.when}: " if report.when != "call" else "") + text.strip().splitlines()[0]


def _describe(url: str) -> str:
    try:
        from layers.core.config import from_url

        layer = from_url(url)
    except Exception as exc:  # the run itself reports the problem
        return f" (cannot build a layer: {exc})"
    backend = layer.backend_class
    caps = ", ".join(sorted(str(c) for c in layer.capabilities)) or "none"
    return f" ({backend.__module__}.{backend.__qualname__}; capabilities: {caps})"


def print_report(url: str, results: dict[str, _Outcome], out: TextIO) -> None:
    """Print the per-rule summary, grouped by the rule's module (capability group)."""
    print(f"\nConformance of {url}{_describe(url)}", file=out)
    groups: dict[str, list[_Outcome]] = {}
    for result in results.values():
        groups.setdefault(result.group, []).append(result)
    for group, rules in groups.items():
        print(f"\n{group}", file=out)
        for rule in rules:
            line = f"  {_LABEL[rule.outcome]:5} {rule.rule}"
            if rule.detail:
                line += f"\n          -> {rule.detail[:300]}"
            print(line, file=out)
    counts = {label: 0 for label in _LABEL}
    for result in results.values():
        counts[result.outcome] += 1
    summary = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    verdict = "CONFORMS" if not counts["failed"] and counts["passed"] else "DOES NOT CONFORM"
    print(f"\n{verdict}: {summary or 'no rules ran'}", file=out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layers conformance",
        description="Run the conformance suite on a layer URL and print a per-rule report.",
    )
    parser.add_argument("url", help="layer URL, e.g. memory:// or redis://localhost:6379/0")
    parser.add_argument("--junitxml", metavar="FILE", help="also write a JUnit XML report")
    parser.add_argument("-k", metavar="EXPR", dest="keyword", help="only rules matching EXPR")
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output")
    return parser


def main(argv: list[str]) -> int:
    """Run the suite on ``argv``'s URL; print the report; return the exit status."""
    args = _parser().parse_args(argv)
    collector = _Collector()
    with tempfile.TemporaryDirectory(prefix="layers-conformance-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\nxfail_strict = true\n")
        pytest_args = [
            "-c", str(ini), "--rootdir", tmp, "-p", "no:cacheprovider",
            "-p", PACKAGE, "--layer-url", args.url, "--pyargs", PACKAGE,
            "-W", "ignore::pytest.PytestAssertRewriteWarning",
            "-rfEs", "--tb=short", "-v" if args.verbose else "-q",
        ]  # fmt: skip
        if args.junitxml:
            pytest_args += ["--junitxml", str(Path(args.junitxml).resolve())]
        if args.keyword:
            pytest_args += ["-k", args.keyword]
        if args.exitfirst:
            pytest_args.append("-x")
        code = pytest.main(pytest_args, plugins=[collector])
    print_report(args.url, collector.results, sys.stdout)
    if code == pytest.ExitCode.OK:
        return 0
    if code in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED):
        return 1
    return int(code)
