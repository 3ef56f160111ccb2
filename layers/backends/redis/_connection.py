"""Connections to one Redis host, opened by the backend itself on public APIs only.

A :class:`Connector` opens :class:`Connection` objects: asyncio streams
(:func:`asyncio.open_connection`, with an :class:`ssl.SSLContext` for TLS, or
:func:`asyncio.open_unix_connection`), then a RESP2 handshake written at once
(``AUTH``, ``CLIENT SETNAME``, ``CLIENT SETINFO``, ``SELECT``; one round trip).
redis-py still reads the configuration (its URL and keyword forms are the
backend's), finds a Sentinel-managed master with
:meth:`redis.asyncio.sentinel.Sentinel.discover_master`, retries connecting with its
public :class:`redis.asyncio.retry.Retry`, and gives the error classes.

Options honoured: ``host``, ``port``, ``path`` (unix socket), ``db``, ``username``,
``password``, ``credential_provider``, ``client_name``, ``lib_name``,
``lib_version``, ``socket_connect_timeout`` (else ``socket_timeout``; it bounds
connecting, TLS and the handshake), ``socket_keepalive`` (default on: idle 30 s,
5 s between 3 probes where the platform allows), ``socket_keepalive_options``,
``ssl_*`` (TLS), ``retry`` (connect attempts). The other redis-py options are
accepted without effect: replies are never decoded, no command is ever retried,
reads wait as long as their command may take, and the backend speaks RESP2.
No error, log line or repr shows a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from layers.backends.redis._resp import new_reader, pack_command

__all__ = ["ConnectOptions", "Connection", "Connector", "connect_options", "tls_context"]

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_FALSE = ("", "0", "false", "f", "n", "no", "off")


def _keepalive_defaults() -> dict[int, int]:
    """Idle 30 s, then probes 5 s apart, 3 of them: the constants the platform has."""
    wanted = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    return {getattr(socket, n): v for n, v in wanted if hasattr(socket, n)}


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach and greet one server (``repr`` shows no credential)."""

    host: str = "localhost"
    port: int = 6379
    path: str = ""  # a unix socket when set
    tls: Mapping[str, Any] | None = field(default=None, repr=False)  # ssl_* options
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    credential_provider: Any = field(default=None, repr=False)
    client_name: str | None = None
    lib_name: str | None = None
    lib_version: str | None = None
    connect_timeout: float | None = 5.0
    keepalive: bool = True
    keepalive_options: Mapping[int, Any] = field(default_factory=_keepalive_defaults)
    retry: Any = field(default=None, repr=False)  # a redis.asyncio.retry.Retry


def connect_options(kind: type, kwargs: Mapping[str, Any]) -> ConnectOptions:
    """Our options from redis-py's connection class and keyword arguments (no I/O).

    Raises ``ValueError`` (or ``TypeError``) for a value that cannot work.
    """
    timeout = kwargs.get("socket_connect_timeout")
    if timeout is None:
        timeout = kwargs.get("socket_timeout")
    tls = None
    if issubclass(kind, SSLConnection):
        tls = {k: v for k, v in kwargs.items() if k.startswith("ssl_")}
        tls_context(tls, load=False)  # check the values now
    keepalive = kwargs.get("socket_keepalive_options", _keepalive_defaults())
    return ConnectOptions(
        host=str(kwargs.get("host") or "localhost"),
        port=int(kwargs.get("port") or 6379),
        path=str(kwargs.get("path") or "") if issubclass(kind, UnixDomainSocketConnection) else "",
        tls=tls,
        db=int(kwargs.get("db") or 0),
        username=kwargs.get("username") or None,
        password=kwargs.get("password") or None,
        credential_provider=kwargs.get("credential_provider"),
        client_name=kwargs.get("client_name") or None,
        lib_name=_text(kwargs.get("lib_name")),
        lib_version=_text(kwargs.get("lib_version")),
        connect_timeout=None if timeout is None else float(timeout),
        keepalive=_flag(kwargs.get("socket_keepalive", True)),
        keepalive_options=dict(keepalive or {}),
        retry=kwargs.get("retry"),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def tls_context(options: Mapping[str, Any], *, load: bool = True) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` from redis-py's ``ssl_*`` options (verifying by default).

    ``ssl_cert_reqs`` is ``"required"`` (default), ``"optional"``, ``"none"``/``None``
    or an :class:`ssl.VerifyMode`; host names are checked unless
    ``ssl_check_hostname`` is false or nothing is verified. With ``load=False`` the
    values are checked but no file is read.
    """
    reqs = options.get("ssl_cert_reqs", "required")
    if reqs is None:
        mode = ssl.CERT_NONE
    elif isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {reqs!r}")
        mode = _CERT_REQS[reqs.lower()]
    else:
        mode = ssl.VerifyMode(reqs)
    context = ssl.create_default_context()
    context.check_hostname = mode != ssl.CERT_NONE and _flag(
        options.get("ssl_check_hostname", True)
    )
    context.verify_mode = mode
    minimum = options.get("ssl_min_version")
    if minimum is not None:
        context.minimum_version = ssl.TLSVersion(minimum)
    if options.get("ssl_ciphers"):
        context.set_ciphers(options["ssl_ciphers"])
    for flag in options.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in options.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    if not load:
        return context
    if options.get("ssl_certfile"):
        context.load_cert_chain(
            options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password")
        )
    cafile, capath = options.get("ssl_ca_certs"), options.get("ssl_ca_path")
    cadata = options.get("ssl_ca_data")
    if cafile or capath or cadata:
        context.load_verify_locations(cafile, capath, cadata)
    return context


class Connection:
    """One open connection: its streams and the reply parser the handshake used."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sentinel: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = new_reader()
        #: The master was found through Sentinel: a ``READONLY`` reply means it was demoted.
        self.sentinel = sentinel

    async def close(self) -> None:
        """Close the socket; wait (briefly) until it is closed. Never raises."""
        self.writer.close()
        with contextlib.suppress(OSError, RedisError, TimeoutError, ssl.SSLError):
            async with asyncio.timeout(2.0):
                await self.writer.wait_closed()


async def _pause(_error: BaseException) -> None:
    return None


class Connector:
    """Opens connections to one host, or to the master a Sentinel names, with retries."""

    def __init__(
        self, options: ConnectOptions, where: str, sentinel: Any = None, master_name: str = ""
    ) -> None:
        self.options = options
        self.where = where
        self.sentinel = sentinel
        self.master_name = master_name
        self._tls: ssl.SSLContext | None = None

    async def open(self) -> Connection:
        """A connected, authenticated connection on the configured database.

        Raises :class:`redis.ConnectionError` (:class:`redis.AuthenticationError`
        for refused credentials) or :class:`OSError` once the retries are spent.
        Cancellation closes the half-open connection.
        """
        retry = self.options.retry
        if retry is None:
            return await self._open_once()
        result: Connection = await retry.call_with_retry(self._open_once, _pause)
        return result

    async def _address(self) -> tuple[str, int]:
        if self.sentinel is None:
            return self.options.host, self.options.port
        host, port = await self.sentinel.discover_master(self.master_name)
        return str(host), int(port)

    async def _open_once(self) -> Connection:
        timeout = self.options.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._connect_and_greet()
        except TimeoutError as exc:
            raise RedisTimeoutError(f"no connection within {timeout} s") from exc

    async def _connect_and_greet(self) -> Connection:
        address, (reader, writer) = await self._streams()
        conn = Connection(reader, writer, self.sentinel is not None)
        try:
            self._keepalive(writer)
            await self._handshake(conn, address)
        except BaseException:
            writer.close()
            raise
        return conn

    async def _streams(self) -> tuple[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """The address (never a credential) and the open streams to it."""
        options = self.options
        if options.path:
            address = options.path
            opening = asyncio.open_unix_connection(options.path)
        else:
            host, port = await self._address()
            address = f"{host}:{port}"
            if options.tls is not None and self._tls is None:
                self._tls = tls_context(options.tls)
            opening = asyncio.open_connection(host, port, ssl=self._tls)
        try:
            return address, await opening
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to {address}: {exc}") from exc

    def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is None or self.options.path or not self.options.keepalive:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in self.options.keepalive_options.items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)

    async def _credentials(self) -> tuple[str, ...]:
        provider = self.options.credential_provider
        if provider is None:
            pair = (self.options.username, self.options.password)
            return tuple(p for p in pair if p is not None) if self.options.password else ()
        get = getattr(provider, "get_credentials_async", None)
        found = await get() if get is not None else provider.get_credentials()
        return tuple(found)

    async def _handshake(self, conn: Connection, address: str) -> None:
        """Authenticate, name the client, select the database: one write, one round trip."""
        options = self.options
        commands: list[tuple[Any, ...]] = []
        credentials = await self._credentials()
        if credentials:
            commands.append(("AUTH", *credentials))
        if options.client_name:
            commands.append(("CLIENT", "SETNAME", options.client_name))
        if options.lib_name:
            commands.append(("CLIENT", "SETINFO", "LIB-NAME", options.lib_name))
        if options.lib_version:
            commands.append(("CLIENT", "SETINFO", "LIB-VER", options.lib_version))
        if options.db:
            commands.append(("SELECT", options.db))
        if not commands:
            return
        conn.writer.write(b"".join(pack_command(command) for command in commands))
        for command in commands:
            reply = conn.parser.gets(False)
            while reply is False:
                data = await conn.reader.read(65536)
                if not data:
                    raise RedisConnectionError(f"{address} closed the connection while greeted")
                conn.parser.feed(data)
                reply = conn.parser.gets(False)
            if not isinstance(reply, ResponseError) or command[:2] == ("CLIENT", "SETINFO"):
                continue  # SETINFO is unknown before Redis 7.2: harmless
            if command[0] == "AUTH":
                raise AuthenticationError(f"{address} refused the credentials: {reply}")
            shown = " ".join(str(a) for a in command[:2])
            raise RedisConnectionError(f"{address} refused {shown}: {reply}")
