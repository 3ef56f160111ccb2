"""The SQL of the SQLite backend: schema and statements, in one place.

Every statement that changes data is a single statement run in autocommit mode, or
part of an explicit ``BEGIN IMMEDIATE`` transaction. A single writing statement in
autocommit takes the write lock when it starts (before it reads anything) and waits
for it through ``busy_timeout``, exactly like ``BEGIN IMMEDIATE``; it can therefore
never fail with the immediate ``SQLITE_BUSY`` a deferred read-then-write transaction
gets.

Order comes from ``id`` (``INTEGER PRIMARY KEY AUTOINCREMENT``: ids only grow and are
never reused, even after the newest row is deleted). ``expires_at`` is a Unix time in
seconds from the host clock, used only to filter and to clean, never to order.
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINT",
    "DELETE_EXPIRED_GROUPS",
    "DELETE_EXPIRED_MESSAGES",
    "FLUSH",
    "GROUP_ADD",
    "GROUP_CHANNELS",
    "GROUP_DISCARD",
    "INSERT",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_OLDEST",
    "TAKE",
    "delete_ids",
    "insert_many",
    "waiting_queues",
]

#: Stored in ``PRAGMA user_version``; a file made by a newer schema is refused.
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS layers_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    expires_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS layers_messages_queue
    ON layers_messages (queue, id, expires_at);
CREATE INDEX IF NOT EXISTS layers_messages_expiry
    ON layers_messages (expires_at);
CREATE TABLE IF NOT EXISTS layers_groups (
    group_name TEXT NOT NULL,
    channel TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (group_name, channel)
);
CREATE INDEX IF NOT EXISTS layers_groups_expiry
    ON layers_groups (expires_at);
"""

# -- messages ---------------------------------------------------------------------

#: Append one payload unless the queue already holds ``capacity`` unexpired ones.
#: Parameters: queue, expires_at, payload, queue, now, capacity. rowcount 1 = stored.
INSERT = """
INSERT INTO layers_messages (queue, expires_at, payload)
SELECT ?, ?, ?
WHERE (SELECT count(*) FROM layers_messages WHERE queue = ? AND expires_at > ?) < ?
"""


def insert_many(rows: int) -> str:
    """Return one statement appending ``rows`` payloads to *distinct* queues.

    Each row is stored only if its queue holds fewer than its capacity unexpired
    payloads; the statement returns the queues it stored to. SQLite evaluates the
    SELECT fully before inserting, so the counts never see this statement's own
    rows: callers must not repeat a queue within one statement. Parameters: per row
    queue, expires_at, payload, capacity; then now. Needs SQLite 3.35 (RETURNING).
    """
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return f"""
WITH put (queue, expires_at, payload, capacity) AS (VALUES {values})
INSERT INTO layers_messages (queue, expires_at, payload)
SELECT put.queue, put.expires_at, put.payload FROM put
WHERE (SELECT count(*) FROM layers_messages AS m
       WHERE m.queue = put.queue AND m.expires_at > ?) < put.capacity
RETURNING queue
"""


#: Atomically remove and return the oldest unexpired payloads (SQLite >= 3.35).
#: Parameters: queue, now, limit. RETURNING order is unspecified: sort by id.
TAKE = """
DELETE FROM layers_messages WHERE id IN (
    SELECT id FROM layers_messages
    WHERE queue = ? AND expires_at > ? ORDER BY id LIMIT ?
) RETURNING id, expires_at, payload
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

# -- groups -----------------------------------------------------------------------

#: Add or refresh a membership. Parameters: group, channel, expires_at.
GROUP_ADD = (
    "INSERT OR REPLACE INTO layers_groups (group_name, channel, expires_at) VALUES (?, ?, ?)"
)

#: Parameters: group, channel.
GROUP_DISCARD = "DELETE FROM layers_groups WHERE group_name = ? AND channel = ?"

#: Parameters: group, now.
GROUP_CHANNELS = "SELECT channel FROM layers_groups WHERE group_name = ? AND expires_at > ?"

#: Delete a batch of expired memberships. Parameters: now, batch size.
DELETE_EXPIRED_GROUPS = """
DELETE FROM layers_groups WHERE rowid IN (
    SELECT rowid FROM layers_groups WHERE expires_at <= ? LIMIT ?
)
"""

# -- whole store ------------------------------------------------------------------

FLUSH = ("DELETE FROM layers_messages", "DELETE FROM layers_groups")

#: Copy the WAL into the database without waiting for anyone.
CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
