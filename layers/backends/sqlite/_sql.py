"""The SQL of the SQLite backend: schema and statements, in one place.

Every statement that changes data is a single statement run in autocommit mode, or
part of an explicit ``BEGIN IMMEDIATE`` transaction. A single writing statement in
autocommit takes the write lock when it starts (before it reads anything) and waits
for it through ``busy_timeout``, exactly like ``BEGIN IMMEDIATE``, so no deferred
read-then-write transaction is ever left to fail. SQLite still answers SQLITE_BUSY at
once now and then between processes; the backend runs such a statement again, up to
``busy_timeout`` (a statement refused as busy changed nothing).

Order comes from ``id`` (``INTEGER PRIMARY KEY AUTOINCREMENT``: ids only grow and are
never reused, even after the newest row is deleted). ``expires_at`` is a Unix time in
seconds from the host clock, used only to filter and to clean, never to order.
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINT",
    "DELETE_EMPTY_QUEUES",
    "DELETE_EXPIRED_GROUPS",
    "DELETE_EXPIRED_MESSAGES",
    "FLUSH",
    "GROUP_ADD",
    "GROUP_CHANNELS",
    "GROUP_DISCARD",
    "GROUP_STATISTICS",
    "INSERT",
    "QUEUE_STATISTICS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_OLDEST",
    "TAKE",
    "delete_ids",
    "insert_many",
    "insert_params",
    "restore",
    "waiting_queues",
]

#: Stored in ``PRAGMA user_version``; a file made by a newer schema is refused.
SCHEMA_VERSION = 1

#: The schema, one statement each (created in one BEGIN IMMEDIATE).
# layers_queues counts every row of a queue, expired or not, kept exact by the
# triggers inside each writing statement. A send checks it first (one lookup);
# only when it says "full" does it count the unexpired rows (a scan of at most the
# queue's length), so a deep queue does not make every send slower.
SCHEMA: tuple[str, ...] = (
    """\
CREATE TABLE IF NOT EXISTS layers_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    expires_at REAL NOT NULL,
    payload BLOB NOT NULL
)
""",
    """\
CREATE INDEX IF NOT EXISTS layers_messages_queue
    ON layers_messages (queue, id, expires_at)
""",
    """\
CREATE INDEX IF NOT EXISTS layers_messages_expiry
    ON layers_messages (expires_at)
""",
    """\
CREATE TABLE IF NOT EXISTS layers_groups (
    group_name TEXT NOT NULL,
    channel TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (group_name, channel)
)
""",
    """\
CREATE INDEX IF NOT EXISTS layers_groups_expiry
    ON layers_groups (expires_at)
""",
    """\
CREATE TABLE IF NOT EXISTS layers_queues (
    queue TEXT PRIMARY KEY,
    size INTEGER NOT NULL
) WITHOUT ROWID
""",
    """\
CREATE TRIGGER IF NOT EXISTS layers_messages_added AFTER INSERT ON layers_messages
BEGIN
    INSERT OR IGNORE INTO layers_queues (queue, size) VALUES (new.queue, 0);
    UPDATE layers_queues SET size = size + 1 WHERE queue = new.queue;
END
""",
    """\
CREATE TRIGGER IF NOT EXISTS layers_messages_removed AFTER DELETE ON layers_messages
BEGIN
    UPDATE layers_queues SET size = size - 1 WHERE queue = old.queue;
END
""",
)


# -- messages ---------------------------------------------------------------------

#: Append one payload unless the queue already holds ``capacity`` unexpired ones.
#: Parameters: see :func:`insert_params`. rowcount 1 = stored.
INSERT = """
INSERT INTO layers_messages (queue, expires_at, payload)
SELECT ?, ?, ?
WHERE coalesce((SELECT size FROM layers_queues WHERE queue = ?), 0) < ?
   OR (SELECT count(*) FROM layers_messages WHERE queue = ? AND expires_at > ?) < ?
"""


def insert_params(
    queue: str, payload: bytes, expires_at: float, capacity: int, now: float
) -> tuple[object, ...]:
    """Return the parameters of :data:`INSERT`."""
    return (queue, expires_at, payload, queue, capacity, queue, now, capacity)


def insert_many(rows: int) -> str:
    """Return one statement appending ``rows`` payloads to *distinct* queues.

    Each row is stored only if its queue holds fewer than its capacity unexpired
    payloads; the statement returns the queues it stored to. SQLite evaluates the
    SELECT before inserting, so the counts may not see this statement's own rows:
    callers must not repeat a queue within one statement. Parameters: per row
    queue, expires_at, payload, capacity; then now. Needs SQLite 3.35 (RETURNING).
    """
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return f"""
WITH put (queue, expires_at, payload, capacity) AS (VALUES {values})
INSERT INTO layers_messages (queue, expires_at, payload)
SELECT put.queue, put.expires_at, put.payload FROM put
WHERE coalesce((SELECT size FROM layers_queues AS q WHERE q.queue = put.queue), 0)
      < put.capacity
   OR (SELECT count(*) FROM layers_messages AS m
       WHERE m.queue = put.queue AND m.expires_at > ?) < put.capacity
RETURNING queue
"""


def restore(rows: int) -> str:
    """Return one statement putting ``rows`` payloads back at the head of a queue.

    They take ids below every id in the table, oldest lowest, so they come out
    first and in order; the capacity is not checked (they were in the queue). The
    uncorrelated subquery runs once, and one statement is atomic. Each row is also
    handed to ``layers_keep(token, …)`` (which returns NULL) as it is inserted, so a
    caller cancelled meanwhile learns that it ran. Parameters: per row its position
    (0 = oldest), expires_at and payload, then the row count, the queue and the token.
    """
    values = ", ".join(["(?, ?, ?)"] * rows)
    return f"""
WITH back (position, expires_at, payload) AS (VALUES {values}),
base (low) AS (SELECT coalesce(min(id), 1) - ? FROM layers_messages)
INSERT INTO layers_messages (id, queue, expires_at, payload)
SELECT base.low + back.position, ?, back.expires_at,
    coalesce(layers_keep(?, base.low + back.position, back.expires_at, back.payload),
        back.payload)
FROM back, base
"""


#: Atomically remove and return the oldest unexpired payloads (SQLite >= 3.35).
#: Parameters: queue, now, limit. RETURNING order is unspecified: sort by id.
TAKE = """
DELETE FROM layers_messages WHERE id IN (
    SELECT id FROM layers_messages
    WHERE queue = ? AND expires_at > ? ORDER BY id LIMIT ?
) RETURNING id, expires_at, payload
"""

#: ``TAKE``, each row also handed to ``layers_keep(token, …)`` as it is deleted.
TAKE_KEEPING = """
DELETE FROM layers_messages WHERE id IN (
    SELECT id FROM layers_messages
    WHERE queue = ? AND expires_at > ? ORDER BY id LIMIT ?
) RETURNING id, expires_at, payload, layers_keep(?, id, expires_at, payload)
"""

#: The fallback for SQLite < 3.35, inside BEGIN IMMEDIATE: select, then delete_ids().
SELECT_OLDEST = """
SELECT id, expires_at, payload FROM layers_messages
WHERE queue = ? AND expires_at > ? ORDER BY id LIMIT ?
"""


def delete_ids(count: int) -> str:
    """Return ``DELETE ... WHERE id IN (?, ...)`` for ``count`` ids."""
    return f"DELETE FROM layers_messages WHERE id IN ({', '.join(['?'] * count)})"


def waiting_queues(count: int) -> str:
    """Return which of ``count`` queues hold an unexpired payload (params: names, now).

    The watcher runs it after another connection committed, to wake only the
    receivers that have something to take.
    """
    marks = ", ".join(["?"] * count)
    return f"SELECT DISTINCT queue FROM layers_messages WHERE queue IN ({marks}) AND expires_at > ?"


#: Delete a batch of expired payloads. Parameters: now, batch size.
DELETE_EXPIRED_MESSAGES = """
DELETE FROM layers_messages WHERE id IN (
    SELECT id FROM layers_messages WHERE expires_at <= ? LIMIT ?
)
"""

#: Forget the sizes of empty queues. Parameter: batch size.
DELETE_EMPTY_QUEUES = """
DELETE FROM layers_queues WHERE queue IN (
    SELECT queue FROM layers_queues WHERE size <= 0 LIMIT ?
)
"""

# -- groups -----------------------------------------------------------------------

#: Add or refresh a membership. Parameters: group, channel, expires_at.
GROUP_ADD = (
    "INSERT OR REPLACE INTO layers_groups (group_name, channel, expires_at) VALUES (?, ?, ?)"
)

#: Parameters: group, channel.
GROUP_DISCARD = "DELETE FROM layers_groups WHERE group_name = ? AND channel = ?"

#: Parameters: group, now.
GROUP_CHANNELS = "SELECT channel FROM layers_groups WHERE group_name = ? AND expires_at > ?"

#: Pending payloads and the earliest expiry per queue. Parameter: now.
QUEUE_STATISTICS = (
    "SELECT queue, count(*), min(expires_at) FROM layers_messages WHERE expires_at > ? "
    "GROUP BY queue"
)

#: Unexpired members per group. Parameter: now.
GROUP_STATISTICS = (
    "SELECT group_name, count(*) FROM layers_groups WHERE expires_at > ? GROUP BY group_name"
)

#: Delete a batch of expired memberships. Parameters: now, batch size.
DELETE_EXPIRED_GROUPS = """
DELETE FROM layers_groups WHERE rowid IN (
    SELECT rowid FROM layers_groups WHERE expires_at <= ? LIMIT ?
)
"""

# -- whole store ------------------------------------------------------------------

FLUSH = (
    "DELETE FROM layers_messages",
    "DELETE FROM layers_groups",
    "DELETE FROM layers_queues",
)

#: Copy the WAL into the database without waiting for anyone.
CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
