"""PostgreSQL backend: psycopg 3 (async) and psycopg_pool, no Django or migrations needed.

Features
    Messages are rows of one table in the layer's own schema, created and versioned
    by the backend itself on first use (safe when many processes start at once: a
    transaction-level advisory lock guards ``CREATE … IF NOT EXISTS`` and a version
    row). ``send`` is one statement that counts the queue (bounded by its capacity),
    inserts, and NOTIFYs a wake-up. ``receive`` is one atomic
    ``DELETE … WHERE ctid = ANY(ARRAY(SELECT … FOR UPDATE SKIP LOCKED))
    … RETURNING``, so a message goes to at most one reader in any process; returned
    rows are ordered by their identity column (arrival order), never by a clock.
    Expiry uses the server's clock. Group fan-out is one statement inserting one row
    per receiving queue. NOTIFY is only a wake-up (empty payload, a 27-byte hashed
    channel per queue, one LISTEN connection per instance); a poll every
    ``poll_interval`` is the guarantee, so message size is not bound by NOTIFY's
    8,000 bytes and a lost notification only delays. Expired rows are deleted in
    batches. Connections lost to a server restart or ``pg_terminate_backend`` are
    replaced; LISTEN is re-established and readers drain once after it.

Connection URL
    ``postgresql://user:password@host:5432/dbname?schema=layers&unlogged=true``
    (``postgres://`` too). The query parameters below are backend options; any other
    parameter (``sslmode``, ``connect_timeout``, ``application_name``…) goes to libpq.
    Layer options (``expiry``, ``capacity``…) may be given in the query string too.

Options
    ``url`` / ``dsn``: a libpq URL or ``key=value`` connection string. Or libpq
    keywords directly (``host``, ``port``, ``dbname``, ``user``, ``password``…). Or
    ``database="default"``: reuse Django's ``DATABASES["default"]``.
    ``schema`` (``"layers"``): the schema holding the tables; one schema is one
    namespace (``flush`` empties only it).
    ``unlogged`` (false): create the tables ``UNLOGGED`` (no WAL: faster; emptied after
    a crash, absent on replicas).
    ``synchronous_commit`` (``"off"``): set on the layer's pooled connections; ``None``
    keeps the server's setting. ``"off"`` means a server *crash* may forget the last
    fraction of a second of sends and receives (a forgotten receive is re-delivered);
    clean restarts lose nothing.
    ``poll_only`` (false): never LISTEN, poll every ``poll_interval`` (for PgBouncer in
    transaction mode; also disables prepared statements and the session ``SET``).
    ``poll_interval`` (1 s, or 0.25 s with ``poll_only``): the fallback poll.
    ``notify`` (true): send NOTIFY wake-ups (turn off when every process polls).
    ``pool_min_size`` (1), ``pool_max_size`` (10), ``pool_timeout`` (10 s): the pool.
    ``cleanup_interval`` (30 s), ``cleanup_batch`` (1000): expired-row cleanup.
    ``vacuum_every`` (5000): ``VACUUM`` the messages table after this many rows deleted by
    this backend (0: leave it to autovacuum).

Capabilities
    ``groups``, ``flush``, ``cross_process``, ``cross_host``, ``persistent``.

Use as a Django Channels ``BACKEND``::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "layers.backends.postgres.PostgresChannelLayer",
            "CONFIG": {"url": "postgresql://app@db/app?schema=channels"},
        }
    }
"""

from __future__ import annotations

from layers.core.errors import MissingDriver

try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingDriver("postgresql", "postgres", exc.name or "psycopg") from exc

from layers.backends.postgres._backend import PostgresBackend, PostgresChannelLayer
from layers.backends.postgres._listener import notify_channel

__all__ = ["PostgresBackend", "PostgresChannelLayer", "notify_channel"]
