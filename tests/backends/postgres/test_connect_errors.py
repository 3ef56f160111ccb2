"""A PostgreSQL layer that cannot connect says why at once; async_to_sync use stays quiet."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import pytest
from asgiref.sync import async_to_sync

import layers

from ..helpers import first_send_error
from .servers import sql, with_params

pytestmark = pytest.mark.postgres


def test_missing_database_fails_at_once_with_the_servers_message(pg_server: str) -> None:
    base = pg_server.rsplit("/", 1)[0]
    elapsed, error = first_send_error(f"{base}/no_such_database_{uuid.uuid4().hex[:8]}")
    assert elapsed < 3, f"took {elapsed:.1f} s"
    assert "does not exist" in str(error)
    assert isinstance(error, layers.BackendUnavailable)


def test_bad_credentials_fail_at_once_without_showing_the_password(pg_server: str) -> None:
    host = pg_server.split("@", 1)[1]
    elapsed, error = first_send_error(f"postgresql://no_such_role_x:s3cr3t-pw@{host}")
    assert elapsed < 3, f"took {elapsed:.1f} s"
    assert "no_such_role_x" in str(error)
    assert "s3cr3t-pw" not in str(error)
    assert "s3cr3t-pw" not in repr(error.__cause__)


def test_refused_connection_fails_at_once(pg_server: str) -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        elapsed, error = first_send_error(f"postgresql://postgres@127.0.0.1:{port}/x")
    assert elapsed < 3, f"took {elapsed:.1f} s"
    assert "refused" in str(error).lower()


def test_sixty_async_to_sync_calls_log_nothing_and_leave_no_connection(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tag = f"layers_a2s_{uuid.uuid4().hex[:8]}"
    layer = layers.from_url(with_params(pg_url, application_name=tag))
    caplog.set_level(logging.DEBUG, logger="psycopg")
    for i in range(60):
        async_to_sync(layer.send)("a2s.check", {"i": i})
        assert async_to_sync(layer.receive)("a2s.check") == {"i": i}
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]
    deadline = time.monotonic() + 5
    while True:
        (count,) = sql(
            pg_url.split("?")[0],
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            tag,
        )[0]
        if count == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert count == 0, f"{count} connections left open after the event loops closed"
