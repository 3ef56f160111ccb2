"""Two processes, one SQLite file, no server: a worker process answers requests.

Run it: ``python examples/sqlite_processes.py [path/to/file.db]``. The parent starts a
child process running :func:`worker`, sends it three requests, each with a reply
channel, prints the answers, and tells the worker to stop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile

import layers


async def worker(url: str) -> None:
    """Answer ``{"n": n, "reply": channel}`` with ``{"square": n * n}`` until told to stop."""
    async with layers.from_url(url) as layer:
        print("ready", flush=True)
        while True:
            request = await layer.receive("squares")
            if request["type"] == "stop":
                return
            await layer.send(request["reply"], {"type": "answer", "square": request["n"] ** 2})


async def client(url: str) -> None:
    """Send three requests to the worker process and print its answers."""
    async with layers.from_url(url) as layer:
        reply = await layer.new_channel()
        for n in (2, 3, 4):
            await layer.send("squares", {"type": "ask", "n": n, "reply": reply})
            answer = await layer.receive(reply)
            print(f"{n} squared is {answer['square']} (answered by another process)")
        await layer.send("squares", {"type": "stop"})


def main() -> None:
    """Start the worker process on a shared file, then act as its client."""
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2]))
        return
    if len(sys.argv) > 1:
        run(sys.argv[1])
        return
    with tempfile.TemporaryDirectory() as folder:  # removed, database and all, at the end
        run(os.path.join(folder, "demo.db"))


def run(path: str) -> None:
    """Run the worker process and the client on the database file ``path``."""
    url = f"sqlite:///{os.path.abspath(path)}"  # an absolute path gives sqlite:////...
    child = subprocess.Popen(
        [sys.executable, __file__, "--worker", url], stdout=subprocess.PIPE, text=True
    )
    with child:
        if child.stdout is not None:
            child.stdout.readline()  # "ready": the worker has opened the file
        asyncio.run(client(url))
        child.wait(timeout=30)


if __name__ == "__main__":
    main()
