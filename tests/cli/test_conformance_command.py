"""``layers conformance`` run for real: it fails fast, in one line, before any rule runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _conformance(
    *args: str, cwd: Path | None = None, hide: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m layers conformance ARGS``, with the modules in ``hide`` not importable."""
    blocked = "".join(f"sys.modules[{name!r}] = None; " for name in hide)
    script = (
        f"import runpy, sys; {blocked}"
        f"sys.argv = ['layers', 'conformance', *{list(args)!r}]; "
        "runpy.run_module('layers', run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k != "LAYERS_CONFORMANCE_URL"}
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2, one line on stderr naming the cause, no rule run, no traceback."""
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("layers conformance: "), lines[0]
    assert proc.stdout == "", proc.stdout[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unknown_backend(tmp_path: Path) -> None:
    line = _assert_refused(_conformance("memroy://", cwd=tmp_path), "unknown backend 'memroy'")
    assert "Did you mean 'memory'?" in line


def test_missing_driver(tmp_path: Path) -> None:
    proc = _conformance("redis://127.0.0.1:6379/0", cwd=tmp_path, hide=("redis",))
    _assert_refused(proc, "needs the 'redis' package", "pip install 'channel-layers[redis]'")


def test_sqlite_folder_missing(tmp_path: Path) -> None:
    proc = _conformance("sqlite:///tmp-nowhere/x.db", cwd=tmp_path)
    line = _assert_refused(proc, "does not exist", str(tmp_path / "tmp-nowhere"))
    assert "sqlite:////tmp-nowhere/x.db for an absolute path" in line


@pytest.mark.parametrize(
    "url", ["redis://user:s3cret@127.0.0.1:1/0", "postgresql://postgres:s3cret@127.0.0.1:1/db"]
)
def test_server_unreachable(url: str, tmp_path: Path) -> None:
    line = _assert_refused(_conformance(url, cwd=tmp_path), "cannot use the layer at ")
    assert "s3cret" not in line
    assert ":***@127.0.0.1:1" in line


@pytest.mark.parametrize("tool", ["pytest", "hypothesis"])
def test_test_tools_missing(tool: str, tmp_path: Path) -> None:
    proc = _conformance("memory://", cwd=tmp_path, hide=(tool,))
    _assert_refused(proc, f"needs {tool}", "pip install 'channel-layers[conformance]'")


def test_help_works_without_pytest_and_hypothesis(tmp_path: Path) -> None:
    proc = _conformance("--help", cwd=tmp_path, hide=("pytest", "hypothesis", "_pytest"))
    assert proc.returncode == 0, proc.stderr
    assert "usage: layers conformance" in proc.stdout
    assert "--profile {fast,thorough}" in proc.stdout
