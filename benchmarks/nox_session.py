"""The body of ``nox -s bench``; the noxfile wires it up::

    from benchmarks.nox_session import bench as _bench

    @nox.session
    def bench(session: nox.Session) -> None:
        \"\"\"Benchmarks side by side (``nox -s bench -- --quick``).\"\"\"
        _bench(session)

The peers are installed here, into the benchmark environment only; they are never
dependencies of the package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BENCH_REQUIREMENTS", "bench"]

#: What the benchmark environment needs besides ``channel-layers[all]``.
BENCH_REQUIREMENTS = [
    "channels>=4.1",
    "django>=4.2",
    "channels-redis>=4.2",
    "channels-postgres>=1.1",
    "channels-sqlite>=0.1",
    "channels-lite[aio]>=0.4",
    "hiredis>=2.3",
    "psycopg[binary]>=3.2",
    "matplotlib>=3.8",
]


def bench(session: Any) -> None:
    """Install the package and the peers, then run ``python -m benchmarks`` with the posargs."""
    session.install("-e", ".[all]", *BENCH_REQUIREMENTS)
    session.run("python", "-m", "benchmarks", *session.posargs)
