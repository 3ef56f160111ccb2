"""Wake-ups for receivers waiting on one SQLite file, in this process and across processes.

One :class:`Hub` per database file per process, shared by every backend instance
(every layer and event loop) that uses the file.

In-process
    A send that stored a payload calls :meth:`Hub.notify` for its queue, which wakes
    the receivers waiting on that queue at once, in any event loop or thread.

Across processes
    SQLite has no notifications, so a *watcher* thread checks ``PRAGMA data_version``
    on its own read-only connection while some receiver waits (and for a short
    linger after, so a receiver that comes straight back does not pay for a
    restart). On Linux it checks when the kernel reports a write to the database or
    its WAL file (inotify), so an idle watcher sleeps instead of polling and a commit
    is seen at once; elsewhere, or if inotify is unavailable, it polls every
    ``poll_interval`` seconds. ``data_version`` changes whenever *another*
    connection commits; since the watcher never writes, that is any commit by any
    process, this one included. On a change the watcher asks which of the waited-on
    queues now hold an unexpired payload and wakes only their receivers.

Why nothing is missed
    A receiver registers *before* it tries to take (:func:`~layers.core.wakeups.wait_then_claim`
    arms its signal before each claim), and waits only if the attempt
    found nothing. A commit either happened before the attempt's snapshot (the
    attempt sees it) or after the registration; in the second case the watcher,
    which reads its first ``data_version`` only after it started running for this
    receiver, sees the change on a later poll and finds the queue non-empty.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import sqlite3
import struct
import sys
import threading
import time
from typing import Any

from layers.backends.sqlite import _sql
from layers.core.wakeups import Waiters, wake

__all__ = ["Hub", "attach", "detach"]

logger = logging.getLogger("layers.sqlite")

#: How long the watcher keeps polling after the last receiver stopped waiting.
WATCH_LINGER = 2.0
#: The most queue names the watcher puts in one query.
_QUERY_CHUNK = 500
#: How often a watcher woken by file events re-checks anyway (and notices its stop).
_RECHECK = 0.25
#: Pause after a failed poll (the file vanished, the schema is not there yet...).
_ERROR_PAUSE = 0.1


class Hub:
    """Waiting receivers of one database file in this process, and their watcher.

    Thread-safe: every method may be called from any thread or event loop.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: Set once this process has created or checked the schema of the file.
        self.schema_ready = False
        self._lock = threading.Lock()
        #: The receivers waiting on each queue (guarded by the hub's lock).
        self.waiters = Waiters(self._lock)
        # token -> (poll_interval, busy_timeout) of each attached backend instance
        self._users: dict[int, tuple[float, float]] = {}
        self._next_token = 0
        self._thread: threading.Thread | None = None
        # The latest watcher thread, kept after it clears _thread, so _release can join it.
        self._watcher: threading.Thread | None = None
        # Set when the last instance detached: the watcher stops without finishing its sleep.
        self._closed = threading.Event()
        # Written to when the last instance detached: wakes a watcher waiting for file events.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)

    # -- attachment ---------------------------------------------------------------

    def _attach(self, poll_interval: float, busy_timeout: float) -> int:
        with self._lock:
            self._next_token += 1
            self._users[self._next_token] = (poll_interval, busy_timeout)
            return self._next_token

    def _detach(self, token: int) -> bool:
        """Forget an instance; True when no instance uses the hub any more."""
        with self._lock:
            self._users.pop(token, None)
            if not self._users:
                self._closed.set()
                with contextlib.suppress(OSError):
                    os.write(self._wake_write, b"x")
            return not self._users

    def _release(self) -> None:
        """The hub is dropped: let its watcher finish (it was woken), close the wake pipe."""
        thread = self._watcher
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- waiting and waking -------------------------------------------------------

    def watch(self) -> None:
        """Make sure the watcher runs (a receiver is about to wait on :attr:`waiters`)."""
        with self._lock:
            if self._thread is None and self._users:
                self._thread = threading.Thread(
                    target=self._watch, name=f"layers-sqlite-watch:{self.path}", daemon=True
                )
                self._thread.start()
                self._watcher = self._thread

    def notify(self, queue: str) -> None:
        """Wake every receiver of this process waiting on ``queue`` (after a commit)."""
        with self._lock:
            waiting = self.waiters.pop(queue)
        if waiting:
            wake(waiting)

    def _wake_queues(self, queues: set[str] | None) -> None:
        """Wake the waiters of ``queues`` (of every queue when None)."""
        with self._lock:
            if queues is None:
                woken = self.waiters.pop_every()
            else:
                woken = [w for q in queues for w in self.waiters.pop(q)]
        if woken:
            wake(woken)

    # -- the watcher thread -------------------------------------------------------

    def _snapshot(self) -> tuple[list[str], float, float] | None:
        """Return (waited queues, poll interval, busy timeout), or None to stop.

        Called by the watcher under no lock; stops it (and lets a later
        :meth:`watch` start a new one) after WATCH_LINGER without waiters.
        """
        with self._lock:
            if not self._users:
                self._thread = None
                return None
            interval = min(u[0] for u in self._users.values())
            busy = max(u[1] for u in self._users.values())
            return self.waiters.queues(), interval, busy

    def _stop_if_idle(self, idle_since: float) -> bool:
        with self._lock:
            if self.waiters or time.monotonic() - idle_since < WATCH_LINGER:
                return False
            self._thread = None
            return True

    def _watch(self) -> None:
        """Poll ``data_version`` while receivers wait; wake those with something to take."""
        conn: sqlite3.Connection | None = None
        events: _FileEvents | None = None
        retry_events = 0.0
        version: int | None = None
        idle_since: float | None = None
        try:
            while True:
                snapshot = self._snapshot()
                if snapshot is None:
                    return
                queues, interval, busy = snapshot
                if queues:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif self._stop_if_idle(idle_since):
                    return
                try:
                    if conn is None:
                        conn = _watch_connection(self.path, busy)
                        conn.execute("PRAGMA data_version").fetchone()  # opens the WAL
                    if events is None and time.monotonic() >= retry_events:
                        events = _FileEvents.open([self.path, self.path + "-wal"])
                        retry_events = time.monotonic() + _RECHECK
                        version = None  # watched from now on: check from scratch
                    current = conn.execute("PRAGMA data_version").fetchone()[0]
                    if current != version and queues:
                        self._wake_queues(_ready_queues(conn, queues))
                    version = current
                except sqlite3.Error as exc:
                    # Let the receivers try (and report) themselves; poll again later.
                    logger.debug("watcher of %s failed: %s", self.path, exc)
                    version = None
                    if events is not None:
                        events.close()
                        events = None
                    if conn is not None:
                        conn.close()
                        conn = None
                    self._wake_queues(None)
                    interval = max(interval, _ERROR_PAUSE)
                if events is not None and conn is not None:
                    # Sleep until a write to the file (or a periodic re-check).
                    if not events.wait(_RECHECK, self._wake_read) and events.lost:
                        events.close()
                        events = None
                else:
                    self._closed.wait(interval)
        finally:
            if events is not None:
                events.close()
            if conn is not None:
                conn.close()


class _FileEvents:
    """Linux inotify on the database and WAL files: a commit wakes the watcher at once.

    Every commit writes to one of them (the WAL in WAL mode), which the kernel reports
    as a modification. Made with ``ctypes`` (no dependency); :meth:`open` returns None
    where inotify is unavailable, and the watcher polls instead.
    """

    _MODIFY = 0x2
    _IGNORED = 0x8000  # the watched file went away
    _OVERFLOW = 0x4000  # events were dropped
    _libc: Any = None

    def __init__(self, fd: int) -> None:
        self._fd = fd
        #: Set when the watch broke (file removed, queue overflow): re-open it.
        self.lost = False

    @classmethod
    def open(cls, paths: list[str]) -> _FileEvents | None:
        """Watch ``paths`` (those that exist) for writes, or None if impossible here."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            if cls._libc is None:
                cls._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = cls._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        watched = 0
        for path in paths:
            if os.path.exists(path):
                watched += cls._libc.inotify_add_watch(fd, os.fsencode(path), cls._MODIFY) >= 0
        if not watched:
            os.close(fd)
            return None
        return cls(fd)

    def wait(self, timeout: float, wake: int) -> bool:
        """Wait up to ``timeout`` for writes; True if there were some (all are consumed).

        Returns False at once when ``wake`` (a pipe's read end) becomes readable.
        """
        ready, _, _ = select.select([self._fd, wake], [], [], timeout)
        if self._fd not in ready:
            return False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return True
            offset = 0
            while offset + 16 <= len(data):
                _wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
                if mask & (self._IGNORED | self._OVERFLOW):
                    self.lost = True
                offset += 16 + size

    def close(self) -> None:
        os.close(self._fd)


def _watch_connection(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open the watcher's connection: read-only use, autocommit, no statement cache."""
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA query_only = ON")
    return conn


def _ready_queues(conn: sqlite3.Connection, queues: list[str]) -> set[str]:
    """Return which of ``queues`` hold an unexpired payload now."""
    now = time.time()
    ready: set[str] = set()
    for start in range(0, len(queues), _QUERY_CHUNK):
        chunk = queues[start : start + _QUERY_CHUNK]
        rows = conn.execute(_sql.waiting_queues(len(chunk)), [*chunk, now]).fetchall()
        ready.update(row[0] for row in rows)
    return ready


# -- the registry: one hub per file per process ------------------------------------

_hubs: dict[str, Hub] = {}
_hubs_lock = threading.Lock()


def attach(path: str, poll_interval: float, busy_timeout: float) -> tuple[Hub, int]:
    """Return the hub of ``path`` (made on first use) and a token for :func:`detach`."""
    key = os.path.realpath(path)
    with _hubs_lock:
        hub = _hubs.get(key)
        if hub is None:
            hub = _hubs[key] = Hub(key)
        return hub, hub._attach(poll_interval, busy_timeout)


def detach(hub: Hub, token: int) -> None:
    """Release a token from :func:`attach`; the last one drops the hub and its watcher."""
    with _hubs_lock:
        dropped = hub._detach(token)
        if dropped and _hubs.get(hub.path) is hub:
            del _hubs[hub.path]
    if dropped:
        hub._release()


def _after_fork_in_child() -> None:
    # A forked child has the parent's hubs but none of their threads or loops.
    global _hubs_lock
    _hubs.clear()
    _hubs_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
