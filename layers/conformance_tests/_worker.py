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
``{"mode": "steal", "url": ..., "channel": ...}``
    Tries to receive on another process's reply channel and prints the name of
    the exception raised (or the message received).
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


async def _steal(url: str, channel: str) -> dict[str, Any]:
    async with from_url(url) as layer:
        try:
            async with asyncio.timeout(3):
                message = await layer.receive(channel)
        except Exception as exc:  # report any error by name
            return {"error": type(exc).__name__}
        return {"received": message}


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
    else:
        result = asyncio.run(_steal(job["url"], job["channel"]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
