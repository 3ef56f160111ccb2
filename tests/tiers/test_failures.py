"""Failures across processes: a worker killed in the middle of a streamed response."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import Proc
from .test_interface import free_port
from .test_liveblog_browser import _wait_http


@pytest.mark.slow
def test_a_worker_killed_mid_stream_aborts_that_response_and_others_are_served(
    tmp_path: Path, spawn: Callable[..., Proc], start_worker: Callable[..., Proc]
) -> None:
    url = f"sqlite:///{tmp_path}/killed.db"
    routing = "tiers_app:http_routing"
    port = free_port()
    server = spawn("-m", "layers", "serve", "--url", url, "--port", str(port), "--timeout", "1")
    doomed = start_worker(url, routing)
    base = f"http://127.0.0.1:{port}"
    _wait_http(base, server)
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", f"{base}/stream") as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            assert next(chunks) == b"first chunk"
            doomed.popen.kill()  # the worker dies while the response is half sent
            with pytest.raises(httpx.RemoteProtocolError):
                for _ in chunks:
                    pass
        survivor = start_worker(url, routing)
        answer = client.get(f"{base}/ok")
        assert answer.status_code == 200
        assert answer.text == f"ok {survivor.popen.pid}"
    assert survivor.terminate() == 0
    assert "no response chunk" in server.output()
