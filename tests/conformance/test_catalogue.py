"""The suite's strength: it must fail every deliberately broken layer of the catalogue.

Each entry of ``broken.CATALOGUE`` runs the whole conformance suite (``-x``: it stops
at the first failing rule) in its own pytest process, a few at a time. The control
run on the unmodified memory backend must pass, so a catch is the suite's doing and
not the harness's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from broken import CATALOGUE

HERE = Path(__file__).resolve().parent
PARALLEL = int(os.environ.get("LAYERS_CATALOGUE_JOBS", "3"))


@dataclass(frozen=True)
class Run:
    name: str
    returncode: int
    caught_by: str
    output: str


def _run(name: str) -> Run:
    env = {
        **os.environ,
        "LAYERS_BROKEN": name,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "pytest", "-p", "layers.conformance_tests", "-p", "broken_plugin",
        "--pyargs", "layers.conformance_tests", "-x", "-q", "-p", "no:cacheprovider",
    ]  # fmt: skip
    proc = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=HERE, check=False
    )
    found = re.search(r"^FAILED \S+::(\w+)", proc.stdout, re.MULTILINE)
    return Run(name, proc.returncode, found.group(1) if found else "", proc.stdout[-3000:])


@pytest.fixture(scope="session")
def catalogue_runs() -> dict[str, Run]:
    names = ["correct", *CATALOGUE]
    with ThreadPoolExecutor(PARALLEL) as pool:
        return {run.name: run for run in pool.map(_run, names)}


def test_control_passes(catalogue_runs: dict[str, Run]) -> None:
    control = catalogue_runs["correct"]
    assert control.returncode == 0, control.output


def test_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 15


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_suite_fails_broken_layer(name: str, catalogue_runs: dict[str, Run]) -> None:
    run = catalogue_runs[name]
    # 1 means "tests failed"; anything else (usage or collection error) is no catch.
    assert run.returncode == 1, f"{name}: suite exit {run.returncode}\n{run.output}"
    assert run.caught_by, run.output


def test_catch_rate_is_complete(catalogue_runs: dict[str, Run]) -> None:
    caught = [n for n in CATALOGUE if catalogue_runs[n].returncode == 1]
    lines = [
        f"  {n:26} {'caught by ' + catalogue_runs[n].caught_by if n in caught else 'MISSED'}"
        for n in CATALOGUE
    ]
    report = f"catch rate {len(caught)}/{len(CATALOGUE)}\n" + "\n".join(lines)
    print(report)
    assert len(caught) == len(CATALOGUE), report
