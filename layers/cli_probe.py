"""Whether a layer's store exists, found without creating it (``layers inspect`` is read-only).

Opening a SQLite or PostgreSQL layer creates its file or its schema on first use; a
command that only looks must not. :func:`missing_store` checks first, read-only, for
the built-in backends whose store is created on first use, and says in one line what
is missing. Other backends (Redis, memory, third-party ones) create nothing by
looking, so they are not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from layers.core.backend import Backend
from layers.core.options import split_url
from layers.core.redact import redact_url

__all__ = ["missing_store"]

#: A table every SQLite layer file has (the sqlite backend's message table).
SQLITE_TABLE = "layers_messages"
#: A table every PostgreSQL layer schema has.
POSTGRES_TABLE = "messages"
#: Seconds the PostgreSQL check may take; past that the layer itself reports the server.
POSTGRES_TIMEOUT = 10.0


async def missing_store(backend: type[Backend], url: str) -> str | None:
    """One line saying that ``url`` names no existing store of ``backend``, or None.

    None also when the check cannot tell (the server is unreachable, the file cannot
    be read): the layer then reports that itself. Creates and changes nothing.
    """
    _, rest, _ = split_url(url)
    options: dict[str, Any] = backend.prepare_options(backend.options_from_url(rest))
    where = redact_url(url)
    if backend.name == "sqlite":
        return await asyncio.to_thread(_sqlite_missing, where, str(options["path"]))
    schema = getattr(options.get("settings"), "schema", None)
    if backend.name == "postgres" and isinstance(schema, str) and "conninfo" in options:
        return await _postgres_missing(where, str(options["conninfo"]), schema)
    return None


def _sqlite_missing(where: str, path: str) -> str | None:
    if not os.path.exists(path):
        return f"no layer at {where}: {path} does not exist (nothing was created)"
    try:
        # mode=ro: SQLite opens the file read-only and never creates or changes it.
        with contextlib.closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as db:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SQLITE_TABLE,)
            ).fetchone()
    except sqlite3.Error:
        return None  # not readable as a database: opening the layer says why
    if found is None:
        return f"no layer at {where}: {path} holds no channel layer (nothing was changed)"
    return None


async def _postgres_missing(where: str, conninfo: str, schema: str) -> str | None:
    import psycopg

    try:
        async with asyncio.timeout(POSTGRES_TIMEOUT):
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except (psycopg.Error, TimeoutError):
        return None  # the layer reports an unreachable server or bad credentials
    async with conn:
        cursor = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), "
            "to_regclass(%s) IS NOT NULL",
            (schema, f"{schema}.{POSTGRES_TABLE}"),
        )
        row = await cursor.fetchone()
    has_schema, has_table = row if row is not None else (False, False)
    if not has_schema:
        return f"no layer at {where}: the schema {schema!r} does not exist (nothing was created)"
    if not has_table:
        return f"no layer at {where}: the schema {schema!r} holds no channel layer"
    return None
