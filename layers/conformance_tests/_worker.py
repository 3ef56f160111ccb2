"""A helper process for the multi-process tests: ``python -m layers.conformance_tests._worker``.

It takes one JSON argument and prints one JSON line of results:

``{"mode": "drain", "url": ..., "channel": ..., "quiet": s}``
    Prints ``ready``, then receives ``{"i": n}`` messages until none came for
    ``quiet`` seconds after a first one, and prints the list of ``n``.
``{"mode": "send", "url": ..., "channel": ..., "count": n, "capacity": c, "first": k}``
    Connects, prints ``ready``, waits for a line on stdin, then sends ``{"i": k}`` to
    ``{"i": k + n - 1}`` all at once to a channel of capacity ``c`` and prints the list
    of ``i`` that were stored (the others raised ChannelFull).
``{"mode": "steal", "url": ..., "channel": ...}``
    Tries to receive on another process's reply channel and prints the name of
    the exception raised (or the message received), then makes a reply channel of
    its own and prints whether a message sent to it came back (``"own"``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from layers.core.config import from_url


async def _drain(url: str, channel: str, quiet: float, wait: float) -> list[int]:
    got: list[int] = []
    async with from_url(url) as layer:
        print("ready", flush=True)
        timeout = wait
        while True:
            try:
                async with asyncio.timeout(timeout):
                    message = await layer.receive(channel)
            except TimeoutError:
                return got
            got.append(message["i"])
            timeout = quiet


async def _send(url: str, channel: str, count: int, capacity: int, first: int) -> list[int]:
    from layers.core.errors import ChannelFull

    async with from_url(url, capacity=capacity) as layer:
        await layer.send(channel + "-warm", {"warm": True})  # connect before the burst
        print("ready", flush=True)
        sys.stdin.readline()

        async def one(i: int) -> int | None:
            try:
                await layer.send(channel, {"i": i})
            except ChannelFull:
                return None
            return i

        sent = await asyncio.gather(*(one(first + i) for i in range(count)))
        return [i for i in sent if i is not None]


async def _steal(url: str, channel: str) -> dict[str, Any]:
    async with from_url(url) as layer:
        result: dict[str, Any]
        try:
            async with asyncio.timeout(3):
                message = await layer.receive(channel)
        except Exception as exc:  # report any error by name
            result = {"error": type(exc).__name__}
        else:
            result = {"received": message}
        # Busy with a reply channel of its own: its inbox reader must not take others'.
        own = await layer.new_channel()
        await layer.send(own, {"own": True})
        try:
            async with asyncio.timeout(3):
                result["own"] = await layer.receive(own) == {"own": True}
        except TimeoutError:
            result["own"] = False
        return result


def main(argv: list[str]) -> int:
    """Run one worker job described by ``argv[0]`` (JSON) and print its result."""
    job = json.loads(argv[0])
    result: object
    if job["mode"] == "drain":
        result = asyncio.run(
            _drain(job["url"], job["channel"], job.get("quiet", 1.0), job.get("wait", 20.0))
        )
    elif job["mode"] == "send":
        result = asyncio.run(
            _send(job["url"], job["channel"], job["count"], job["capacity"], job.get("first", 0))
        )
    else:
        result = asyncio.run(_steal(job["url"], job["channel"]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
