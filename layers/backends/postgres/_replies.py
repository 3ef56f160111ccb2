"""Receiving from reply inboxes: delivery from NOTIFY notes, claims, batched deletes.

One :class:`InboxReader` per backend instance drives the process-wide ledgers of
``_inbox`` against the server: it delivers the payloads notes carry, claims from the
table when a note, a gap or the poll says so, deletes the delivered rows in batches,
and gives up note ownership when the backend closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from layers.backends.postgres import _direct, _inbox
from layers.backends.postgres._connections import Connections
from layers.backends.postgres._listener import Listener, Wait, Watch, wait_for_wakeup
from layers.backends.postgres._tasks import stop
from layers.core.errors import BackendError

__all__ = ["InboxReader"]

logger = logging.getLogger("layers.postgres")

#: How long delivered inbox ids wait to be deleted together.
_DELETE_DELAY = 0.05


class InboxReader:
    """The reply-inbox side of one backend instance (the owner of its notes, if any)."""

    def __init__(
        self, db: Connections, *, poll: float, deleted: Callable[[int], None] = lambda n: None
    ) -> None:
        self._db = db
        self._sql = db.statements
        self._poll = poll
        self._deleted = deleted  # told how many rows each claim or batched delete removed
        # Reply inboxes whose notes this instance reads (see ``_inbox``).
        self._ledgers: dict[str, _inbox.InboxLedger] = {}
        self._to_delete: dict[str, list[int]] = {}
        self._deleting: dict[str, asyncio.Task[None]] = {}

    def ledger(self, queue: str) -> _inbox.InboxLedger:
        """The process-wide ledger of ``queue``, kept until :meth:`aclose`."""
        led = self._ledgers.get(queue)
        if led is None:
            led = self._ledgers[queue] = _inbox.ledger(
                self._db.conninfo, self._db.settings.schema, queue
            )
        return led

    async def receive(
        self, queue: str, channel: str, limit: int, deadline: float, watch: Watch
    ) -> list[bytes]:
        """Receive from a reply inbox: from its notes when this instance owns them.

        The owner delivers carried payloads without a round trip and claims from
        the table only when a note says so, when rows may lack notes (``gap``), or
        when the poll interval passes. Any other instance claims. Every path goes
        through the ledger, so an id is delivered once. Nothing between taking
        notes and returning awaits: cancellation loses nothing there.
        """
        led = self.ledger(queue)
        owner = led.acquire(self)
        if owner and watch.notes is None:
            watch.notes = _inbox.Notes()
            watch.gap = True
        event = watch.event
        claim = not owner
        # Not the core's wait_then_claim: a round here may deliver from notes without
        # claiming, and claims from the table only when a note, a gap or the poll says so.
        while True:
            event.clear()
            if owner and not (watch.gap or watch.need_claim):
                out = self._take_notes(queue, watch, led, limit)
                if out:
                    return out
            if claim or watch.gap or watch.need_claim:
                out = await self._claim(queue, channel, limit, watch, led, owner)
                if out:
                    return out
                claim = not owner
                if (owner and watch.notes and not watch.gap) or event.is_set():
                    continue
            woke = await wait_for_wakeup(event, deadline, self._poll)
            if woke is Wait.DEADLINE:
                return []
            if woke is Wait.POLL:
                claim = True  # a lost notification cannot strand a row

    def _take_notes(
        self, queue: str, watch: Watch, led: _inbox.InboxLedger, limit: int
    ) -> list[bytes]:
        """Deliver up to ``limit`` carried payloads from the front of the notes."""
        notes = watch.notes
        out: list[bytes] = []
        ids: list[int] = []
        while notes and len(out) < limit:
            ident, data = notes.popleft()
            if ident == _inbox.CLAIM:
                watch.need_claim = True
                break
            if ident == _inbox.MARKER:
                if watch.discard_until == data:
                    watch.discard_until = None
                led.marker(data)  # type: ignore[arg-type]
                continue
            if watch.discard_until is None and led.take_note(ident):
                out.append(data)  # type: ignore[arg-type]
                ids.append(ident)
        if ids:
            self._delete_later(queue, led, ids)
        return out

    async def _claim(
        self,
        queue: str,
        channel: str,
        limit: int,
        watch: Watch,
        led: _inbox.InboxLedger,
        owner: bool,
    ) -> list[bytes]:
        """Claim from the inbox's table rows, skipping ids already delivered."""
        generation = watch.generation
        listening = watch.listening.is_set()
        token = _inbox.new_token()
        started = led.begin_claim()
        rows: list[tuple[Any, ...]] | None = None
        interrupted = False
        try:
            rows = await self._db.query(
                self._sql.claim_inbox,
                {"queue": queue, "lim": limit, "channel": channel, "marker": f"m{token}"},
            )
        except _direct.Interrupted as exc:
            # Cancelled once the claim had finished: its rows are returned, not lost.
            rows, interrupted = exc.rows, True
        finally:
            claimed = sorted((int(r[0]), bytes(r[1])) for r in rows or () if r[0] is not None)
            keep = led.end_claim(token, started, [ident for ident, _ in claimed] if rows else None)
        self._deleted(len(claimed))
        if owner and len(claimed) < limit:
            watch.need_claim = False
            if listening and generation == watch.generation:
                watch.gap = False
        out = [payload for (_, payload), ok in zip(claimed, keep, strict=True) if ok]
        if interrupted and not out:
            raise asyncio.CancelledError from None  # took nothing: cancelled
        return out

    def _delete_later(self, queue: str, led: _inbox.InboxLedger, ids: list[int]) -> None:
        self._to_delete.setdefault(queue, []).extend(ids)
        task = self._deleting.get(queue)
        if task is None or task.done():
            self._deleting[queue] = asyncio.get_running_loop().create_task(
                self._delete_loop(queue, led, _DELETE_DELAY), name="layers-postgres-delete"
            )

    async def _delete_loop(self, queue: str, led: _inbox.InboxLedger, delay: float) -> None:
        """Delete the delivered rows of ``queue`` in batches until none are left."""
        failures = 0
        while True:
            if delay:
                await asyncio.sleep(delay)
            ids = self._to_delete.pop(queue, None)
            if not ids:
                return
            try:
                rows = await self._db.query(self._sql.delete_ids, (queue, ids))
            except BackendError as exc:
                failures += 1
                if failures > 5:
                    # The ids stay in the ledger: a claim skips their rows until
                    # they expire.
                    logger.warning("deleting delivered reply rows failed: %s", exc)
                    return
                self._to_delete.setdefault(queue, []).extend(ids)
                delay = min(2.0, 0.1 * 2**failures)
                continue
            led.deleted(ids, {int(r[0]) for r in rows})
            self._deleted(len(rows))

    async def flushed(self, listener: Listener, channel_of: Callable[[str], str]) -> None:
        """Drop the notes held for owned inboxes, and those sent before a new marker.

        Called after a flush: those notes announce rows the flush deleted.
        ``channel_of`` gives a queue's NOTIFY channel.
        """
        for queue, led in list(self._ledgers.items()):
            channel = channel_of(queue)
            watch = listener.peek(channel)
            if watch is None or watch.notes is None or led.owner is not self:
                continue
            token = _inbox.new_token()
            watch.notes.clear()
            watch.gap = True
            watch.discard_until = token
            await self._db.query(self._sql.notify, (channel, f"m{token}"))

    async def aclose(self) -> None:
        """Delete what was delivered (best effort), then give up note ownership."""
        for task in list(self._deleting.values()):
            await stop(task)
        self._deleting.clear()
        for queue in list(self._to_delete):
            led = self._ledgers.get(queue)
            if led is not None and self._db.is_open:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self._delete_loop(queue, led, 0.0)
        self._to_delete.clear()
        for queue, led in self._ledgers.items():
            led.release(self)
            _inbox.drop_ledger(self._db.conninfo, self._db.settings.schema, queue, led)
        self._ledgers.clear()
