"""SQLite backend: several processes on one host share one database file, no server.

Features
    One file on a local disk, created with its schema on first use (safely when
    several processes start at once); nothing to install but ``aiosqlite``, nothing
    to start, no migrations. WAL mode; each send is one ``INSERT`` whose capacity
    check runs under SQLite's write lock, so it is exact across processes; each
    receive is one atomic ``DELETE ... RETURNING`` (``BEGIN IMMEDIATE`` + SELECT +
    DELETE before SQLite 3.35), so a message reaches at most one reader in any
    process. FIFO by an ``AUTOINCREMENT`` id. Receivers wake at once for sends in
    the same process and within ``poll_interval`` for sends from other processes
    (a watcher thread polls ``PRAGMA data_version``). Expired rows are deleted in
    batches and the WAL is checkpointed every ``cleanup_interval``.

Connection URL
    ``sqlite:///relative/path.db`` (relative to the working directory when the
    layer is made) or ``sqlite:////absolute/path.db``; query parameters are options:
    ``sqlite:///app.db?poll_interval=0.005&expiry=30``. ``:memory:`` is refused:
    an in-memory database cannot be shared between processes (use ``memory://``).

Options
    ``path``
        The database file (instead of a URL). Its folder must exist.
    ``poll_interval`` (default 0.002)
        Seconds between two ``data_version`` polls while a receiver waits: the
        added latency for messages from another process, about half of it on average.
    ``busy_timeout`` (default 5.0)
        Seconds a statement waits for another process's write lock, or keeps running
        again after SQLite answered busy at once, before it fails.
    ``cleanup_interval`` (default 5.0)
        Seconds between two rounds of expired-row deletion and WAL checkpoint.

    The layer options (``expiry``, ``capacity``, ``channel_capacity``,
    ``group_expiry``...) all apply. Expiry deadlines use the host's wall clock
    (``time.time()``), the only clock processes share; order never depends on it.

Capabilities
    ``groups``, ``flush``, ``cross_process``, ``persistent``. Not ``cross_host``:
    WAL needs shared memory, so every process must run on the host that holds the
    file, on a local filesystem (not NFS/SMB).

Use as a Django Channels ``BACKEND``::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layers.backends.sqlite.SqliteChannelLayer",
            "CONFIG": {"path": "/var/lib/myapp/channels.db"},
        }
    }
"""

from __future__ import annotations

from layers.backends.sqlite.backend import SqliteBackend
from layers.core.layer import ChannelLayer

__all__ = ["SqliteBackend", "SqliteChannelLayer"]


class SqliteChannelLayer(ChannelLayer):
    """A :class:`~layers.ChannelLayer` on the SQLite backend: a Channels ``BACKEND``.

    Give ``path`` (or ``url="sqlite:///app.db"``) in ``CONFIG``. Every process on the
    host that opens the same file shares its channels and groups.
    """

    backend_class = SqliteBackend
