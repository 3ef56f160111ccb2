"""Several OS processes: at-most-once across processes, reply channels stay with their process."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from layers.conformance_tests.helpers import receive_within, unique
from layers.conformance_tests.plugin import LayerFactory, async_test, requires
from layers.core.backend import Capability
from layers.core.errors import ChannelFull

pytestmark = requires(Capability.CROSS_PROCESS)


async def _spawn(job: dict[str, object]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "layers.conformance_tests._worker",
        json.dumps(job),
        stdout=asyncio.subprocess.PIPE,
    )


async def _result(proc: asyncio.subprocess.Process) -> object:
    out, _ = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line and line != "ready"]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"worker failed (exit {proc.returncode}): {out.decode()!r}")
    return json.loads(lines[-1])


def _need_url(layer_url: str | None) -> str:
    if layer_url is None:
        pytest.skip("multi-process tests need --layer-url (other processes build the layer)")
    return layer_url


@async_test
async def test_at_most_once_across_processes(
    layer_factory: LayerFactory, layer_url: str | None
) -> None:
    """Four processes read one channel: disjoint sets whose union is exactly what was sent."""
    url, channel, total = _need_url(layer_url), unique("procs"), 1000
    workers = [await _spawn({"mode": "drain", "url": url, "channel": channel}) for _ in range(4)]
    for proc in workers:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
    async with layer_factory(capacity=total) as layer:
        for i in range(total):
            while True:
                try:
                    await layer.send(channel, {"i": i})
                    break
                except ChannelFull:
                    await asyncio.sleep(0.01)
    parts = [await _result(proc) for proc in workers]
    flat = [i for part in parts for i in part]  # type: ignore[attr-defined]
    assert len(flat) == len(set(flat)), "a message reached two processes"
    assert sorted(flat) == list(range(total))
    for part in parts:
        assert part == sorted(part)  # type: ignore[call-overload]


@async_test
async def test_reply_channel_not_readable_from_another_process(
    layer_factory: LayerFactory, layer_url: str | None
) -> None:
    """Another process cannot receive on this process's reply channel (ChannelNotOwned),
    nor take its messages while it uses reply channels of its own."""
    url = _need_url(layer_url)
    async with layer_factory() as layer:
        reply = await layer.new_channel()
        await layer.send(reply, {"for": "owner"})
        result = await _result(await _spawn({"mode": "steal", "url": url, "channel": reply}))
        assert result == {"error": "ChannelNotOwned", "own": True}
        assert await receive_within(layer, reply) == {"for": "owner"}
