"""A child process for the SQLite multi-process tests: ``python _worker.py JSON``.

Modes: ``produce`` (wait for a start file, then send ``count`` messages), ``drain``
(the conformance suite's own drain worker, :mod:`layers.conformance_tests._worker`,
here with the choice of SQLite's pre-3.35 take) and ``echo`` (answer requests on a
channel until told to stop).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any


async def _produce(job: dict[str, Any]) -> None:
    from layers.backends.sqlite import SqliteChannelLayer

    async with SqliteChannelLayer(path=job["path"], capacity=10_000) as layer:
        for i in range(job["start"], job["start"] + job["count"]):
            await layer.send(job["channel"], {"i": i})
    print(json.dumps("done"), flush=True)


def _drain(job: dict[str, Any]) -> None:
    from layers.backends.sqlite import backend as backend_module
    from layers.conformance_tests import _worker as suite_worker

    if job.get("fallback"):
        backend_module.HAS_RETURNING = False  # the pre-3.35 take: BEGIN IMMEDIATE, SELECT, DELETE
    url = f"sqlite:///{job['path']}"
    suite_worker.main([json.dumps({"mode": "drain", "url": url, "channel": job["channel"]})])


async def _echo(job: dict[str, Any]) -> None:
    from layers.backends.sqlite import SqliteChannelLayer

    async with SqliteChannelLayer(path=job["path"]) as layer:
        await layer.group_add("ready", "ready")
        print("ready", flush=True)
        while True:
            message = await layer.receive(job["channel"])
            if message.get("stop"):
                break
            await layer.send(message["reply"], {"n": message["n"]})
    print(json.dumps("stopped"), flush=True)


def main() -> None:
    """Run the job given as JSON in argv[1]."""
    job = json.loads(sys.argv[1])
    while "go" in job and not os.path.exists(job["go"]):  # start all producers at once
        time.sleep(0.001)
    if job["mode"] == "drain":
        _drain(job)
        return
    modes = {"produce": _produce, "echo": _echo}
    asyncio.run(modes[job["mode"]](job))


if __name__ == "__main__":
    main()
