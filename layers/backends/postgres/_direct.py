"""The hot statements, run on libpq directly: prepared once per connection, binary both ways.

A send and a claim are one short statement each, so what the client spends around
the statement is a large part of a round trip. Through psycopg's cursor, each
execution builds a cursor and its adapters, dumps every parameter through the
adapter map, runs the prepared-statement bookkeeping and waits through a generator:
a claim on an empty queue cost 105 µs of client CPU that way, and 62 µs here
(Python 3.11, 3,000 claims each way, interleaved). A :class:`Direct` statement keeps
its parameter types and binary encoders fixed, prepares itself once per connection,
and waits for its result with one reader callback, through the same public libpq
interface (``psycopg.pq``) that psycopg drives.

What it relies on, and what happens otherwise:

* the connection is leased to the caller alone (``Connections.lease``), idle and not
  in pipeline mode: otherwise the caller runs the statement through psycopg;
* psycopg deallocates every prepared statement of a connection after some commands
  (``DEALLOCATE ALL`` after a ``ROLLBACK``, a ``DROP``...): an execution that finds
  its statement gone (SQLSTATE 26000) prepares it again and runs once more;
* a transaction pooler keeps no prepared statement between transactions: there
  (``poll_only``) a statement is sent whole at each run, unnamed
  (:attr:`Direct.prepared` false), and everything else holds;
* a lost connection raises :class:`psycopg.OperationalError` from libpq, a failed
  statement the :mod:`psycopg.errors` class of its SQLSTATE, so error handling is the
  same as through psycopg;
* a caller cancelled while its statement runs waits for the statement to finish
  (up to :data:`DRAIN_TIMEOUT`, as psycopg does), then raises ``CancelledError``: the
  connection stays idle and reusable, and a send either happened or did not. A
  connection still busy after that goes back to the pool, which discards it. A
  caller cancelled after its prepare finished leaves that statement unrecorded, so
  "already exists" (SQLSTATE 42P05) on a later prepare counts as prepared.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import struct
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import psycopg
from psycopg import pq

__all__ = [
    "BOOL",
    "BYTEA",
    "BYTEA_ARRAY",
    "FLOAT8",
    "FLOAT8_ARRAY",
    "INT4_ARRAY",
    "INT8",
    "TEXT",
    "TEXT_ARRAY",
    "VOID",
    "Direct",
    "Interrupted",
    "NotRun",
    "direct",
    "execute",
    "execute_pipeline",
    "run_simple",
    "usable",
]

#: Type OIDs.
TEXT, BYTEA, INT8, FLOAT8, BOOL = 25, 17, 20, 701, 16
INT4, TEXT_ARRAY, INT4_ARRAY = 23, 1009, 1007
BYTEA_ARRAY, FLOAT8_ARRAY, VOID = 1001, 1022, 2278
_PACK_INT4 = struct.Struct(">i").pack
_PACK_INT8 = struct.Struct(">q").pack
_PACK_FLOAT8 = struct.Struct(">d").pack
_UNPACK_INT8 = struct.Struct(">q").unpack

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_FATAL = pq.ExecStatus.FATAL_ERROR
_PIPELINE_OFF = pq.PipelineStatus.OFF
_PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
_CONNECTION_OK = pq.ConnStatus.OK
_IDLE = pq.TransactionStatus.IDLE
_ACTIVE = pq.TransactionStatus.ACTIVE

#: How long a cancelled caller waits for its statement to finish (seconds).
DRAIN_TIMEOUT = 5.0
_SQLSTATE = pq.DiagnosticField.SQLSTATE
#: "prepared statement does not exist", "prepared statement already exists"
_NO_STATEMENT = b"26000"
_ALREADY_PREPARED = b"42P05"


def _text(value: Any) -> bytes | None:
    return None if value is None else str(value).encode()


def _bytea(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _int8(value: Any) -> bytes | None:
    return None if value is None else _PACK_INT8(int(value))


def _float8(value: Any) -> bytes | None:
    return None if value is None else _PACK_FLOAT8(float(value))


def _int4(value: Any) -> bytes | None:
    return None if value is None else _PACK_INT4(int(value))


#: A one-dimensional array's header: dimensions, has-NULLs flag, element type,
#: length, lower bound (PostgreSQL's binary array format, ``array_send``).
_PACK_ARRAY_HEADER = struct.Struct(">iiiii").pack
_PACK_EMPTY_ARRAY = struct.Struct(">iii").pack
_NULL_ELEMENT = _PACK_INT4(-1)


def _array(element: int, encode: Callable[[Any], bytes | None]) -> Callable[[Any], bytes | None]:
    """The binary encoder of a one-dimensional array of ``element`` values."""

    def encode_array(value: Any) -> bytes | None:
        if value is None:
            return None
        items = [encode(v) for v in value]
        if not items:
            return _PACK_EMPTY_ARRAY(0, 0, element)
        parts = [_PACK_ARRAY_HEADER(1, int(None in items), element, len(items), 1)]
        for item in items:
            if item is None:
                parts.append(_NULL_ELEMENT)
            else:
                parts.append(_PACK_INT4(len(item)))
                parts.append(item)
        return b"".join(parts)

    return encode_array


def _read_int8(value: bytes) -> int:
    return int(_UNPACK_INT8(value)[0])


def _read_bool(value: bytes) -> bool:
    return value == b"\x01"


_ENCODERS: dict[int, Callable[[Any], bytes | None]] = {
    TEXT: _text,
    BYTEA: _bytea,
    INT8: _int8,
    FLOAT8: _float8,
    TEXT_ARRAY: _array(TEXT, _text),
    INT4_ARRAY: _array(INT4, _int4),
    BYTEA_ARRAY: _array(BYTEA, _bytea),
    FLOAT8_ARRAY: _array(FLOAT8, _float8),
}
_DECODERS: dict[int, Callable[[bytes], Any]] = {
    TEXT: bytes.decode,
    BYTEA: bytes,
    INT8: _read_int8,
    BOOL: _read_bool,
    VOID: lambda value: None,
}

_PLACEHOLDER = re.compile(rb"%\((\w+)\)[sb]")


@dataclass(frozen=True, slots=True)
class Direct:
    """One hot statement: its psycopg text, its libpq text, and how to code its values."""

    #: The statement as psycopg runs it (``%(name)s`` placeholders).
    query: bytes
    #: The prepared statement's name on the server (from a hash of its text).
    name: bytes
    #: The statement with ``$n`` placeholders.
    text: bytes
    #: The parameters' names, in ``$n`` order, and their type OIDs.
    params: tuple[str, ...]
    types: tuple[int, ...]
    #: The result columns' type OIDs.
    columns: tuple[int, ...]
    #: It removes rows and returns them (a claim): cancelled once it has finished, it
    #: raises :class:`Interrupted` with them instead of a bare ``CancelledError``.
    claims: bool = False
    #: Its caller must learn, even when cancelled, whether it ran (a restore): then it
    #: raises :class:`Interrupted` once it committed, :class:`NotRun` when it did
    #: nothing (cancelled before it was sent, or it failed), and a bare
    #: ``CancelledError`` only when that is unknown (the connection did not answer).
    settles: bool = False
    #: Prepared once per connection and run by name; else sent whole at each run as an
    #: unnamed statement, which a transaction pooler (``poll_only``) allows: it keeps
    #: no prepared statement between transactions.
    prepared: bool = True

    def values(self, params: Mapping[str, Any]) -> list[bytes | None]:
        """Encode named parameters for libpq, in ``$n`` order, binary."""
        return [
            _ENCODERS[oid](params[name]) for name, oid in zip(self.params, self.types, strict=True)
        ]

    def rows(self, result: pq.abc.PGresult) -> list[tuple[Any, ...]]:
        """Decode a binary result (NULL stays None)."""
        decoders = [_DECODERS[oid] for oid in self.columns]
        rows: list[tuple[Any, ...]] = []
        for i in range(result.ntuples):
            row = []
            for j, decode in enumerate(decoders):
                value = result.get_value(i, j)
                row.append(None if value is None else decode(value))
            rows.append(tuple(row))
        return rows


def direct(
    query: bytes,
    types: Mapping[str, int],
    columns: Sequence[int],
    *,
    claims: bool = False,
    settles: bool = False,
    prepared: bool = True,
) -> Direct:
    """Describe ``query`` (psycopg's ``%(name)s`` style) for direct execution.

    ``types`` gives each parameter's type OID; ``columns`` the result's; ``claims``,
    ``settles`` and ``prepared``: see :attr:`Direct.claims`, :attr:`Direct.settles`
    and :attr:`Direct.prepared`.
    """
    names: list[str] = []

    def number(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode()
        if name not in names:
            names.append(name)
        return b"$%d" % (names.index(name) + 1)

    if b"%%" in query:
        raise ValueError("a direct statement cannot hold an escaped %")
    text = _PLACEHOLDER.sub(number, query)
    digest = hashlib.sha256(text).hexdigest()[:20]
    return Direct(
        query=query,
        name=f"_layers_{digest}".encode(),
        text=text,
        params=tuple(names),
        types=tuple(types[name] for name in names),
        columns=tuple(columns),
        claims=claims,
        settles=settles,
        prepared=prepared,
    )


#: Which direct statements each connection has prepared.
_prepared: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()


def usable(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``conn`` can run a direct statement now (idle, healthy, no pipeline)."""
    pgconn = conn.pgconn
    return (
        pgconn.status == _CONNECTION_OK
        and pgconn.transaction_status == _IDLE
        and pgconn.pipeline_status == _PIPELINE_OFF
    )


async def execute(
    conn: psycopg.AsyncConnection[Any], statement: Direct, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Run ``statement`` on ``conn`` (see :func:`usable`) and return its rows.

    Raises what psycopg would: :class:`psycopg.OperationalError` for a lost
    connection, the :mod:`psycopg.errors` class of a failed statement's SQLSTATE.
    """
    pgconn = conn.pgconn
    values = statement.values(params)
    for attempt in (0, 1):
        if statement.prepared:
            names = _prepared.get(pgconn)
            if names is None:
                names = _prepared[pgconn] = set()
            if statement.name not in names:
                try:
                    await _prepare(pgconn, statement, names)
                except asyncio.CancelledError:
                    if statement.settles:
                        raise NotRun from None  # the statement itself was never sent
                    raise
        _send(pgconn, statement, values)
        try:
            results = await _complete(pgconn, keep=True)
        except _Drained as drained:
            reports = statement.claims or statement.settles
            ran = bool(drained.results) and _failure(drained.results) is None
            if reports and ran:
                raise Interrupted(statement.rows(drained.results[0])) from None
            if statement.settles and drained.results and not ran:
                raise NotRun from None  # it failed: the server rolled it back
            raise asyncio.CancelledError from None
        failed = _failure(results)
        if failed is None:
            return statement.rows(results[0]) if results else []
        if attempt == 0 and statement.prepared and failed.error_field(_SQLSTATE) == _NO_STATEMENT:
            _prepared[pgconn].discard(statement.name)  # deallocated: prepare again
            continue
        _raise(failed)
    raise AssertionError("unreachable")  # pragma: no cover


def _send(pgconn: pq.abc.PGconn, statement: Direct, values: list[bytes | None]) -> None:
    """Send one execution of ``statement``: by name if prepared, else whole, unnamed."""
    formats = [1] * len(values)
    if statement.prepared:
        pgconn.send_query_prepared(statement.name, values, param_formats=formats, result_format=1)
    else:
        pgconn.send_query_params(
            statement.text,
            values,
            param_types=statement.types,
            param_formats=formats,
            result_format=1,
        )


async def run_simple(conn: psycopg.AsyncConnection[Any], query: bytes) -> None:
    """Run ``query`` (no parameters, no rows wanted) on ``conn``, idle (see :func:`usable`).

    Cancelled, it lets the statement finish (as :func:`execute` does), so the server
    is not asked to cancel it and the connection stays usable; a connection that is
    not idle runs it through psycopg. Raises as :func:`execute` does.
    """
    if not usable(conn):
        await conn.execute(query)
        return
    pgconn = conn.pgconn
    pgconn.send_query(query)
    failed = _failure(await _complete(pgconn))
    if failed is not None:
        _raise(failed)


async def _prepare(pgconn: pq.abc.PGconn, statement: Direct, names: set[bytes]) -> None:
    """Prepare ``statement`` on the connection and record it in ``names``."""
    pgconn.send_prepare(statement.name, statement.text, param_types=statement.types)
    prepared = await _complete(pgconn)
    failed = _failure(prepared)
    # Already there: a caller cancelled just after its prepare completed left
    # the connection idle (so back in use) with the statement unrecorded. The
    # name is a hash of the text, so the statement there is this one.
    if failed is not None and failed.error_field(_SQLSTATE) != _ALREADY_PREPARED:
        _raise(failed)
    names.add(statement.name)


async def execute_pipeline(
    conn: psycopg.AsyncConnection[Any], steps: Sequence[tuple[Direct, Mapping[str, Any]]]
) -> list[list[tuple[Any, ...]]]:
    """Run ``steps`` in one pipeline and return each one's rows.

    One network write and one Sync: the statements run in one implicit transaction,
    each seeing what the ones before it did, and all commit or none does. A failed
    statement raises as :func:`execute` does, after the server rolled everything back.
    Cancelled while they run, it reads them to the end (up to :data:`DRAIN_TIMEOUT`)
    and raises :class:`Interrupted` holding every step's rows when they committed,
    else ``CancelledError``.
    """
    pgconn = conn.pgconn
    for attempt in (0, 1):
        names = _prepared.get(pgconn)
        if names is None:
            names = _prepared[pgconn] = set()
        for statement, _ in steps:
            if statement.prepared and statement.name not in names:
                await _prepare(pgconn, statement, names)
        pgconn.enter_pipeline_mode()
        try:
            for statement, params in steps:
                _send(pgconn, statement, statement.values(params))
            pgconn.pipeline_sync()
            reading = _Reading()
            groups = reading.groups
            try:
                await _read_until_sync(pgconn, reading)
            except asyncio.CancelledError:
                drained = await _drain_pipeline(pgconn, reading)
                claims = any(statement.claims for statement, _ in steps)
                if claims and drained and all(_failure(g) is None for g in groups):
                    raise Interrupted(_rows_of(steps, groups)) from None
                raise asyncio.CancelledError from None
        finally:
            if pgconn.pipeline_status != _PIPELINE_OFF and not pgconn.is_busy():
                with contextlib.suppress(Exception):
                    pgconn.exit_pipeline_mode()
        failed = next((f for g in groups if (f := _failure(g)) is not None), None)
        if failed is None:
            return _rows_of(steps, groups)
        if attempt == 0 and failed.error_field(_SQLSTATE) == _NO_STATEMENT:
            names.clear()  # deallocated (DEALLOCATE ALL): prepare them again
            continue
        _raise(failed)
    raise AssertionError("unreachable")  # pragma: no cover


def _rows_of(
    steps: Sequence[tuple[Direct, Mapping[str, Any]]], groups: list[list[pq.abc.PGresult]]
) -> list[list[tuple[Any, ...]]]:
    return [
        statement.rows(group[0]) if group else []
        for (statement, _), group in zip(steps, groups, strict=False)
    ]


@dataclass(slots=True)
class _Reading:
    """How far the results of one pipeline have been read (kept across a cancellation)."""

    #: Each finished statement's results, in order.
    groups: list[list[pq.abc.PGresult]] = field(default_factory=list)
    #: The results of the statement being read.
    current: list[pq.abc.PGresult] = field(default_factory=list)
    #: The Sync was read: every result is in ``groups``.
    synced: bool = False


async def _drain_pipeline(pgconn: pq.abc.PGconn, reading: _Reading) -> bool:
    """Read a cancelled pipeline to its Sync; True if every result came."""
    if reading.synced:
        return True  # read to the end just before the cancellation was delivered
    with contextlib.suppress(Exception, asyncio.CancelledError):
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await _read_until_sync(pgconn, reading)
            return True
    return False


async def _read_until_sync(pgconn: pq.abc.PGconn, reading: _Reading) -> None:
    """Flush, then read a pipeline's results into ``reading`` until its Sync.

    Safe to call again after a cancellation, with the same ``reading``: it goes on
    from where it stopped.
    """
    if reading.synced:
        return
    groups, current = reading.groups, reading.current

    def take(result: pq.abc.PGresult | None) -> bool | None:
        if result is None:
            if current:  # a statement's results ended
                groups.append(list(current))
                current.clear()
                return False
            return None  # nothing more for now
        if result.status == _PIPELINE_SYNC:
            reading.synced = True
            return True
        current.append(result)
        return False

    await _read(pgconn, take, buffered=True)


def _failure(results: list[pq.abc.PGresult]) -> pq.abc.PGresult | None:
    for result in results:
        if result.status not in _OK:
            return result
    return None


def _raise(failed: pq.abc.PGresult) -> NoReturn:
    """Raise what psycopg would for ``failed``: the class of its SQLSTATE."""
    message = failed.error_message.decode(errors="replace").strip() or "statement failed"
    if failed.status != _FATAL:
        raise psycopg.DatabaseError(message)
    sqlstate = failed.error_field(_SQLSTATE)
    error: type[psycopg.Error] = psycopg.DatabaseError
    if sqlstate:
        with contextlib.suppress(KeyError):
            error = psycopg.errors.lookup(sqlstate.decode())
    raise error(message)


class Interrupted(asyncio.CancelledError):
    """A statement's caller was cancelled, and the statement then finished: its ``rows``.

    Raised by :func:`execute` (``rows``: the statement's rows) and
    :func:`execute_pipeline` (``rows``: each step's rows) so that a claim cancelled
    mid-flight hands over the rows it took instead of losing them. Anything that does
    not look for it treats it as the cancellation it is.
    """

    def __init__(self, rows: Any) -> None:
        super().__init__()
        self.rows = rows


class NotRun(asyncio.CancelledError):
    """A :attr:`~Direct.settles` statement's caller was cancelled, and it did nothing.

    Raised by :func:`execute` when the cancellation came before the statement was
    sent, or the statement then failed (the server rolled it back).
    """


class _Drained(asyncio.CancelledError):
    """Cancelled, then the statement was read to its end: every result (internal)."""

    def __init__(self, results: list[pq.abc.PGresult]) -> None:
        super().__init__()
        self.results = results


async def _complete(pgconn: pq.abc.PGconn, *, keep: bool = False) -> list[pq.abc.PGresult]:
    """The results of the statement sent; a cancelled caller lets it finish first.

    Cancelled, it reads the statement's results to the end (so the connection stays
    idle) and raises ``CancelledError``; with ``keep``, :class:`_Drained` holding the
    results when it could read them all.
    """
    results: list[pq.abc.PGresult] = []
    try:
        await _results(pgconn, results)
        return results
    except asyncio.CancelledError:
        finished = pgconn.transaction_status != _ACTIVE
        if not finished:
            # Read the statement's results to the end so the connection stays idle
            # (psycopg cancels the query on the server, then does the same).
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await _results(pgconn, results)
                    finished = True
        if keep and finished:
            raise _Drained(results) from None
        raise


async def _results(pgconn: pq.abc.PGconn, results: list[pq.abc.PGresult]) -> None:
    """Send what is queued, then read every result of the statement into ``results``."""

    def take(result: pq.abc.PGresult | None) -> bool:
        if result is None:
            return True  # the statement's results ended
        results.append(result)
        return False

    await _read(pgconn, take)


async def _read(
    pgconn: pq.abc.PGconn,
    take: Callable[[pq.abc.PGresult | None], bool | None],
    *,
    buffered: bool = False,
) -> None:
    """Send what is queued, then hand each result libpq parses to ``take``, until it is done.

    ``take`` gets each result, or None where one statement's results end, and answers
    True (done), False (go on) or None (nothing more until the socket is readable).
    ``buffered``: libpq may already hold results (a read resumed after a
    cancellation), so look before waiting. A lost connection raises libpq's
    :class:`psycopg.OperationalError`.
    """
    loop = asyncio.get_running_loop()
    fd = pgconn.socket
    while pgconn.flush():  # 1: more to send, when the socket has room
        await _writable(loop, fd)
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                step = take(pgconn.get_result())
                if step is None:
                    return
                if step:
                    if not done.done():
                        done.set_result(None)
                    return
        except Exception as exc:  # a lost connection: OperationalError
            if not done.done():
                done.set_exception(exc)

    loop.add_reader(fd, readable)
    try:
        if buffered:
            readable()
        await done
    finally:
        loop.remove_reader(fd)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
