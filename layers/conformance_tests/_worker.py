"""A helper process for the multi-process tests: ``python -m layers.conformance_tests._worker``.

It takes one JSON argument and prints one JSON line of results:

``{"mode": "drain", "url": ..., "channel": ..., "quiet": s}``
    Prints ``ready``, then receives ``{"i": n}`` messages until none came for
    ``quiet`` seconds after a first one, and prints the list of ``n``.
``{"mode": "poll", "url": ..., "channel": ..., "seconds": s, "timeout": t}``
    Prints ``ready``, then for ``seconds`` receives with a ``timeout`` of its own
    around every call (a polling consumer), closes the layer cleanly and prints the
    list of ``n`` it received.
``{"mode": "chaos", "url": ..., "channel": ..., "role": r, "seconds": s, "seed": n}``
    Prints ``ready``, then consumes ``channel`` for ``seconds`` the way ``role``
    says (``block``: a bare receive loop; ``poll``: a random timeout around every
    receive; ``cancel``: receives cancelled at random moments; ``multi``: three
    concurrent receive loops), printing ``r N`` for every message the moment it
    arrives, then closes the layer and prints ``done``. The test may SIGKILL it.

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
import contextlib
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


async def _poll(url: str, channel: str, seconds: float, timeout: float) -> list[int]:
    got: list[int] = []
    async with from_url(url) as layer:
        print("ready", flush=True)
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout)
            except TimeoutError:
                continue
            got.append(message["i"])
    return got


async def _chaos(url: str, channel: str, role: str, seconds: float, seed: int) -> None:
    import random

    rng = random.Random(seed)
    async with from_url(url) as layer:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        def got(message: dict[str, Any]) -> None:
            print(f"r {message['i']}", flush=True)

        async def one() -> None:
            if role == "poll":
                with contextlib.suppress(TimeoutError):
                    got(await asyncio.wait_for(layer.receive(channel), rng.uniform(0.001, 0.02)))
            elif role == "cancel":
                task = asyncio.create_task(layer.receive(channel))
                await asyncio.sleep(rng.uniform(0, 0.01))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    got(await task)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, end - loop.time())):
                        got(await layer.receive(channel))

        async def run() -> None:
            while loop.time() < end:
                await one()

        await asyncio.gather(*(run() for _ in range(3 if role == "multi" else 1)))
    print("done", flush=True)


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
    elif job["mode"] == "chaos":
        asyncio.run(_chaos(job["url"], job["channel"], job["role"], job["seconds"], job["seed"]))
        return 0
    elif job["mode"] == "poll":
        result = asyncio.run(_poll(job["url"], job["channel"], job["seconds"], job["timeout"]))

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
