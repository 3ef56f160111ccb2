"""Development sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``bench``, ``demo``,
``redis_drivers``; nightly: ``conformance_thorough``, ``chaos``, ``mutation``.

``tests`` runs the unit and integration tests, among them the conformance suite on
every built-in backend (``tests/conformance/test_builtin_backends.py``, the one place
that lists the backends' URLs). Servers are found through ``LAYERS_TEST_REDIS_URL``
and ``LAYERS_TEST_POSTGRES_URL``; with ``LAYERS_TEST_REQUIRE_SERVICES=1`` (as in CI)
a missing server fails the run instead of skipping it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

#: The conformance suite's runs on every built-in backend, one test per backend URL.
CONFORMANCE = "tests/conformance/test_builtin_backends.py"


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests, with the conformance suite on every backend."""
    session.install("-e", ".[test]")
    session.install("-e", "tests/conformance/thirdparty")
    session.run("pytest", *session.posargs)


#: The oldest redis-py the ``redis`` extra allows (keep in step with pyproject.toml).
OLDEST_REDIS = "redis==5.0.1"


@nox.session
@nox.parametrize("hiredis", [True, False], ids=["hiredis", "no-hiredis"])
@nox.parametrize("driver", ["oldest", "newest"])
def redis_drivers(session: nox.Session, driver: str, hiredis: bool) -> None:
    """The Redis tests and conformance suite on the oldest and newest supported redis-py.

    With and without hiredis, so a driver release cannot break users silently. The
    conformance runs are the Redis ones of ``tests``; the single-server run is not slow,
    the sharded, Sentinel and cluster runs are. The cluster tests run here too
    (``-- -m 'not slow'`` skips them and the restarts).
    """
    session.install("-e", ".[test]")
    if driver == "oldest":
        session.install(OLDEST_REDIS)
    else:
        session.install("--upgrade", "redis")
    if not hiredis:
        session.run("python", "-m", "pip", "uninstall", "-y", "-q", "hiredis")
    session.run(
        "python",
        "-c",
        "import importlib.util, redis; print('redis-py', redis.__version__, 'hiredis',"
        " bool(importlib.util.find_spec('hiredis')))",
    )
    redis_runs = ("redis", "redis-sharded", "redis-sentinel", "redis-cluster")
    conformance = [f"{CONFORMANCE}::test_suite_passes[{run}]" for run in redis_runs]
    session.run(
        "pytest", "tests/backends/redis", *conformance, "-p", "no:cacheprovider", *session.posargs
    )


def _nightly_runs(session: nox.Session, suite_args: str, timeout: float, **env: str) -> None:
    """The single-server conformance runs (``-m 'not slow'``) running ``suite_args``."""
    session.install("-e", ".[test]")
    env["LAYERS_TEST_CONFORMANCE_ARGS"] = suite_args
    env["LAYERS_TEST_CONFORMANCE_TIMEOUT"] = str(timeout)
    session.run("pytest", CONFORMANCE, "-m", "not slow", env=env)


@nox.session
def chaos(session: nox.Session) -> None:
    """The randomized multi-process loss rule for a minute per backend (nightly)."""
    seconds = session.posargs[0] if session.posargs else "60"
    session.log(f"randomized processes for {seconds} s on every backend")
    _nightly_runs(
        session,
        "--pyargs layers.conformance_tests.test_chaos",
        float(seconds) * 3 + 120,
        LAYERS_CONFORMANCE_CHAOS_SECONDS=seconds,
        LAYERS_CONFORMANCE_TIMEOUT=str(float(seconds) * 3 + 60),
    )


@nox.session
def conformance_thorough(session: nox.Session) -> None:
    """Nightly: the conformance suite's thorough profile on every backend (not run by CI)."""
    _nightly_runs(
        session, "--conformance-profile thorough --pyargs layers.conformance_tests", 6 * 3600
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, and on a Channels app typed with Channels' stubs."""
    session.install("-e", ".[all,conformance]", "mypy>=1.11", "pytest")
    session.run("mypy")
    # Application code typed against types-channels (Channels' own stubs) must accept
    # our layers: see tests/typing/channels_app.py.
    session.install("channels>=4.1", "types-channels>=4.3")
    session.run("mypy", "--strict", "tests/typing/channels_app.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs with warnings as errors."""
    session.install("-e", ".[all,docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def demo(session: nox.Session) -> None:
    """Run ``layers demo`` (pass options after --, e.g. -- --url sqlite:///demo.db)."""
    session.install("-e", ".[sqlite]")
    session.run("layers", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, our layers next to the peers (``nox -s bench -- --quick``)."""
    # Imported here: a harness that does not import fails this session only.
    from benchmarks.nox_session import bench as run_bench

    run_bench(session)


#: What ``nox -s mutation`` mutates, the layer URL the conformance suite runs on, and how
#: many mutants run at once (one for SQLite: the flush rules empty the shared file).
MUTATION_TARGETS = {
    "memory": (["layers/backends/memory.py"], "memory://", 2),
    "sqlite": (
        ["layers/backends/sqlite/backend.py", "layers/backends/sqlite/_sql.py"],
        "sqlite:///{tmp}/mutation.db",
        1,
    ),
}


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation score of the conformance suite (mutmut) over the memory and SQLite backends.

    Each target is mutated in a copy of the tracked sources; every mutant runs the
    conformance suite's tests that reach the mutated function, first failure stops it.
    Slow (tens of minutes on two cores), so not part of CI. ``nox -s mutation -- memory``
    runs one target; the survivors are listed with ``mutmut show NAME`` in the copy.
    """
    session.install("-e", ".[test,sqlite]", "mutmut==3.8.1")
    root = Path(__file__).resolve().parent
    tracked = subprocess.run(
        ["git", "ls-files", "layers", "pyproject.toml"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in session.posargs or list(MUTATION_TARGETS):
        files, url, children = MUTATION_TARGETS[name]
        work = Path(tempfile.mkdtemp(prefix=f"layers-mutation-{name}-"))
        for path in tracked:
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / path, work / path)
        addopts = ["-p", "layers.conformance_tests", "--layer-url", url.format(tmp=work)]
        with (work / "pyproject.toml").open("a") as config:
            config.write(
                f'\n[tool.mutmut]\nsource_paths = ["layers/"]\nonly_mutate = {files!r}\n'.replace(
                    "'", '"'
                )
                + f"pytest_add_cli_args = {[*addopts, '-p', 'no:cacheprovider']!r}\n".replace(
                    "'", '"'
                )
                + 'pytest_add_cli_args_test_selection = ["layers/conformance_tests/"]\n'
                # A hung mutant (a receive that never waits) is killed after 3x the
                # time of its tests plus 15 s, not mutmut's default 15x.
                "timeout_multiplier = 3.0\ntimeout_constant = 15.0\n"
            )
        env = {"LAYERS_CONFORMANCE_TIMEOUT": "30"}
        with session.chdir(work):
            session.run("mutmut", "run", "--max-children", str(children), env=env)
            results = session.run("mutmut", "results", "--all", "true", silent=True, env=env)
        statuses = re.findall(r"^\s*(\S+): (\w[\w ]*)$", str(results), re.MULTILINE)
        counts: dict[str, int] = {}
        for _, status in statuses:
            counts[status] = counts.get(status, 0) + 1
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        survivors = [mutant for mutant, status in statuses if status == "survived"]
        session.log(f"{name}: {counts}; killed {killed} of {len(statuses)}")
        session.log(f"{name}: survivors (mutmut show NAME in {work}):")
        for mutant in survivors:
            session.log(f"  {mutant}")
