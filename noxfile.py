"""Development sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``bench``, ``demo``.

``tests`` runs the unit and integration tests, then the conformance suite on every
built-in backend whose server is reachable. Servers are found through
``LAYERS_TEST_REDIS_URL`` and ``LAYERS_TEST_POSTGRES_URL``; with
``LAYERS_TEST_REQUIRE_SERVICES=1`` (as in CI) a missing server fails the run instead
of skipping it.
"""

from __future__ import annotations

import os
import socket
import tempfile
from urllib.parse import urlsplit

import nox

from benchmarks.nox_session import bench as _bench

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

REDIS_URL = os.environ.get("LAYERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "LAYERS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("LAYERS_TEST_REQUIRE_SERVICES") == "1"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or default_port)
    try:
        with socket.create_connection(address, 3):
            return True
    except OSError:
        return False


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{db}").geturl()


def _conformance_urls(session: nox.Session, tmp: str) -> list[tuple[str, str]]:
    urls = [("memory", "memory://"), ("sqlite", f"sqlite:///{tmp}/conformance.db")]
    for name, url, port, fix in (
        ("redis", REDIS_URL, 6379, lambda u: _with_db(u, 1)),
        ("postgres", POSTGRES_URL, 5432, lambda u: u + "?schema=layers_conformance"),
    ):
        if _reachable(url, port):
            urls.append((name, fix(url)))
        elif REQUIRE_SERVICES:
            session.error(f"{name} server not reachable at {url} (LAYERS_TEST_REQUIRE_SERVICES=1)")
        else:
            session.warn(f"skipping the {name} conformance run: no server at {url}")
    return urls


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests, then the conformance suite on every backend."""
    session.install("-e", ".[test]")
    session.install("-e", "tests/conformance/thirdparty")
    session.run("pytest", *session.posargs)
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in _conformance_urls(session, tmp):
            session.log(f"conformance suite on {name}: {url}")
            session.run(
                "pytest",
                "-p",
                "layers.conformance_tests",
                "--layer-url",
                url,
                "--pyargs",
                "layers.conformance_tests",
                "-q",
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
    _bench(session)
