"""The plugin's guarantees: no override of conformance tests, readable CLI, non-zero exits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


# -- layers conformance: hermetic, plain text, progress, profiles ------------------------


def _layers_conformance(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "LAYERS_CONFORMANCE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "layers", "conformance", *args],
        cwd=cwd, env={**environ, **env}, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def test_cli_ignores_the_project_it_runs_in(tmp_path: Path) -> None:
    """A project's conftest.py files, pytest settings and PYTEST_ADDOPTS do not apply."""
    boom = "raise RuntimeError('a project conftest.py was loaded')\n"
    (tmp_path / "conftest.py").write_text(boom)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text(boom)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --no-such-option\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\naddopts = "--no-such-option"\n'
    )
    proc = _layers_conformance(
        tmp_path, "memory://", "-k", "send_then", PYTEST_ADDOPTS="--no-such-option"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CONFORMS: 1 passed" in proc.stdout


def test_cli_report_is_plain_text_and_streams_per_rule(tmp_path: Path) -> None:
    proc = _layers_conformance(tmp_path, "memory://", "-k", "capacity or send_then")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "``" not in out
    assert ":class:" not in out
    assert "Capacity: ChannelFull at capacity" in out
    assert "  PASS  send raises ChannelFull when the channel holds capacity messages" in out
    assert "profile fast" in out
    lines = out.splitlines()
    # Every rule that ran or was skipped (a capability it needs) has a progress mark.
    counted = [line for line in lines if line.startswith(("  PASS", "  SKIP")) and "[" in line]
    total = len(counted)
    assert total >= 5
    # Progress is shown on each rule as it finishes: [1/N] ... [N/N], in order.
    assert f"[1/{total}" in counted[0]
    assert f"[{total}/{total}" in counted[-1]


def test_cli_accepts_the_thorough_profile(tmp_path: Path) -> None:
    proc = _layers_conformance(tmp_path, "memory://", "--profile", "thorough", "-k", "send_then")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "profile thorough" in proc.stdout


PROFILED = """
from layers.conformance_tests import hypothesis_settings, scaled, thorough_only
from layers.conformance_tests.plugin import settings


@thorough_only()
def test_long_run():
    pass


def test_sizes():
    chosen = hypothesis_settings()
    print(f"PROFILE={settings.profile} SIZE={scaled(10, 100_000)} "
          f"EXAMPLES={chosen.max_examples} SHRINK={'shrink' in str(chosen.phases)}")
"""


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("fast", "PROFILE=fast SIZE=10 EXAMPLES=10 SHRINK=False"),
        ("thorough", "PROFILE=thorough SIZE=100000 EXAMPLES=200 SHRINK=True"),
    ],
)
def test_rules_opt_into_the_thorough_profile(tmp_path: Path, profile: str, expected: str) -> None:
    """A rule picks sizes and Hypothesis settings by profile, or runs only when thorough."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_profiled.py").write_text(PROFILED)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-rs", "-v",
         "--no-conformance-suite", "--conformance-profile", profile, "test_profiled.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert expected in proc.stdout
    assert f"channel-layers conformance: profile {profile}" in proc.stdout
    if profile == "fast":
        assert "runs only in the thorough profile (--conformance-profile thorough)" in proc.stdout
    else:
        assert "test_long_run PASSED" in proc.stdout


def test_plugin_form_stops_at_once_on_a_layer_url_that_builds_nothing(tmp_path: Path) -> None:
    """``pytest --layer-url`` with an unknown backend: one usage error, no rule runs."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "layers.conformance_tests", "-p",
         "no:cacheprovider", "-q", "--layer-url", "memroy://"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--layer-url memroy://: url: unknown backend 'memroy' (the URL's scheme)" in proc.stderr
    assert "Did you mean 'memory'?" in proc.stderr
    assert "failed" not in proc.stdout
    assert len((proc.stdout + proc.stderr).strip().splitlines()) == 1
