"""A complete third-party backend in one file: a dict-based store for one process.

It implements the three required primitives, declares no optional capability, and is
registered under a URL scheme. Run it: ``python examples/custom_backend.py``.
"""

import asyncio
import time
from collections import deque

import layers


class DictBackend(layers.Backend):
    """Queues in a dict of deques, shared by the per-loop instances of one layer."""

    name = "dict"
    capabilities = frozenset()  # no groups, no flush: the core refuses those calls clearly

    def __init__(self, queues: dict[str, deque[tuple[float, bytes]]]) -> None:
        self.queues = queues

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, object]:
        return {}

    @classmethod
    def prepare_options(cls, options: dict[str, object]) -> dict[str, object]:
        return {"queues": {}}  # one store per layer, shared by its event loops

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        now = time.monotonic()
        items = self.queues.setdefault(queue, deque())
        while items and items[0][0] <= now:
            items.popleft()
        if len(items) >= capacity:
            return False
        items.append((now + expiry, payload))
        return True

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            items = self.queues.get(queue, deque())
            out = []
            while items and len(out) < limit:
                expires_at, payload = items.popleft()
                if expires_at > now:
                    out.append(payload)
            if out or now >= deadline:
                return out
            await asyncio.sleep(0.005)  # a real backend waits for a wake-up instead

    async def aclose(self) -> None:
        pass


layers.register_backend("dict", DictBackend)


async def main() -> None:
    async with layers.from_url("dict://?capacity=2") as layer:
        await layer.send("jobs", {"n": 1})
        await layer.send("jobs", {"n": 2})
        try:
            await layer.send("jobs", {"n": 3})
        except layers.ChannelFull:
            print("full, as configured")
        print(await layer.receive("jobs"), await layer.receive("jobs"))


if __name__ == "__main__":
    asyncio.run(main())
