"""The plugin's guarantees: no override of conformance tests, readable CLI, non-zero exits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent

CONFTEST = """
import pytest
from layers import from_url

pytest_plugins = ["layers.conformance_tests"]


@pytest.fixture
def layer_factory():
    return lambda **options: from_url("memory://", **options)
"""


def _pytest(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "send_then", *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_enabling_the_plugin_runs_the_suite(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    proc = _pytest(tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed" in proc.stdout


def _assert_refused(tmp_path: Path, reason: str) -> None:
    """The run stops with a usage error (exit 4) that says ``reason``."""
    proc = _pytest(tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert reason in proc.stdout + proc.stderr


def test_conftest_redefining_a_conformance_test_is_refused(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        CONFTEST + "\n\ndef test_send_then_receive(layer_factory):\n    pass\n"
    )
    _assert_refused(tmp_path, "cannot be overridden")


def test_test_module_redefining_a_conformance_test_is_refused(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_mine.py").write_text(
        textwrap.dedent("""
        from layers.conformance_tests.test_channels import *  # noqa

        def test_send_then_receive(layer_factory):
            pass
        """)
    )
    _assert_refused(tmp_path, "redefines the conformance test test_send_then_receive")


def test_overriding_an_internal_fixture_is_refused(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        CONFTEST + "\n\n@pytest.fixture(autouse=True)\ndef _conformance_gate():\n    pass\n"
    )
    _assert_refused(tmp_path, "fixture '_conformance_gate' is overridden")


def test_known_bug_runs_as_strict_xfail(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        CONFTEST
        + "\n\n@pytest.fixture\ndef conformance_known_bugs():\n"
        + "    return {'test_send_then_receive': 'tracked upstream'}\n"
    )
    proc = _pytest(tmp_path, "-rX")
    # The test passes on memory://, so the strict xfail fails the run: a fixed bug shows.
    assert proc.returncode == 1, proc.stdout
    assert "XPASS(strict)" in proc.stdout
    assert "known bug: tracked upstream" in proc.stdout


def test_cli_exits_non_zero_on_a_broken_backend() -> None:
    script = (
        "import sys; from layers import register_backend; from broken import Lifo; "
        "register_backend('broken-lifo', Lifo); "
        "from layers.conformance_tests.cli import main; "
        "sys.exit(main(['broken-lifo://', '-k', 'fifo']))"
    )
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "  FAIL  One writer and one reader see perfect order." in proc.stdout
    assert "DOES NOT CONFORM" in proc.stdout
