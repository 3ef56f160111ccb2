"""Vacuuming the messages table after many deletes, so dead rows never pile up for long.

Every delivered message leaves a dead row, and every claim walks the index entries of
the dead rows at its queue's head until a vacuum removes them: with 30,000 dead rows a
claim read 32 index pages instead of 2. Autovacuum wakes up once a minute at best (its
``autovacuum_naptime``) and may be off, so a busy queue can pile up tens of thousands
of dead rows between two of its runs. A backend therefore counts the rows it deleted
and, after every ``vacuum_every`` of them, runs ``VACUUM (SKIP_LOCKED)`` on the table in
the background: a vacuum already running (another process's, or autovacuum's) makes it
skip, never wait. A role that may not vacuum the table (not its owner: VACUUM would
only warn) is told once in the log, and the backend stops trying.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg

from layers.backends.postgres._batch import Lease
from layers.backends.postgres._tasks import stop

__all__ = ["Vacuum"]

logger = logging.getLogger("layers.postgres")


class Vacuum:
    """Run ``statement`` in the background after every ``every`` deleted rows (0: never)."""

    __slots__ = ("_allowed", "_check", "_count", "_every", "_lease", "_statement", "_task", "runs")

    def __init__(self, lease: Lease, check: bytes, statement: bytes, every: int) -> None:
        self._lease = lease
        self._check = check
        self._statement = statement
        self._every = every
        self._allowed: bool | None = None
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        #: Vacuums finished without an error (for tests and statistics).
        self.runs = 0

    def deleted(self, rows: int) -> None:
        """Count ``rows`` deleted; start a vacuum when ``every`` were counted since the last."""
        if self._every <= 0 or rows <= 0:
            return
        self._count += rows
        if self._count >= self._every and self._task is None:
            self._count = 0
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="layers-postgres-vacuum"
            )

    async def _run(self) -> None:
        async def vacuum(conn: psycopg.AsyncConnection[Any]) -> bool:
            if self._allowed is None:
                row = await (await conn.execute(self._check)).fetchone()
                self._allowed = bool(row and row[0])
            if self._allowed:
                await conn.execute(self._statement, prepare=False)
            return self._allowed

        try:
            if await self._lease(vacuum):
                self.runs += 1
            else:
                self._every = 0
                logger.info(
                    "not vacuuming the messages table after deletes: this role does not own it"
                )
        except psycopg.Error as exc:
            logger.warning("vacuum of the messages table failed: %s", exc)
        finally:
            self._task = None

    async def aclose(self) -> None:
        """Stop a vacuum in progress (the server cancels it) and start no other."""
        self._every = 0
        task, self._task = self._task, None
        await stop(task)
