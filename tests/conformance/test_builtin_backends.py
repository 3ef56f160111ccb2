"""The shipped conformance suite on every built-in backend: one run per backend URL.

Each run is ``pytest -p layers.conformance_tests --layer-url URL`` in its own
interpreter, as a third party would run it; that also exercises the suite's
multi-process rules and the start of a store from a cold process. Every run gets a
namespace of its own (a fresh SQLite file, Redis prefix or PostgreSQL schema). A
server that is not reachable skips its run, or fails it when
``LAYERS_TEST_REQUIRE_SERVICES=1`` (CI).

The nightly sessions reuse these runs: ``LAYERS_TEST_CONFORMANCE_ARGS`` replaces what
each run runs (by default ``--pyargs layers.conformance_tests``; for instance
``--conformance-profile thorough --pyargs layers.conformance_tests``, or ``--pyargs
layers.conformance_tests.test_chaos``), and ``LAYERS_TEST_CONFORMANCE_TIMEOUT``
replaces each run's time limit in seconds.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from backends.postgres.servers import sql, with_params

ROOT = Path(__file__).resolve().parents[2]
#: What each run runs: the whole suite unless ``LAYERS_TEST_CONFORMANCE_ARGS`` says otherwise.
RUN_ARGS = shlex.split(
    os.environ.get("LAYERS_TEST_CONFORMANCE_ARGS", "--pyargs layers.conformance_tests")
)
TIMEOUT = os.environ.get("LAYERS_TEST_CONFORMANCE_TIMEOUT")


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _redis(request: pytest.FixtureRequest) -> str:
    parts = urlsplit(request.getfixturevalue("redis_server"))
    return parts._replace(query=f"prefix=conf{_tag()}").geturl()


def _redis_sharded(request: pytest.FixtureRequest) -> str:
    spawn = request.getfixturevalue("spawn")
    hosts = ",".join(f"127.0.0.1:{spawn().port}" for _ in range(3))
    return f"redis://{hosts}/0"


def _redis_sentinel(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sentinel_setup").url)


def _redis_cluster(request: pytest.FixtureRequest) -> str:
    return f"{request.getfixturevalue('redis_cluster').url}?prefix=conf{_tag()}"


def _postgres(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue("pg_server")
    schema = f"layers_conformance_{_tag()}"
    request.addfinalizer(lambda: sql(server, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    return with_params(server, schema=schema)


def _postgres_pgbouncer(request: pytest.FixtureRequest) -> str:
    """Through a PgBouncer in transaction mode, as ``poll_only`` is meant to run."""
    server = request.getfixturevalue("pg_server")
    bouncer = request.getfixturevalue("pgbouncer")
    schema = f"layers_conformance_{_tag()}"
    request.addfinalizer(lambda: sql(server, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    return with_params(bouncer, schema=schema, poll_only="true")


@dataclass(frozen=True)
class Target:
    """A built-in backend deployment the suite runs on."""

    #: Makes the layer URL, in a namespace of its own, with the fixtures it needs.
    url: Callable[[pytest.FixtureRequest], str]
    #: Seconds the whole run may take.
    timeout: float = 600
    #: ``PYTHONWARNINGS`` of the run (pytest's own ``filterwarnings`` applies in any case).
    warnings: str = "error"
    marks: tuple[pytest.MarkDecorator, ...] = ()


REDIS, SLOW_REDIS = (pytest.mark.redis,), (pytest.mark.redis, pytest.mark.slow)
TARGETS = {
    "memory": Target(lambda request: "memory://"),
    "sqlite": Target(
        lambda request: f"sqlite:///{request.getfixturevalue('tmp_path')}/conformance.db"
    ),
    "redis": Target(_redis, marks=REDIS),
    "redis-sharded": Target(_redis_sharded, marks=SLOW_REDIS),
    "redis-sentinel": Target(_redis_sentinel, marks=SLOW_REDIS),
    "redis-cluster": Target(_redis_cluster, marks=SLOW_REDIS),
    "postgres": Target(_postgres, timeout=900, warnings="default", marks=(pytest.mark.postgres,)),
    "postgres-pgbouncer": Target(
        _postgres_pgbouncer, timeout=900, warnings="default", marks=(pytest.mark.postgres,)
    ),
}


@pytest.fixture(
    params=[pytest.param(name, marks=target.marks) for name, target in TARGETS.items()],
    ids=list(TARGETS),
)
def target(request: pytest.FixtureRequest) -> tuple[str, Target]:
    """A layer URL of one built-in backend in a namespace of its own, and how to run on it."""
    chosen = TARGETS[request.param]
    return chosen.url(request), chosen


def test_suite_passes(target: tuple[str, Target]) -> None:
    url, how = target
    cmd = [sys.executable, "-m", "pytest", "-p", "layers.conformance_tests", "--layer-url", url]
    cmd += ["-q", "-p", "no:cacheprovider", *RUN_ARGS]
    env = {**os.environ, "PYTHONWARNINGS": how.warnings}
    timeout = float(TIMEOUT) if TIMEOUT else how.timeout
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
