"""The backend's own Redis connections: the RESP2 reader, the handshake, TLS, unix, keepalive."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import InvalidResponse, MovedError, NoScriptError, ResponseError

import layers
from layers.backends.redis import _resp
from layers.backends.redis._config import parse_hosts
from layers.backends.redis._connection import tls_context
from layers.backends.redis._resp import PythonReader

from .servers import redis_cli, spare_port

pytestmark = pytest.mark.redis

#: Every RESP2 type, nested arrays and nils included, with what a reader returns.
REPLIES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", b"OK"),
    (b"+\r\n", b""),
    (b":0\r\n", 0),
    (b":-42\r\n", -42),
    (b":9223372036854775807\r\n", 9223372036854775807),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n$1\r\na\r\n:2\r\n$-1\r\n", [b"a", 2, None]),
    (
        b"*3\r\n*2\r\n*1\r\n:1\r\n*0\r\n$3\r\nxyz\r\n*2\r\n+s\r\n*-1\r\n",
        [[[1], []], b"xyz", [b"s", None]],
    ),
]
ERRORS = [
    (b"-ERR unknown command 'NOPE'\r\n", ResponseError, "ERR unknown command 'NOPE'"),
    (b"-NOSCRIPT No matching script.\r\n", NoScriptError, "No matching script."),
    (b"-MOVED 3999 127.0.0.1:6381\r\n", MovedError, "3999 127.0.0.1:6381"),
]


def _read_all(reader: Any, chunks: list[bytes]) -> list[Any]:
    out = []
    for chunk in chunks:
        reader.feed(chunk)
        while (reply := reader.gets(False)) is not False:
            out.append(reply)
    return out


def _readers() -> Iterator[Any]:
    yield PythonReader()
    if _resp.HiredisReader is not None:  # the same results as hiredis, when installed
        yield _resp.new_reader()


@pytest.mark.parametrize(("data", "expected"), REPLIES)
def test_every_reply_type_split_at_every_byte(data: bytes, expected: Any) -> None:
    for reader in _readers():
        assert _read_all(reader, [data]) == [expected]
        for cut in range(1, len(data)):
            assert _read_all(reader, [data[:cut], data[cut:]]) == [expected], cut
        assert _read_all(reader, [data[i : i + 1] for i in range(len(data))]) == [expected]


def test_a_stream_of_replies_fed_byte_by_byte_comes_out_in_order() -> None:
    stream = b"".join(data for data, _ in REPLIES) * 3
    expected = [value for _, value in REPLIES] * 3
    reader = PythonReader()
    assert _read_all(reader, [stream[i : i + 1] for i in range(len(stream))]) == expected
    assert _read_all(reader, [stream]) == expected


@pytest.mark.parametrize(("data", "kind", "text"), ERRORS)
def test_error_replies_are_values_of_redis_py_classes(data: bytes, kind: type, text: str) -> None:
    for reader in _readers():
        for cut in range(1, len(data)):
            (error,) = _read_all(reader, [data[:cut], data[cut:]])
            assert type(error) is kind
            assert str(error) == text
        # inside an array, an error is one element
        (reply,) = _read_all(reader, [b"*2\r\n" + data + b":7\r\n"])
        assert type(reply[0]) is kind
        assert reply[1] == 7


def test_a_large_array_split_in_many_reads_is_parsed_once() -> None:
    items = [bytes([65 + i % 26]) * (1000 + i) for i in range(500)]
    data = b"*500\r\n" + b"".join(b"$%d\r\n%b\r\n" % (len(i), i) for i in items)
    reader = PythonReader()
    started = time.perf_counter()
    assert _read_all(reader, [data[i : i + 1000] for i in range(0, len(data), 1000)]) == [items]
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("data", [b"?what\r\n", b":12x\r\n", b"$3\r\nabcde\r\n", b"\r\n"])
def test_malformed_replies_raise_a_protocol_error(data: bytes) -> None:
    reader = PythonReader()
    reader.feed(data)
    with pytest.raises(InvalidResponse):
        reader.gets(False)


def _send_receive(url: str) -> Any:
    async def main() -> Any:
        async with layers.from_url(url) as layer:
            await layer.send("conn.check", {"ok": 1})
            return await asyncio.wait_for(layer.receive("conn.check"), 10)

    return asyncio.run(main())


def _first_error(url: str) -> BaseException:
    async def main() -> BaseException:
        async with layers.from_url(url) as layer:
            with pytest.raises(layers.BackendError) as caught:
                await layer.send("conn.check", {"ok": 1})
            return caught.value

    return asyncio.run(main())


@pytest.fixture
def protected(spawn):  # type: ignore[no-untyped-def]
    """A private redis-server with a password for ``default`` and an ACL user ``alice``."""
    server = spawn()
    redis_cli(server.port, "ACL", "SETUSER", "alice", "on", ">al1ce-pw", "~*", "&*", "+@all")
    redis_cli(server.port, "CONFIG", "SET", "requirepass", "def4ult-pw")
    return server


def _clients_while_connected(url: str, port: int) -> str:
    """``CLIENT LIST`` while a layer on ``url`` holds its connection."""

    async def main() -> str:
        async with layers.from_url(url) as layer:
            await layer.send("conn.check", {"ok": 2})
            return _clients(port)

    return asyncio.run(main())


def _clients(port: int) -> str:
    return redis_cli(
        port, "--user", "alice", "--pass", "al1ce-pw", "--no-auth-warning", "CLIENT", "LIST"
    )


def test_password_database_and_client_name_are_set_by_the_handshake(protected) -> None:  # type: ignore[no-untyped-def]
    url = f"redis://:def4ult-pw@127.0.0.1:{protected.port}/3?client_name=hs-default"
    assert _send_receive(url) == {"ok": 1}
    keys = redis_cli(
        protected.port, "--pass", "def4ult-pw", "--no-auth-warning", "-n", "3", "DBSIZE"
    )
    assert keys == "0"  # received: the queue is gone, and it lived in database 3

    listed = _clients_while_connected(url, protected.port)
    assert any("name=hs-default" in line and " db=3 " in line for line in listed.splitlines())


def test_an_acl_user_authenticates_with_username_and_password(protected) -> None:  # type: ignore[no-untyped-def]
    url = f"redis://alice:al1ce-pw@127.0.0.1:{protected.port}/0?client_name=hs-alice"
    assert _send_receive(url) == {"ok": 1}

    listed = _clients_while_connected(url, protected.port)
    assert any("name=hs-alice" in line and "user=alice" in line for line in listed.splitlines())


@pytest.mark.parametrize("userinfo", [":wr0ng-pw", "alice:wr0ng-pw", "nobody:al1ce-pw"])
def test_refused_credentials_say_so_without_showing_them(protected, userinfo: str) -> None:  # type: ignore[no-untyped-def]
    error = _first_error(f"redis://{userinfo}@127.0.0.1:{protected.port}/0")
    text = f"{error!s} {error!r} {error.__cause__!s} {error.__cause__!r}"
    assert "invalid username-password" in text
    assert "wr0ng-pw" not in text
    assert "al1ce-pw" not in text


def test_no_password_against_a_protected_server_is_refused(protected) -> None:  # type: ignore[no-untyped-def]
    error = _first_error(f"redis://127.0.0.1:{protected.port}/0")
    assert "NOAUTH" in str(error)


def test_options_repr_shows_no_credential() -> None:
    (spec,) = parse_hosts(["redis://bob:s3cr3t-pw@10.0.0.1:6379/0"])
    connector = spec.make_connector()
    assert "s3cr3t" not in repr(connector.options)
    assert "s3cr3t" not in repr(spec)
    assert connector.options.password == "s3cr3t-pw"
    assert connector.options.username == "bob"


def test_the_connect_timeout_bounds_a_handshake_that_gets_no_reply() -> None:
    with socket.socket() as silent:  # accepts (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        error = _first_error(f"redis://:pw@127.0.0.1:{port}/0?socket_connect_timeout=0.2")
        elapsed = time.monotonic() - started
    assert elapsed < 4, f"took {elapsed:.1f} s"
    assert isinstance(error, layers.BackendUnavailable)


@pytest.mark.parametrize(("query", "expected"), [("", 1), ("&socket_keepalive=false", 0)])
def test_tcp_keepalive_is_on_unless_turned_off(shared_url: str, query: str, expected: int) -> None:
    async def main() -> int:
        async with layers.from_url(shared_url + query) as layer:
            await layer.send("conn.keepalive", {"n": 1})
            backend = await layer._state().ready()
            pipe = backend._shards[0].pipe
            sock = pipe.writer.get_extra_info("socket")
            await layer.flush()
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    assert asyncio.run(main()) == expected


def test_a_unix_socket_host_works(spawn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.sock"
    spawn("--unixsocket", str(path), "--unixsocketperm", "700")
    assert _send_receive(f"unix://{path}?db=2") == {"ok": 1}


@pytest.fixture
def tls_server(spawn, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A redis-server with TLS on a second port; a CA and a certificate for 127.0.0.1."""

    def openssl(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], check=True, capture_output=True, cwd=tmp_path, timeout=60
        )

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    )
    tls_port = spare_port()
    spawn(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(tmp_path / "server.pem"),
        "--tls-key-file",
        str(tmp_path / "server.key"),
        "--tls-ca-cert-file",
        str(tmp_path / "ca.pem"),
        "--tls-auth-clients",
        "no",
    )
    return tls_port, tmp_path / "ca.pem"


def test_tls_verifies_the_server_with_the_given_ca(tls_server) -> None:  # type: ignore[no-untyped-def]
    port, ca = tls_server
    assert _send_receive(f"rediss://127.0.0.1:{port}/1?ssl_ca_certs={ca}") == {"ok": 1}
    assert _send_receive(f"rediss://127.0.0.1:{port}/1?ssl_cert_reqs=none") == {"ok": 1}
    error = _first_error(f"rediss://127.0.0.1:{port}/1")  # the system CAs do not know it
    assert "certificate verify failed" in str(error).lower()


def test_tls_options_are_checked_when_the_layer_is_made() -> None:
    context = tls_context({"ssl_cert_reqs": None})
    assert context.verify_mode == 0
    assert not context.check_hostname
    assert tls_context({}).check_hostname
    assert not tls_context({"ssl_check_hostname": "false"}).check_hostname
    with pytest.raises(layers.ConfigurationError, match="sometimes"):
        layers.from_url("rediss://127.0.0.1:6390/0?ssl_cert_reqs=sometimes")
