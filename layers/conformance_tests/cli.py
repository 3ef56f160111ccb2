"""``layers conformance URL``: run the conformance suite on a layer URL, report per rule.

Before any rule runs, the command checks what it needs and stops with exit status 2
and one line saying why when: pytest or hypothesis is missing, the URL cannot build a
layer (unknown backend, missing driver, bad option, a SQLite file whose folder does
not exist), or the layer cannot store a message (server unreachable, bad
credentials). ``--help`` works without pytest and hypothesis.

The run is hermetic: pytest gets its own minimal configuration, loads no
``conftest.py`` outside the shipped suite, no ``pytest.ini``/``pyproject.toml``
settings, no ``PYTEST_ADDOPTS`` and no auto-loaded third-party pytest plugins, so
the project directory it runs in cannot change it.

It prints one line per rule as each finishes, under a heading per capability group
(the phase), with the reason of every skip and the first line of every failure, in
plain text; then the failures' short tracebacks and the verdict. Exit status: 0 when
every rule passed or was skipped for a declared capability, 1 when any rule failed,
2 on a usage error, 4 when the plugin refuses the run (an overridden rule).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from layers.cli_common import CommandError, CommandParser, build_layer, check_layer, plain, redact
from layers.core.redact import redact_url

if TYPE_CHECKING:
    import pytest


__all__ = ["UsageProblem", "main", "plain", "print_report", "shown_url"]

PACKAGE = "layers.conformance_tests"
PACKAGE_DIR = Path(__file__).resolve().parent
PROFILES = ("fast", "thorough")
#: How long the pre-flight send may take before the layer counts as unreachable.
PREFLIGHT_TIMEOUT = 30.0

_LABEL = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "xfailed": "XFAIL"}


class UsageProblem(CommandError):
    """The suite cannot start: the message is the one line the command prints."""


def shown_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print)."""
    return redact_url(url)


@dataclass
class _Outcome:
    group: str
    rule: str
    outcome: str = "passed"
    detail: str = ""
    seconds: float = 0.0
    traceback: str = ""


@dataclass(eq=False)
class _Collector:
    """A pytest plugin object: records one outcome per rule and prints it as it finishes."""

    out: TextIO | None = None
    results: dict[str, _Outcome] = field(default_factory=dict)
    _group: str | None = None
    _started: float = 0.0
    _done: int = 0

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        import pytest

        for item in items:
            if isinstance(item, pytest.Function):
                module = item.module
                group = _title(module.__doc__ or module.__name__)
                doc = _title(item.function.__doc__ or item.name)
                self.results[item.nodeid] = _Outcome(plain(group), plain(doc))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.results.pop(item.nodeid, None)

    def pytest_collection_finish(self) -> None:
        self._print(f"{len(self.results)} rules to run")

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._started = time.monotonic()
        result = self.results.get(nodeid)
        if result is not None and result.group != self._group:
            self._group = result.group
            self._print(f"\n{result.group}")

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
            result.traceback = report.longreprtext
        elif report.skipped and result.outcome == "passed":
            result.outcome = "skipped"
            longrepr = report.longrepr
            result.detail = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
            result.detail = result.detail.removeprefix("Skipped: ")

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        result = self.results.get(nodeid)
        if result is None:
            return
        self._done += 1
        result.seconds = time.monotonic() - self._started
        self._print(_rule_line(result, progress=f"{self._done}/{len(self.results)}"))

    def _print(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)


def _rule_line(rule: _Outcome, progress: str = "") -> str:
    line = f"  {_LABEL[rule.outcome]:5} {rule.rule}"
    if rule.seconds >= 1.0 or progress:
        extras = [progress] if progress else []
        if rule.seconds >= 1.0:
            extras.append(f"{rule.seconds:.1f} s")
        line += f"  [{', '.join(extras)}]"
    if rule.detail:
        line += f"\n          -> {plain(rule.detail)[:300]}"
    return line


def _title(doc: str) -> str:
    """A docstring's first paragraph on one line (a rule's or a group's title)."""
    first = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in first.splitlines())


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or str(report.longrepr)
    return (f"{report.when}: " if report.when != "call" else "") + text.strip().splitlines()[0]


def _describe(url: str) -> str:
    try:
        from layers.core.config import from_url

        layer = from_url(url)
    except Exception as exc:  # pre-flight has already reported a layer that cannot be built
        return f" (cannot build a layer: {exc})"
    backend = layer.backend_class
    caps = ", ".join(sorted(str(c) for c in layer.capabilities)) or "none"
    return f" ({backend.__module__}.{backend.__qualname__}; capabilities: {caps})"


def print_report(
    url: str, results: dict[str, _Outcome], out: TextIO, *, streamed: bool = False
) -> None:
    """Print the per-rule summary, grouped by the rule's module (capability group).

    With ``streamed`` (the rule lines were printed as the rules ran), print only the
    failures' tracebacks and the verdict.
    """
    if not streamed:
        print(f"\nConformance of {shown_url(url)}{_describe(url)}", file=out)
        groups: dict[str, list[_Outcome]] = {}
        for result in results.values():
            groups.setdefault(result.group, []).append(result)
        for group, rules in groups.items():
            print(f"\n{group}", file=out)
            for rule in rules:
                print(_rule_line(rule), file=out)
    failed = [result for result in results.values() if result.outcome == "failed"]
    for result in failed:
        print(f"\nFAIL  {result.rule}", file=out)
        lines = result.traceback.strip().splitlines()
        for line in lines[-40:]:
            print(f"    {line}", file=out)
    counts = {label: 0 for label in _LABEL}
    for result in results.values():
        counts[result.outcome] += 1
    summary = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    verdict = "CONFORMS" if not counts["failed"] and counts["passed"] else "DOES NOT CONFORM"
    print(f"\n{verdict}: {summary or 'no rules ran'}", file=out)


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="layers conformance",
        description="Run the conformance suite on a layer URL and print a per-rule report.",
        epilog="Exit status: 0 conforms, 1 a rule failed, 2 usage error (nothing ran), "
        "4 the run was refused. Needs pytest and hypothesis: "
        "pip install 'channel-layers[conformance]'.",
    )
    parser.add_argument("url", help="layer URL, e.g. memory:// or redis://localhost:6379/0")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=os.environ.get("LAYERS_CONFORMANCE_PROFILE", "fast"),
        help="fast (default, about half a minute on memory://) or thorough (nightly: "
        "long runs, many Hypothesis examples with shrinking, 100k-message orderings)",
    )
    parser.add_argument("--junitxml", metavar="FILE", help="also write a JUnit XML report")
    parser.add_argument("-k", metavar="EXPR", dest="keyword", help="only rules matching EXPR")
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output")
    return parser


def check_tools() -> None:
    """Raise :class:`UsageProblem` unless pytest and hypothesis can be imported."""
    missing = []
    for name in ("pytest", "hypothesis"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageProblem(
            f"the conformance suite needs {' and '.join(missing)}: "
            "pip install 'channel-layers[conformance]'"
        )


def preflight(url: str) -> None:
    """Raise :class:`UsageProblem` unless ``url`` builds a layer that can store a message."""
    try:
        layer = build_layer(url, expiry=5)
    except Exception as exc:
        hint = ""
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            path = url.removeprefix("sqlite:///").split("?")[0]
            hint = (
                f" (sqlite:///{path} is relative to the current directory; "
                f"write sqlite:////{path.lstrip('/')} for an absolute path)"
            )
        problem = redact(f"{exc}{hint}", [url])
        raise UsageProblem(f"cannot build a layer from {shown_url(url)}: {problem}") from exc
    try:
        check_layer(layer, url, timeout=PREFLIGHT_TIMEOUT)
    except CommandError as exc:
        raise UsageProblem(str(exc)) from exc.__cause__


@contextlib.contextmanager
def _hermetic_environment() -> Iterator[None]:
    """Keep the environment's pytest settings and auto-loaded plugins out of the run."""
    saved = {name: os.environ.get(name) for name in _PYTEST_ENV}
    for name in _PYTEST_ENV:
        os.environ.pop(name, None)
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_PYTEST_ENV = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")


def main(argv: list[str]) -> int:
    """Run the suite on ``argv``'s URL; print the report; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        check_tools()
        preflight(args.url)
    except UsageProblem as problem:
        print(f"layers conformance: {redact(str(problem), argv)}", file=sys.stderr)
        return 2
    import pytest

    print(
        f"Conformance of {shown_url(args.url)}{_describe(args.url)}, profile {args.profile}",
        flush=True,
    )
    collector = _Collector(out=sys.stdout)
    with tempfile.TemporaryDirectory(prefix="layers-conformance-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\nxfail_strict = true\n")
        pytest_args = [
            "-c", str(ini), "--rootdir", str(PACKAGE_DIR), "--confcutdir", str(PACKAGE_DIR),
            "-p", "no:cacheprovider", "-p", PACKAGE, "--layer-url", args.url,
            "--conformance-profile", args.profile, str(PACKAGE_DIR),
            "-W", "ignore::pytest.PytestAssertRewriteWarning",
        ]  # fmt: skip
        # Without -v, pytest's terminal output is off: the rule lines are the output.
        pytest_args += ["-v", "-rfEs", "--tb=short"] if args.verbose else ["-p", "no:terminal"]
        if args.junitxml:
            pytest_args += ["--junitxml", str(Path(args.junitxml).resolve())]
        if args.keyword:
            pytest_args += ["-k", args.keyword]
        if args.exitfirst:
            pytest_args.append("-x")
        with _hermetic_environment():
            code = pytest.main(pytest_args, plugins=[collector])
    print_report(args.url, collector.results, sys.stdout, streamed=True)
    if code == pytest.ExitCode.OK:
        return 0
    if code in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED):
        return 1
    return int(code)
