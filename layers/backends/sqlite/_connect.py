"""Opening the SQLite backend's connections: the driver import, WAL mode, error translation."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator

from layers.core.errors import BackendError, ConfigurationError, LayerClosed, MissingDriver
from layers.core.wakeups import outlast

try:
    import aiosqlite
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDriver("sqlite", "sqlite", "aiosqlite") from exc

__all__ = [
    "JOURNAL_SIZE_LIMIT",
    "aiosqlite",
    "connect",
    "is_busy",
    "translate",
]

#: Rows a cursor fetches per round when iterated (``aiosqlite.connect``'s default).
_ITER_CHUNK_SIZE = 64
#: The WAL file is truncated to this size when SQLite resets it after a checkpoint.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024


def is_busy(exc: BaseException | None) -> bool:
    """Whether ``exc`` is SQLite's SQLITE_BUSY, in any of its extended forms.

    A statement that fails with it changed nothing, so it may simply run again.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


@contextlib.contextmanager
def translate(path: str) -> Iterator[None]:
    """Turn driver errors into ours, naming the file."""
    try:
        yield
    except sqlite3.Error as exc:
        raise BackendError(f"SQLite error on {path}: {exc}") from exc
    except ValueError as exc:  # aiosqlite: "Connection closed" / "no active connection"
        raise LayerClosed(f"the SQLite connection to {path} is closed") from exc


async def connect(path: str, busy_timeout: float) -> aiosqlite.Connection:
    """Open ``path`` in autocommit mode and switch it to WAL (see :func:`_set_wal`).

    Raises :class:`~layers.ConfigurationError` (setting ``path``) when the file cannot
    be opened or cannot use WAL. Cancellation closes what was opened.
    """
    # Cancellation (an event loop ending cancels its tasks) must not leave a thread
    # that reports to the loop after it closed: the file is opened in a thread whose
    # result is awaited, then handed to aiosqlite; if that hand-over is cancelled,
    # aiosqlite stops its thread, and this waits for the thread to end.
    raw = await _open_raw(path, busy_timeout)
    threads: list[threading.Thread] = []

    def hand_over() -> sqlite3.Connection:
        threads.append(threading.current_thread())
        return raw

    conn = aiosqlite.Connection(hand_over, _ITER_CHUNK_SIZE)
    try:
        await conn
    except BaseException:
        await _thread_ended(threads)
        raw.close()
        raise
    try:
        await _set_wal(conn, path, busy_timeout)
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.close()
        raise
    return conn


async def _thread_ended(threads: list[threading.Thread], limit: float = 2.0) -> None:
    """Wait (up to ``limit`` s, whatever cancels) until the thread put in ``threads`` ends."""
    deadline = time.monotonic() + limit
    while (not threads or threads[0].is_alive()) and time.monotonic() < deadline:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.001)


def _open_file(path: str, busy_timeout: float) -> sqlite3.Connection:
    """``sqlite3.connect`` in autocommit mode, usable from the thread that gets it."""
    return sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )


async def _open_raw(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` in a thread of the loop's default executor; cancellation-safe.

    Cancelled while the file opens, it waits for that, closes what was opened, and
    raises ``CancelledError``. Raises :class:`~layers.ConfigurationError` (setting
    ``path``) when the file cannot be opened.
    """
    opening = asyncio.get_running_loop().run_in_executor(None, _open_file, path, busy_timeout)
    try:
        # A plain future, not a task: ending the event loop does not cancel it.
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        await outlast(opening)
        if not opening.cancelled() and opening.exception() is None:
            opening.result().close()
        raise
    except sqlite3.Error as exc:
        raise ConfigurationError("path", f"cannot open {path}: {exc}") from exc


async def _set_wal(conn: aiosqlite.Connection, path: str, busy_timeout: float) -> None:
    """Switch to WAL, retrying while another process does the same."""
    deadline = time.monotonic() + max(busy_timeout, 1.0)
    while True:
        try:
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
            break
        except sqlite3.DatabaseError as exc:
            busy = isinstance(exc, sqlite3.OperationalError) and (
                "locked" in str(exc) or "busy" in str(exc)
            )
            if not busy:
                raise ConfigurationError("path", f"cannot use {path}: {exc}") from exc
            if time.monotonic() > deadline:
                raise BackendError(f"{path} stayed locked: {exc}") from exc
            await asyncio.sleep(0.01)
    mode = str(rows[0][0]).lower() if rows else ""
    if mode != "wal":
        raise ConfigurationError(
            "path",
            f"SQLite could not switch {path} to WAL mode (it reports {mode!r}). "
            "The sqlite backend needs WAL: put the file on a local disk (not a network "
            "filesystem) and use an SQLite build with WAL support.",
        )
