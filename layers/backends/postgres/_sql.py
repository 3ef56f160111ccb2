"""The SQL of the PostgreSQL backend: schema, migrations and the hot statements.

Every statement is built once per backend instance by :func:`statements` for one
schema name (quoted with :class:`psycopg.sql.Identifier`), so the hot path only
executes pre-rendered bytes that psycopg prepares server-side after a few uses.
Statements and their shared fragments are composed with :mod:`psycopg.sql` only
(``SQL.format`` with identifiers, literals and placeholders), one function per
concern below.

Tables (in the layer's own schema)
    ``meta``
        ``key``/``value`` rows; ``schema_version`` says which migrations ran.
    ``messages``
        ``id`` (identity: the arrival order), ``queue``, ``expires_at`` (server
        clock), ``payload``. Index ``(queue, id)`` serves receive and the capacity
        count; index ``(expires_at)`` serves the batched cleanup. No primary key:
        receive deletes by ``ctid`` of rows it has locked, which needs no index.
    ``group_members``
        Primary key ``(group_name, channel)``; ``group_add`` upserts ``expires_at``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from psycopg import sql

from layers.backends.postgres import _direct
from layers.backends.postgres._inbox import MAX_NOTE_PAYLOAD

__all__ = [
    "SCHEMA_VERSION",
    "Statements",
    "functions",
    "migrations",
    "note",
    "notify_channel",
    "statements",
]


def notify_channel(schema: sql.Composable, queue: sql.Composable) -> sql.Composed:
    """SQL for ``_listener.notify_channel(schema, queue)``: the NOTIFY channel of a queue."""
    return sql.SQL(
        "'lq_' || left(encode(sha256(convert_to({schema} || ':' || {queue}, 'UTF8')), 'hex'), 24)"
    ).format(schema=schema, queue=queue)


def note(queue: sql.Composable, ident: sql.Composable, payload: sql.Composable) -> sql.Composed:
    """SQL for the NOTIFY payload of a stored row (see ``_inbox``).

    A reply inbox (a queue ending in ``!``) gets ``p<id>:<base64 payload>`` when the
    payload fits (``_inbox.MAX_NOTE_PAYLOAD``), else the empty string, as every
    normal queue does.
    """
    return sql.SQL(
        "CASE WHEN right({queue}, 1) <> '!' OR octet_length({payload}) > {limit}"
        " THEN '' ELSE 'p' || {ident} || ':' || encode({payload}, 'base64') END"
    ).format(queue=queue, ident=ident, payload=payload, limit=sql.Literal(MAX_NOTE_PAYLOAD))


#: The schema version this code writes and reads.
SCHEMA_VERSION = 5

# Queue tables churn: every message leaves a dead tuple. Vacuum them early and often
# so receive's index scan does not wade through dead entries.
_AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 5000, "
    "autovacuum_analyze_scale_factor = 0.05, fillfactor = 90"
)


def migrations(schema: str, *, unlogged: bool) -> dict[int, list[sql.Composed]]:
    """Return ``{version: [statements]}``: the table changes from ``version - 1`` up.

    Versions 2 to :data:`SCHEMA_VERSION` changed only ``send_one``, which
    :func:`functions` replaces whenever a schema is behind, so they have no entry:
    2 added the function, 3 its plan guard, 4 bitmap scans to the guard, 5 the count
    in id order (see :meth:`_Schema.bounded`). A change to the function's body bumps
    :data:`SCHEMA_VERSION` and needs nothing here.
    """
    s = sql.Identifier(schema)
    persistence = sql.SQL("UNLOGGED " if unlogged else "")
    return {
        1: [
            sql.SQL(
                "CREATE {p}TABLE IF NOT EXISTS {s}.messages ("
                " id bigint GENERATED ALWAYS AS IDENTITY,"
                ' queue text COLLATE "C" NOT NULL,'
                " expires_at timestamptz NOT NULL,"
                " payload bytea NOT NULL"
                ") WITH ({av})"
            ).format(p=persistence, s=s, av=sql.SQL(_AUTOVACUUM)),
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS messages_queue_id ON {s}.messages (queue, id)"
            ).format(s=s),
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS messages_expires_at ON {s}.messages (expires_at)"
            ).format(s=s),
            sql.SQL(
                "CREATE {p}TABLE IF NOT EXISTS {s}.group_members ("
                ' group_name text COLLATE "C" NOT NULL,'
                ' channel text COLLATE "C" NOT NULL,'
                " expires_at timestamptz NOT NULL,"
                " PRIMARY KEY (group_name, channel)"
                ")"
            ).format(p=persistence, s=s),
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS group_members_expires_at"
                " ON {s}.group_members (expires_at)"
            ).format(s=s),
        ],
    }


def functions(schema: str) -> list[sql.Composed]:
    """The current release's functions, created or replaced as one migration step."""
    return [_send_function(sql.Identifier(schema), sql.Literal(schema))]


def _send_function(s: sql.Identifier, lit: sql.Literal) -> sql.Composed:
    """``{s}.send_one``: lock the queue, then count, insert and NOTIFY, as one call.

    One statement instead of a pipelined lock and send, which costs the client about
    half the CPU. Each statement in a PL/pgSQL function takes its own snapshot under
    READ COMMITTED, so the count, made after the lock, sees every row of the senders
    that held the lock before (what makes capacity exact across processes). The lock
    key is ``lock_queues``'s.

    It first turns ``enable_seqscan`` and ``enable_bitmapscan`` off for its
    transaction, unless the session did (``_connections`` does): PL/pgSQL keeps a
    statement's plan for the session, and a plan made on an empty or new table would
    read every row (of the table, or of the queue) once the table fills up.
    """
    t = _Schema(s, lit)
    body = t.compose(
        "DECLARE notified boolean; BEGIN"
        " IF current_setting('enable_seqscan') <> 'off'"
        " OR current_setting('enable_bitmapscan') <> 'off' THEN"
        " PERFORM set_config('enable_seqscan', 'off', true),"
        " set_config('enable_bitmapscan', 'off', true); END IF;"
        " PERFORM pg_advisory_xact_lock(hashtextextended('channel-layers:' || {lit}"
        " || ':' || send_queue, 0));"
        " {send} INTO queued, stored, notified;"
        " END",
        send=_send_statement(
            t,
            queue=sql.SQL("send_queue"),
            payload=sql.SQL("send_payload"),
            expiry=sql.SQL("send_expiry"),
            cap=sql.SQL("send_cap"),
            channel=sql.SQL("send_channel"),
        ),
    )
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {s}.send_one(send_queue text, send_payload bytea,"
        " send_expiry float8, send_cap bigint, send_channel text,"
        " OUT queued bigint, OUT stored boolean)"
        " LANGUAGE plpgsql VOLATILE AS {body}"
    ).format(s=s, body=sql.Literal(body.as_string(None)))


@dataclass(frozen=True, slots=True)
class Statements:
    """The rendered statements of one schema (see :func:`statements`)."""

    lock: bytes
    lock_queues: bytes
    create_schema: bytes
    create_meta: bytes
    read_version: bytes
    write_version: bytes
    persistence: bytes
    send_locked: bytes
    hand: bytes
    send_batch: bytes
    receive: bytes
    receive_batch: bytes
    restore: bytes
    claim_inbox: bytes
    delete_ids: bytes
    notify: bytes
    group_send: bytes
    group_add: bytes
    group_discard: bytes
    group_channels: bytes
    queue_statistics: bytes
    group_statistics: bytes
    flush: bytes
    cleanup_messages: bytes
    cleanup_groups: bytes
    may_vacuum: bytes
    vacuum: bytes


@dataclass(frozen=True, slots=True)
class _Schema:
    """Renders statement templates for one schema: ``{s}`` its identifier, ``{lit}`` its name."""

    s: sql.Identifier
    lit: sql.Literal

    def compose(self, template: str, **parts: sql.Composable) -> sql.Composed:
        return sql.SQL(template).format(s=self.s, lit=self.lit, **parts)

    def q(self, template: str, **parts: sql.Composable) -> bytes:
        # Rendered once: psycopg then finds the query in its cache on every execute.
        return self.compose(template, **parts).as_bytes(None)

    def more(
        self, queue: sql.Composable, lim: sql.Composable, mine: sql.Composable
    ) -> sql.Composed:
        """A claim's "the queue may hold more": more live rows seen than the claim ``d`` took.

        The data-modifying CTE ``d`` and this check share the statement's snapshot, so
        the rows ``d`` deletes are still counted here; at most ``lim + 1`` are read.
        ``ORDER BY id`` leaves the server one plan, the ``(queue, id)`` index: without
        it, a plan made for any queue (a generic plan, once the statistics show one
        long queue) could walk the expiry index and filter out every other queue's row.
        """
        return self.compose(
            "(SELECT count(*) FROM (SELECT 1 FROM {s}.messages WHERE queue = {queue}"
            " AND expires_at > now() ORDER BY id LIMIT {lim} + 1) AS v)"
            " > (SELECT count(*) FROM d{mine})",
            queue=queue,
            lim=lim,
            mine=mine,
        )

    def bounded(
        self,
        queue: sql.Composable,
        least: sql.Composable,
        adding: sql.Composable,
        most: sql.Composable,
    ) -> sql.Composed:
        """A row count of ``queue``: exact (up to ``most``) unless ``adding`` rows fit.

        Before counting: a queue's rows have distinct ids between its lowest and its
        highest, so that span bounds its row count from above, in two index probes.
        When the span plus ``adding`` stays below ``least`` (the smallest capacity of
        the rows being added), the span itself stands in for the count: every row
        then passes ``count + position - 1 < capacity``, as it should. Otherwise at
        most ``most`` live rows are counted: the check never scans a whole backlog.
        ``OFFSET 0`` keeps the planner from copying the two probes into each place
        that reads ``lo`` or ``hi`` (five probes instead of two). The count reads in id
        order for the reason :meth:`more` gives.
        """
        return self.compose(
            "(SELECT CASE WHEN b.lo IS NULL THEN 0"
            " WHEN b.hi - b.lo + {adding} < {least} THEN b.hi - b.lo + 1"
            " ELSE (SELECT count(*) FROM (SELECT 1 FROM {s}.messages m"
            " WHERE m.queue = {queue} AND m.expires_at > now() ORDER BY m.id LIMIT {most}) AS c)"
            " END"
            " FROM (SELECT (SELECT id FROM {s}.messages WHERE queue = {queue} ORDER BY id LIMIT 1)"
            " AS lo, (SELECT id FROM {s}.messages WHERE queue = {queue} ORDER BY id DESC LIMIT 1)"
            " AS hi OFFSET 0) AS b)",
            queue=queue,
            least=least,
            adding=adding,
            most=most,
        )


def statements(schema: str) -> Statements:
    """Compose every statement for ``schema`` (an unquoted, validated identifier)."""
    t = _Schema(sql.Identifier(schema), sql.Literal(schema))
    return Statements(
        **_schema_statements(t),
        **_send_statements(t),
        **_batch_statements(t),
        **_receive_statements(t),
        **_group_statements(t),
        **_maintenance_statements(t),
    )


def _schema_statements(t: _Schema) -> dict[str, bytes]:
    """Creating, versioning and inspecting the schema (see ``_connections``)."""
    return {
        "lock": t.q(
            "SELECT pg_advisory_xact_lock(hashtextextended('channel-layers:' || {lit}, 0))"
        ),
        "create_schema": t.q("CREATE SCHEMA IF NOT EXISTS {s}"),
        "create_meta": t.q(
            "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)"
        ),
        "read_version": t.q("SELECT value FROM {s}.meta WHERE key = 'schema_version'"),
        "write_version": t.q(
            "INSERT INTO {s}.meta (key, value) VALUES ('schema_version', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        ),
        "persistence": t.q(
            "SELECT c.relpersistence = 'u' FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = {lit} AND c.relname = 'messages'"
        ),
    }


def _send_statements(t: _Schema) -> dict[str, bytes]:
    """Storing one message, and the lock that orders the sends to a queue."""
    return {
        # Taken before a batch's count-and-insert, in the same transaction (a pipeline):
        # concurrent senders to one queue then count each other's rows (READ COMMITTED
        # gives each statement a snapshot taken when it starts, after the lock).
        "lock_queues": t.q(
            "SELECT pg_advisory_xact_lock(hashtextextended('channel-layers:' || {lit}"
            " || ':' || k, 0)) FROM (SELECT DISTINCT unnest(%(queues)b::text[]) AS k"
            " ORDER BY 1) AS t"
        ),
        # Lock the queue, count, insert and NOTIFY, in one call (see ``_send_function``).
        "send_locked": t.q(
            "SELECT queued, stored FROM {s}.send_one(%(queue)s::text, %(payload)b::bytea,"
            " %(expiry)s::float8, %(cap)s::bigint, %(channel)s::text)"
        ),
        # A send while a claim of this process waits on the queue: ``(handed, stored)``.
        # An empty queue (no live row at this statement's snapshot) stores nothing and
        # NOTIFYs nothing: the payload goes to the waiting claim as if that claim had
        # taken it (handed). Otherwise the payload is sent as ``send_locked`` sends it.
        # The look needs no lock: it sees every send committed before it started, and
        # a send committing later comes after this message whichever way it goes. The
        # probe reads the queue in id order, through its own index (see ``more``);
        # ``OFFSET 0`` keeps it one probe (the planner would copy it into each use).
        "hand": t.q(
            "SELECT e.handed, CASE WHEN e.handed THEN false"
            " ELSE (SELECT stored FROM {s}.send_one(%(queue)s::text, %(payload)b::bytea,"
            " %(expiry)s::float8, %(cap)s::bigint, %(channel)s::text)) END"
            " FROM (SELECT (SELECT id FROM {s}.messages WHERE queue = %(queue)s"
            " AND expires_at > now() ORDER BY id LIMIT 1) IS NULL AS handed OFFSET 0) AS e"
        ),
    }


def _send_statement(
    t: _Schema,
    *,
    queue: sql.Composable,
    payload: sql.Composable,
    expiry: sql.Composable,
    cap: sql.Composable,
    channel: sql.Composable,
) -> sql.Composed:
    """Count (bounded), insert if below capacity, NOTIFY if stored: ``(n, stored, _)``.

    The NOTIFY goes with every stored row, not only on the empty to non-empty edge: the
    count cannot see a reader's uncommitted DELETE, so an edge rule can miss a reader
    that just drained.
    """
    return t.compose(
        "WITH c AS (SELECT {count} AS n),"
        " ins AS (INSERT INTO {s}.messages (queue, expires_at, payload)"
        " SELECT {queue}, now() + make_interval(secs => {expiry}), {payload}"
        " FROM c WHERE c.n < {cap} RETURNING id)"
        " SELECT c.n, EXISTS (SELECT FROM ins),"
        " CASE WHEN {channel}::text IS NOT NULL"
        " AND EXISTS (SELECT FROM ins)"
        " THEN pg_notify({channel}::text, {note}) IS NULL END"
        " FROM c",
        queue=queue,
        expiry=expiry,
        payload=payload,
        cap=cap,
        channel=channel,
        count=t.bounded(queue, cap, sql.SQL("1"), cap),
        note=note(
            sql.SQL("{}::text").format(queue),
            sql.SQL("(SELECT id FROM ins)"),
            sql.SQL("{}::bytea").format(payload),
        ),
    )


def _batch_statements(t: _Schema) -> dict[str, bytes]:
    """The statements of a batch of sends and receives (see ``_batch``)."""
    return {
        # Many rows in one statement, in order. Each queue's live rows are counted
        # once; a row is stored while that count plus the rows before it in this
        # statement for its queue stay below its capacity.
        "send_batch": t.q(
            "WITH p AS (SELECT * FROM unnest(%(queues)b::text[], %(payloads)b::bytea[],"
            " %(expiries)b::float8[], %(caps)b::int[], %(channels)b::text[])"
            " WITH ORDINALITY AS t(queue, payload, expiry, cap, channel, ord)),"
            " l AS (SELECT g.queue, {count}"
            " AS n FROM (SELECT queue, min(cap) AS least, max(cap) AS most, count(*) AS k FROM p"
            " GROUP BY queue) AS g),"
            " c AS (SELECT p.*, l.n + row_number() OVER (PARTITION BY p.queue ORDER BY p.ord)"
            " - 1 < p.cap AS ok FROM p JOIN l ON l.queue = p.queue),"
            " ins AS (INSERT INTO {s}.messages (queue, expires_at, payload)"
            " SELECT c.queue, now() + make_interval(secs => c.expiry), c.payload"
            " FROM c WHERE c.ok ORDER BY c.ord RETURNING id, queue),"
            # The ids follow the insert order, so the k-th stored row of a queue (by
            # ord) has the k-th id of that queue: that pairs rows with their ids.
            " ni AS (SELECT id, queue, row_number() OVER (PARTITION BY queue ORDER BY id)"
            " AS k FROM ins),"
            " nc AS (SELECT ord, row_number() OVER (PARTITION BY queue ORDER BY ord) AS k"
            " FROM c WHERE c.ok)"
            " SELECT c.ord, c.ok, CASE WHEN c.ok AND c.channel IS NOT NULL"
            " THEN pg_notify(c.channel, {note}) IS NULL END"
            " FROM c LEFT JOIN nc ON nc.ord = c.ord"
            " LEFT JOIN ni ON ni.queue = c.queue AND ni.k = nc.k ORDER BY c.ord",
            count=t.bounded(
                sql.SQL("g.queue"), sql.SQL("g.least"), sql.SQL("g.k"), sql.SQL("g.most")
            ),
            note=note(sql.SQL("c.queue"), sql.SQL("ni.id"), sql.SQL("c.payload")),
        ),
        # receive for many queues at once, each with its own limit; a row with a NULL
        # id says that queue may hold more (see ``receive``).
        "receive_batch": t.q(
            "WITH r AS (SELECT * FROM unnest(%(queues)b::text[], %(limits)b::int[])"
            " AS r(queue, lim)),"
            " d AS (DELETE FROM {s}.messages WHERE ctid = ANY(ARRAY("
            "SELECT m.ctid FROM r, LATERAL (SELECT ctid FROM {s}.messages"
            " WHERE queue = r.queue AND expires_at > now()"
            " ORDER BY id LIMIT r.lim FOR UPDATE SKIP LOCKED) AS m))"
            " RETURNING queue, id, payload)"
            " SELECT queue, id, payload FROM d UNION ALL"
            " SELECT r.queue, NULL, NULL FROM r WHERE {more}",
            more=t.more(sql.SQL("r.queue"), sql.SQL("r.lim"), sql.SQL(" WHERE d.queue = r.queue")),
        ),
    }


def _receive_statements(t: _Schema) -> dict[str, bytes]:
    """Claiming messages, reply-inbox deliveries, and putting messages back."""
    return {
        # Claim with SKIP LOCKED in an InitPlan (runs once: no extra rows locked),
        # delete by ctid. RETURNING order is unspecified: the caller sorts by id.
        # A last row with a NULL id says the queue may hold more than was taken: the
        # statement saw more live rows than it claimed (rows another reader holds
        # count too). Without it the queue held nothing else at this statement's
        # snapshot, so a row stored later is announced by a NOTIFY sent after it.
        "receive": t.q(
            "WITH d AS (DELETE FROM {s}.messages WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM {s}.messages WHERE queue = %(queue)s AND expires_at > now()"
            " ORDER BY id LIMIT %(lim)s FOR UPDATE SKIP LOCKED)) RETURNING id, payload)"
            " SELECT id, payload FROM d UNION ALL SELECT NULL, NULL WHERE {more}",
            more=t.more(sql.SQL("%(queue)s"), sql.SQL("%(lim)s"), sql.SQL("")),
        ),
        # A reply inbox's claim: the same, plus a marker NOTIFY on the inbox's own
        # channel, delivered at this commit after the notes of every row it claimed
        # (see ``_inbox``). The marker row has a NULL id.
        "claim_inbox": t.q(
            "WITH d AS (DELETE FROM {s}.messages WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM {s}.messages WHERE queue = %(queue)s AND expires_at > now()"
            " ORDER BY id LIMIT %(lim)s FOR UPDATE SKIP LOCKED)) RETURNING id, payload)"
            " SELECT d.id, d.payload, NULL::boolean FROM d UNION ALL"
            " SELECT NULL, NULL, pg_notify(%(channel)s, %(marker)s) IS NULL"
        ),
        # Rows of an inbox already delivered from their NOTIFY, deleted in a batch.
        "delete_ids": t.q(
            "DELETE FROM {s}.messages WHERE queue = %s AND id = ANY(%s::bigint[]) RETURNING id"
        ),
        "notify": t.q("SELECT pg_notify(%s, %s) IS NULL"),
        # Put payloads back at the head of a queue, oldest first: ids below the
        # queue's lowest (at most 0 for an empty queue, below every identity value).
        "restore": t.q(
            "WITH b AS (SELECT coalesce((SELECT id FROM {s}.messages WHERE queue = %(queue)s"
            " ORDER BY id LIMIT 1), 1) - cardinality(%(payloads)b::bytea[]) AS low),"
            " ins AS (INSERT INTO {s}.messages (id, queue, expires_at, payload)"
            " OVERRIDING SYSTEM VALUE SELECT b.low + r.ord - 1, %(queue)s,"
            " now() + make_interval(secs => r.expiry), r.payload"
            " FROM b, unnest(%(payloads)b::bytea[], %(expiries)b::float8[])"
            " WITH ORDINALITY AS r(payload, expiry, ord))"
            " SELECT CASE WHEN %(channel)s::text IS NOT NULL"
            " THEN pg_notify(%(channel)s::text, '') IS NULL END"
        ),
    }


def _group_statements(t: _Schema) -> dict[str, bytes]:
    """Group membership and fan-out."""
    cap = sql.Placeholder("cap")
    queue = sql.SQL("queue")
    return {
        # group_send in one statement: the members, one payload per receiving queue
        # (as GroupPayload describes it), the capacity check, the insert and the
        # wake-ups. Returns the number of queues stored and skipped.
        "group_send": t.q(
            "WITH m AS (SELECT CASE WHEN pos > 0 THEN left(channel, pos) ELSE channel END"
            " AS queue, substr(channel, pos + 1) AS local FROM (SELECT channel,"
            " strpos(channel, '!') AS pos FROM {s}.group_members WHERE group_name = %(group)s"
            " AND expires_at > now()) AS g),"
            " p AS (SELECT queue, CASE WHEN right(queue, 1) = '!' THEN %(head)b"
            " || convert_to(string_agg(local, ','), 'UTF8') || %(newline)b || %(body)b"
            " ELSE %(plain)b END AS payload FROM m GROUP BY queue),"
            " c AS (SELECT p.queue, p.payload, {count} < %(cap)s AS ok FROM p),"
            " ins AS (INSERT INTO {s}.messages (queue, expires_at, payload)"
            " SELECT queue, now() + make_interval(secs => %(expiry)s), payload"
            " FROM c WHERE ok ORDER BY queue RETURNING id, queue, payload)"
            " SELECT (SELECT count(*) FROM c WHERE ok), (SELECT count(*) FROM c WHERE NOT ok),"
            " (SELECT count(CASE WHEN %(notify)s THEN pg_notify({channel}, {note})"
            " IS NULL END) FROM ins)",
            count=t.bounded(sql.SQL("p.queue"), cap, sql.SQL("1"), cap),
            channel=notify_channel(t.lit, queue),
            note=note(queue, sql.SQL("id"), sql.SQL("payload")),
        ),
        "group_add": t.q(
            "INSERT INTO {s}.group_members (group_name, channel, expires_at)"
            " VALUES (%s, %s, now() + make_interval(secs => %s))"
            " ON CONFLICT (group_name, channel) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        ),
        "group_discard": t.q(
            "DELETE FROM {s}.group_members WHERE group_name = %s AND channel = %s"
        ),
        "group_channels": t.q(
            "SELECT channel FROM {s}.group_members WHERE group_name = %s AND expires_at > now()"
        ),
    }


def _maintenance_statements(t: _Schema) -> dict[str, bytes]:
    """Statistics, flush and the batched cleanup of expired rows."""
    return {
        "queue_statistics": t.q(
            "SELECT queue, count(*), extract(epoch FROM min(expires_at) - now())::float8"
            " FROM {s}.messages WHERE expires_at > now() GROUP BY queue"
        ),
        "group_statistics": t.q(
            "SELECT group_name, count(*) FROM {s}.group_members WHERE expires_at > now()"
            " GROUP BY group_name"
        ),
        "flush": t.q("DELETE FROM {s}.messages; DELETE FROM {s}.group_members"),
        # Whether this role may vacuum the table (its owner, or a member of the owner
        # role): VACUUM only warns, and skips, when it may not (see ``_vacuum``).
        "may_vacuum": t.q(
            "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = {lit} AND c.relname = 'messages'"
        ),
        "vacuum": t.q("VACUUM (SKIP_LOCKED) {s}.messages"),
        "cleanup_messages": t.q(
            "DELETE FROM {s}.messages WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM {s}.messages WHERE expires_at <= now()"
            " ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED))"
        ),
        "cleanup_groups": t.q(
            "DELETE FROM {s}.group_members WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM {s}.group_members WHERE expires_at <= now()"
            " LIMIT %s FOR UPDATE SKIP LOCKED))"
        ),
    }


def direct_statements(st: Statements, *, prepared: bool = True) -> list[_direct.Direct]:
    """The statements run on libpq directly (see ``_direct``), with their types.

    ``prepared``: see :attr:`_direct.Direct.prepared` (false for a transaction pooler).
    """
    text, bytea, int8, float8, boolean = (
        _direct.TEXT,
        _direct.BYTEA,
        _direct.INT8,
        _direct.FLOAT8,
        _direct.BOOL,
    )
    statements = [
        _direct.direct(st.receive, {"queue": text, "lim": int8}, [int8, bytea], claims=True),
        _direct.direct(
            st.receive_batch,
            {"queues": _direct.TEXT_ARRAY, "limits": _direct.INT4_ARRAY},
            [text, int8, bytea],
            claims=True,
        ),
        _direct.direct(
            st.send_locked,
            {"queue": text, "payload": bytea, "expiry": float8, "cap": int8, "channel": text},
            [int8, boolean],
        ),
        _direct.direct(
            st.hand,
            {"queue": text, "payload": bytea, "expiry": float8, "cap": int8, "channel": text},
            [boolean, boolean],
        ),
        _direct.direct(st.lock_queues, {"queues": _direct.TEXT_ARRAY}, [_direct.VOID]),
        _direct.direct(
            st.send_batch,
            {
                "queues": _direct.TEXT_ARRAY,
                "payloads": _direct.BYTEA_ARRAY,
                "expiries": _direct.FLOAT8_ARRAY,
                "caps": _direct.INT4_ARRAY,
                "channels": _direct.TEXT_ARRAY,
            },
            [int8, boolean, boolean],
        ),
        _direct.direct(
            st.restore,
            {
                "queue": text,
                "payloads": _direct.BYTEA_ARRAY,
                "expiries": _direct.FLOAT8_ARRAY,
                "channel": text,
            },
            [boolean],
            settles=True,
        ),
        _direct.direct(
            st.claim_inbox,
            {"queue": text, "lim": int8, "channel": text, "marker": text},
            [int8, bytea, boolean],
            claims=True,
        ),
    ]
    return statements if prepared else [replace(d, prepared=False) for d in statements]
