"""A third-party backend package (``thirdparty/``) runs the suite all three documented ways."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent / "thirdparty"
DISTRIBUTION = "layers-example-backend"


@pytest.fixture(scope="session")
def installed() -> None:
    """Install the example package editable unless CI already did."""
    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-e", str(PACKAGE_DIR)], check=True
        )
        importlib.invalidate_caches()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAYERS_CONFORMANCE_URL"}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="session")
def three_ways(installed: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    py = sys.executable
    runs = {
        "own test suite": ([py, "-m", "pytest", "-q", "-p", "no:cacheprovider"], PACKAGE_DIR),
        "pytest --pyargs": (
            [py, "-m", "pytest", "-p", "layers.conformance_tests", "--layer-url", "example://",
             "--pyargs", "layers.conformance_tests", "-q", "-p", "no:cacheprovider"],
            elsewhere,
        ),
        "layers conformance": (
            [py, "-m", "layers", "conformance", "example://", "--junitxml",
             str(elsewhere / "report.xml")],
            elsewhere,
        ),
    }  # fmt: skip
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(_run, *spec) for name, spec in runs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("way", ["own test suite", "pytest --pyargs", "layers conformance"])
def test_example_backend_conforms(way: str, three_ways: dict[str, object]) -> None:
    proc = three_ways[way]
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout


def test_own_suite_collects_the_conformance_tests(three_ways: dict[str, object]) -> None:
    proc = three_ways["own test suite"]
    assert isinstance(proc, subprocess.CompletedProcess)
    # The package's own test plus the whole suite, with the capability skips shown.
    assert "backend lacks capability cross_process" in proc.stdout
    assert " passed" in proc.stdout


def test_cli_report_is_per_rule(three_ways: dict[str, object], tmp_path: Path) -> None:
    proc = three_ways["layers conformance"]
    assert isinstance(proc, subprocess.CompletedProcess)
    out = proc.stdout
    assert "Conformance of example://" in out
    assert "capabilities: flush, groups" in out
    assert "  PASS  One writer and one reader see perfect order." in out
    assert "  SKIP  " in out
    assert "-> backend lacks capability cross_process" in out
    assert "CONFORMS:" in out


# -- the documented example, packaged exactly as docs/writing-a-backend.md says ----------

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "writing-a-backend.md"
EXAMPLE = REPO / "examples" / "custom_backend.py"
EXAMPLE_DISTRIBUTION = "my-package"


def _documented_file(name: str) -> str:
    """The fenced block of the guide whose first line is ``# <name>``."""
    text = GUIDE.read_text()
    for block in text.split("```")[1::2]:
        body = block.partition("\n")[2]
        if body.startswith(f"# {name}\n"):
            return body
    raise AssertionError(f"{GUIDE.name} shows no {name}")


@pytest.fixture(scope="module")
def documented_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The guide's package, installed editable for this module's tests, then removed."""
    root = tmp_path_factory.mktemp("my-package")
    (root / "pyproject.toml").write_text(_documented_file("pyproject.toml"))
    (root / "conftest.py").write_text(_documented_file("conftest.py"))
    module = root / "src" / "my_package"
    module.mkdir(parents=True)
    (module / "__init__.py").write_text(EXAMPLE.read_text())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "-e", str(root)], check=True)
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        subprocess.run([*pip, "uninstall", "-y", EXAMPLE_DISTRIBUTION], check=True)


def test_documented_example_passes_the_suite_with_pytest(documented_package: Path) -> None:
    """``pytest`` in the guide's package runs the whole suite, and every rule passes."""
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
                documented_package)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert " passed" in proc.stdout
    assert "failed" not in proc.stdout
    # Declared capabilities only: no groups, no flush, one process.
    assert "backend lacks capability groups" in proc.stdout
    assert "local buffer of a channel is full" not in out


def test_documented_example_passes_layers_conformance(documented_package: Path) -> None:
    proc = _run([sys.executable, "-m", "layers", "conformance", "dict://"], documented_package)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Conformance of dict:// (my_package.DictBackend; capabilities: none)" in proc.stdout
    assert "CONFORMS:" in proc.stdout
