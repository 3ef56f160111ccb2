"""A Redis layer that cannot connect says why at once (refused, bad credentials)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from ..helpers import first_send_error

pytestmark = pytest.mark.redis


def test_refused_connection_fails_at_once_with_the_cause() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        elapsed, error = first_send_error(f"redis://127.0.0.1:{port}/0")
    assert elapsed < 3, f"took {elapsed:.1f} s"
    assert "111" in str(error) or "refused" in str(error).lower()


def test_bad_password_fails_at_once_without_showing_it(spawn) -> None:  # type: ignore[no-untyped-def]
    server = spawn()
    subprocess.run(
        ["redis-cli", "-p", str(server.port), "CONFIG", "SET", "requirepass", "right-one"],
        check=True,
        capture_output=True,
        timeout=10,
    )
    elapsed, error = first_send_error(f"redis://:wr0ng-pw@127.0.0.1:{server.port}/0")
    assert elapsed < 3, f"took {elapsed:.1f} s"
    assert "invalid username-password" in str(error)
    assert "wr0ng-pw" not in str(error)
