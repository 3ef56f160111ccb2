"""Reply-inbox delivery from NOTIFY payloads: the notes, and the ledger that keeps it once.

An inbox (the queue of one process's reply channels, ``prefix.ID!``) has one reader:
the process that made it. A send to an inbox stores its row *and*, when the payload
is small enough, carries it in the NOTIFY (``p<id>:<base64>``), so the reader can
deliver without a round trip. The row stays the durable copy: the reader deletes the
rows it delivered in batches, and a claim (after a reconnect, at start, for a large
message, or the periodic poll) skips the ids already delivered.

Notes (what the listener queues for an inbox, in the server's commit order)
    * ``(id, payload)``: a message carried in its NOTIFY;
    * ``(CLAIM, None)``: a message that did not fit (or a sender that sent none):
      the reader must claim from the table before it delivers any later note;
    * ``(MARKER, token)``: the commit of a claim (or a flush) of this process. Every
      note of a row committed before that claim precedes it.

The ledger (one per inbox and process, shared by the event loops of the layer)
    * ``delivered``: ids handed out from notes whose rows may still exist: a claim
      that returns one skips it. An id leaves when a delete or a claim removed the
      row; when something else removed it (expiry cleanup, flush), it leaves as soon
      as no claim of this process is in flight, since then none can return it.
    * ``claimed``: ids handed out by claims whose marker the owner has not reached
      in its notes yet: a note for one of them is dropped. The marker of claim *T*
      releases *T*'s ids and those of every claim that completed before *T* started
      (its marker, if ever sent to the owner, came before *T*'s).

Only one backend instance per process, the *owner*, delivers from notes (a second
event loop of the same layer claims from the table instead), so there is one
stream of notes whose order the markers refer to.
"""

from __future__ import annotations

import binascii
import itertools
import threading
from collections import OrderedDict, deque
from typing import Final

__all__ = [
    "CLAIM",
    "MARKER",
    "MAX_NOTE_PAYLOAD",
    "InboxLedger",
    "Notes",
    "ledger",
    "new_token",
    "parse_note",
]

#: The largest payload (bytes) carried in a NOTIFY: base64 with PostgreSQL's line
#: breaks (4/3 plus one byte per 76) plus ``p`` + id + ``:`` stays under 8,000 bytes.
MAX_NOTE_PAYLOAD: Final = 5600
#: How many notes an inbox queues before it drops them all and claims instead.
MAX_NOTES: Final = 2048

CLAIM: Final = -1
MARKER: Final = -2

Note = tuple[int, bytes | int | None]
Notes = deque[Note]

_tokens = itertools.count(1)
_tokens_lock = threading.Lock()


def new_token() -> int:
    """A process-wide unique marker token."""
    with _tokens_lock:
        return next(_tokens)


def parse_note(payload: str) -> Note:
    """Turn a NOTIFY payload of an inbox channel into a note."""
    if not payload:
        return (CLAIM, None)
    kind = payload[0]
    try:
        if kind == "p":
            colon = payload.index(":")
            return (int(payload[1:colon]), binascii.a2b_base64(payload[colon + 1 :]))
        if kind == "m":
            return (MARKER, int(payload[1:]))
    except (ValueError, binascii.Error):
        pass
    return (CLAIM, None)  # unknown: be safe, read the table


class InboxLedger:
    """What one process delivered from one inbox (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: object | None = None
        self.delivered: set[int] = set()
        self.orphans: set[int] = set()
        self.in_flight = 0
        self.completed = 0  # claims completed so far (their sequence numbers)
        # token -> (completion number, number completed when it started, ids)
        self.claims: OrderedDict[int, tuple[int, int, list[int]]] = OrderedDict()
        self.claimed: dict[int, int] = {}  # id -> token

    # -- ownership -------------------------------------------------------------------

    def acquire(self, owner: object) -> bool:
        """Make ``owner`` the note reader unless another instance is; True if it is."""
        with self.lock:
            if self.owner is None:
                self.owner = owner
            return self.owner is owner

    def release(self, owner: object) -> None:
        """``owner`` stops reading notes (its loop or layer closes).

        The pending claim records go too: a claim that completed before a later
        owner LISTENs claimed only rows committed before that LISTEN, whose notes
        that owner never receives.
        """
        with self.lock:
            if self.owner is owner:
                self.owner = None
                self.claims.clear()
                self.claimed.clear()

    # -- deliveries ------------------------------------------------------------------

    def take_note(self, ident: int) -> bool:
        """The owner found note ``ident``: True to deliver it (never twice)."""
        with self.lock:
            if ident in self.claimed or ident in self.delivered:
                return False
            self.delivered.add(ident)
            return True

    def begin_claim(self) -> int:
        """A claim is about to run; return the completion count it started at."""
        with self.lock:
            self.in_flight += 1
            return self.completed

    def end_claim(self, token: int, started: int, ids: list[int] | None) -> list[bool]:
        """A claim returned ``ids`` (None: it failed); return which to deliver."""
        with self.lock:
            self.in_flight -= 1
            keep: list[bool] = []
            fresh: list[int] = []
            for ident in ids or ():
                if ident in self.delivered:
                    self.delivered.discard(ident)
                    self.orphans.discard(ident)
                    keep.append(False)
                else:
                    keep.append(True)
                    fresh.append(ident)
            if fresh and self.owner is not None:
                self.completed += 1
                self.claims[token] = (self.completed, started, fresh)
                for ident in fresh:
                    self.claimed[ident] = token
            if not self.in_flight and self.orphans:
                self.delivered.difference_update(self.orphans)
                self.orphans.clear()
            return keep

    def marker(self, token: int) -> None:
        """The owner reached the marker of claim ``token`` in its notes."""
        with self.lock:
            entry = self.claims.pop(token, None)
            if entry is None:
                return
            self._forget(entry[2])
            started = entry[1]
            while self.claims:
                first = next(iter(self.claims))
                done, _, ids = self.claims[first]
                if done > started:
                    break
                del self.claims[first]
                self._forget(ids)

    def _forget(self, ids: list[int]) -> None:
        for ident in ids:
            self.claimed.pop(ident, None)

    def deleted(self, requested: list[int], removed: set[int]) -> None:
        """A delete of delivered ids ``requested`` removed the rows ``removed``."""
        with self.lock:
            for ident in requested:
                if ident in removed or not self.in_flight:
                    self.delivered.discard(ident)
                elif ident in self.delivered:
                    # Gone already: a claim in flight may return it; skip it then.
                    self.orphans.add(ident)


_ledgers: dict[tuple[str, str, str], InboxLedger] = {}
_ledgers_lock = threading.Lock()


def ledger(conninfo: str, schema: str, queue: str) -> InboxLedger:
    """The process-wide ledger of inbox ``queue`` in ``schema`` on ``conninfo``."""
    key = (conninfo, schema, queue)
    with _ledgers_lock:
        found = _ledgers.get(key)
        if found is None:
            found = _ledgers[key] = InboxLedger()
        return found


def drop_ledger(conninfo: str, schema: str, queue: str, led: InboxLedger) -> None:
    """Forget ``led`` when nothing refers to it any more (no owner, nothing pending)."""
    key = (conninfo, schema, queue)
    with _ledgers_lock, led.lock:
        if (
            _ledgers.get(key) is led
            and led.owner is None
            and not led.delivered
            and not led.in_flight
            and not led.claims
        ):
            del _ledgers[key]
