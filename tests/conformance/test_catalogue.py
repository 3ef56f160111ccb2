"""The suite's strength, checked both ways against the catalogue of broken layers.

Forward: every entry of ``broken.CATALOGUE`` names the rules it must fail, and a run
of the suite on that entry, restricted to those rules, fails each of them.
Backward: every rule of the shipped suite is named by at least one entry, so no rule
stands untested by a fault it exists to catch. The control run of the whole suite on
the unmodified memory backend must pass, so a catch is the suite's doing and not the
harness's. Entries run in their own pytest processes, a few at a time. A defect that
is a race between threads (an entry marked ``racy``) shows in most runs of a rule, not
in all: a rule that misses it runs again, up to :data:`RACY_RUNS` runs in all, and the
report says how many runs it took.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from broken import CATALOGUE

import layers.conformance_tests

HERE = Path(__file__).resolve().parent
PARALLEL = int(os.environ.get("LAYERS_CATALOGUE_JOBS", "3"))
KINDS = ("delivery", "expiry", "groups", "names", "scale", "isolation", "sequences", "api")


def shipped_rules() -> set[str]:
    """Every rule (test function) of the shipped suite, read from its modules' source.

    Read, not imported: importing the modules here would need the suite's plugin.
    """
    folder = Path(layers.conformance_tests.__file__).parent
    rules: set[str] = set()
    for module in folder.glob("test_*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        rules |= {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")
        }
    return rules


#: Runs a rule gets, at most, against an entry whose defect is a race (``racy``). The
#: weakest such pair seen (``loops-pop-at-once`` and the rule of sync threads receiving
#: reply channels) caught the race in 28 runs of 36 on an idle two-core machine (each
#: of the entry's other two rules in 11 of 12), so 12 runs all miss less than once in
#: ten million.
RACY_RUNS = 12


@dataclass(frozen=True)
class Run:
    name: str
    returncode: int
    failed: frozenset[str]
    output: str
    runs: int = 1


def _run_entry(name: str) -> Run:
    """Run the entry's rules; an entry whose defect is a race reruns the rules it missed."""
    run = _run(name)
    entry = CATALOGUE.get(name)
    while entry is not None and entry.racy and run.runs < RACY_RUNS:
        missed = tuple(sorted(set(entry.rules) - run.failed))
        if not missed:
            break
        again = _run(name, missed)
        run = Run(
            name,
            again.returncode if again.returncode != 0 else run.returncode,
            run.failed | again.failed,
            again.output,
            run.runs + 1,
        )
    return run


def _run(name: str, rules: tuple[str, ...] = ()) -> Run:
    env = {
        **os.environ,
        "LAYERS_BROKEN": name,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    env.pop("LAYERS_CONFORMANCE_URL", None)
    command = [
        sys.executable, "-m", "pytest", "-p", "layers.conformance_tests", "-p", "broken_plugin",
        "--pyargs", "layers.conformance_tests", "-q", "-rf", "-p", "no:cacheprovider",
    ]  # fmt: skip
    if name != "correct":
        # Only the entry's rules (-k matches substrings, so a few more may run).
        command += ["-k", " or ".join(rules or CATALOGUE[name].rules)]
    proc = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, cwd=HERE, check=False
    )
    failed = frozenset(re.findall(r"^FAILED \S+::(\w+)", proc.stdout, re.MULTILINE))
    return Run(name, proc.returncode, failed, proc.stdout[-4000:] + proc.stderr[-2000:])


@pytest.fixture(scope="session")
def catalogue_runs() -> dict[str, Run]:
    names = ["correct", *CATALOGUE]
    with ThreadPoolExecutor(PARALLEL) as pool:
        return {run.name: run for run in pool.map(_run_entry, names)}


def test_control_passes(catalogue_runs: dict[str, Run]) -> None:
    control = catalogue_runs["correct"]
    assert control.returncode == 0, control.output


def test_catalogue_is_large_and_grouped_by_kind() -> None:
    assert len(CATALOGUE) >= 40
    kinds = Counter(entry.kind for entry in CATALOGUE.values())
    assert set(kinds) == set(KINDS), kinds
    assert min(kinds.values()) >= 3, kinds


def test_every_entry_names_known_rules() -> None:
    rules = shipped_rules()
    for name, entry in CATALOGUE.items():
        assert entry.rules, f"{name} names no rule it must fail"
        unknown = set(entry.rules) - rules
        assert not unknown, f"{name} names unknown rules {sorted(unknown)}"


def test_every_rule_is_failed_by_some_entry() -> None:
    """Backward: each rule of the suite is named (and so checked to fail) by an entry."""
    named = {rule for entry in CATALOGUE.values() for rule in entry.rules}
    orphans = sorted(shipped_rules() - named)
    assert not orphans, f"rules no broken layer fails: {orphans}"


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_suite_fails_broken_layer(name: str, catalogue_runs: dict[str, Run]) -> None:
    """Forward: the entry fails every rule it names (exit 1: tests failed, not a usage error)."""
    run = catalogue_runs[name]
    assert run.returncode == 1, f"{name}: suite exit {run.returncode}\n{run.output}"
    missed = sorted(set(CATALOGUE[name].rules) - run.failed)
    assert not missed, f"{name} passed rules it should fail: {missed}\n{run.output}"


def test_catch_rate_is_complete(catalogue_runs: dict[str, Run]) -> None:
    caught = [n for n in CATALOGUE if set(CATALOGUE[n].rules) <= catalogue_runs[n].failed]
    lines = [
        f"  {CATALOGUE[n].kind:10} {n:32} "
        + ("caught by " + ", ".join(sorted(catalogue_runs[n].failed)) if n in caught else "MISSED")
        + (f" ({catalogue_runs[n].runs} runs)" if catalogue_runs[n].runs > 1 else "")
        for n in CATALOGUE
    ]
    report = f"catch rate {len(caught)}/{len(CATALOGUE)}\n" + "\n".join(lines)
    print(report)
    assert len(caught) == len(CATALOGUE), report
