"""Tier 1: the interface server with real HTTP (httpx) and WebSocket (websockets) clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from layers.backends.memory import MemoryChannelLayer
from layers.conformance_tests.plugin import async_test
from layers.interface import InterfaceServer

from . import apps


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: InterfaceServer) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on a loopback port; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def tiers(**options: Any) -> InterfaceServer:
    """An interface server with a worker in the same process, on its own memory layer."""
    layer = options.pop("layer", None) or MemoryChannelLayer()
    routing = options.pop("routing", apps.channel_routing)
    return InterfaceServer(layer, routing=routing, **options)


# -- HTTP ----------------------------------------------------------------------------------


@async_test
async def test_http_request_fields_reach_the_worker_and_the_response_comes_back() -> None:
    async with serving(tiers()) as host, httpx.AsyncClient() as client:
        response = await client.post(
            f"http://{host}/some/path?x=1&y=%20", content=b"hello", headers={"X-Test": "yes"}
        )
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/some/path"
    assert seen["query_string"] == "x=1&y=%20"
    assert seen["scheme"] == "http"
    assert seen["http_version"] == "1.1"
    assert seen["client"][0] == "127.0.0.1"
    assert seen["headers"]["x-test"] == "yes"
    assert seen["headers"]["host"] == host
    assert (seen["length"], seen["chunked"]) == (5, False)


@async_test
async def test_large_request_and_response_bodies_are_chunked() -> None:
    body = os.urandom(700_000)
    async with serving(tiers(chunk_size=64 * 1024)) as host, httpx.AsyncClient() as client:
        import hashlib

        echoed = await client.post(f"http://{host}/digest", content=body)
        assert echoed.json()["length"] == len(body)
        assert echoed.json()["sha256"] == hashlib.sha256(body).hexdigest()
        assert echoed.json()["chunked"] is True

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 10_000):
                yield body[start : start + 10_000]

        big = await client.post(f"http://{host}/big", content=pieces())
    assert big.status_code == 200
    assert big.content == body[::-1]


@async_test
async def test_a_full_http_request_channel_answers_503() -> None:
    layer = MemoryChannelLayer(channel_capacity={"http.request": 1})
    await layer.send("http.request", {"filler": True})  # no worker: it stays full
    async with serving(InterfaceServer(layer, timeout=5)) as host, httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}/")
    assert response.status_code == 503
    assert "http.request channel is full" in response.text


@async_test
async def test_no_worker_reply_in_time_answers_504() -> None:
    server = InterfaceServer(MemoryChannelLayer(), timeout=0.3)
    async with serving(server) as host, httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}/")
    assert response.status_code == 504


@async_test
async def test_a_client_that_goes_away_releases_its_request() -> None:
    server = InterfaceServer(MemoryChannelLayer(), timeout=30)  # no worker will answer
    async with serving(server) as host:
        async with httpx.AsyncClient(timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"http://{host}/")
        for _ in range(100):
            if server.connections == 0:
                break
            await asyncio.sleep(0.02)
        assert server.connections == 0, "the request is still waiting for its reply"


@async_test
async def test_a_worker_that_never_reads_a_long_body_gets_504_not_a_hang(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def ignore(message: Any) -> None:
        pass  # neither reads body_channel nor answers

    server = tiers(routing={"http.request": ignore}, timeout=0.5, chunk_size=1024)
    async with serving(server) as host, httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"http://{host}/", content=os.urandom(300 * 1024))
    assert response.status_code == 504
    assert "stopped reading the body" in caplog.text


@async_test
async def test_an_asgi_application_runs_behind_the_tiers() -> None:
    async with serving(tiers(routing=apps.asgi_routing)) as host, httpx.AsyncClient() as client:
        response = await client.put(f"http://{host}/thing", content=b"12345")
    assert response.status_code == 200
    assert response.headers["x-app"] == "yes"
    assert response.text == "asgi app saw PUT /thing with 5 bytes!"


# -- WebSocket -----------------------------------------------------------------------------


@async_test
async def test_websocket_echo_order_broadcast_and_disconnect() -> None:
    apps.DISCONNECTS.clear()
    async with serving(tiers()) as host:
        async with connect(f"ws://{host}/chat") as one, connect(f"ws://{host}/chat") as two:
            for n in range(1, 4):
                await one.send(f"m{n}")
                assert json.loads(await one.recv()) == {"echo": f"m{n}", "order": n}
            await one.send(b"\x01\x02")
            assert await one.recv() == b"\x02\x01"
            await two.send("broadcast hello all")
            assert await one.recv() == "hello all"
            assert await two.recv() == "hello all"
            await two.send("close")
            with pytest.raises(ConnectionClosed) as closed:
                await two.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4001
        for _ in range(100):
            if len(apps.DISCONNECTS) == 2:
                break
            await asyncio.sleep(0.02)
    orders = sorted((d["order"], d["code"]) for d in apps.DISCONNECTS)
    assert orders == [(3, 4001), (5, 1000)], apps.DISCONNECTS
    assert {d["path"] for d in apps.DISCONNECTS} == {"/chat"}


@async_test
async def test_a_refused_websocket_is_closed_before_accept() -> None:
    async with serving(tiers()) as host:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://{host}/refuse"):
                pass
    assert refused.value.response.status_code == 403


@async_test
async def test_a_full_websocket_connect_channel_closes_with_1013() -> None:
    layer = MemoryChannelLayer(channel_capacity={"websocket.connect": 1})
    await layer.send("websocket.connect", {"filler": True})
    async with serving(InterfaceServer(layer, timeout=5)) as host:  # noqa: SIM117
        async with connect(f"ws://{host}/") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013


@async_test
async def test_a_full_websocket_receive_channel_closes_with_1013() -> None:
    layer = MemoryChannelLayer(channel_capacity={"websocket.receive": 2})
    routing = {"websocket.connect": apps.ws_connect}  # nobody reads websocket.receive
    async with serving(tiers(layer=layer, routing=routing)) as host:  # noqa: SIM117
        async with connect(f"ws://{host}/") as ws:
            for n in range(5):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(f"m{n}")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
    kept = [(await layer.receive("websocket.receive"))["order"] for _ in range(2)]
    assert kept == [1, 2]


@async_test
async def test_no_answer_to_websocket_connect_closes_the_socket() -> None:
    async with serving(InterfaceServer(MemoryChannelLayer(), timeout=0.3)) as host:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://{host}/"):
                pass
    assert refused.value.response.status_code == 403
