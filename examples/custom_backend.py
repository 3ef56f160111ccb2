"""A complete third-party backend in one file: a dict-based store for one process.

It implements the three required primitives, declares no optional capability, and is
registered under a URL scheme. Run it: ``python examples/custom_backend.py``.
Packaged with an entry point and a ``conftest.py`` as docs/writing-a-backend.md
shows, it passes the conformance suite.
"""

import asyncio
import threading
import time
from collections import deque
from typing import Any

import layers
from layers.core.wakeups import Waiters, WaiterSignal, wait_then_claim, wake


class DictStore:
    """The queues of one layer, shared by its per-event-loop backend instances."""

    def __init__(self) -> None:
        # Event loops of one layer may run in different threads (async_to_sync):
        # every check-then-change of the queues happens under this lock.
        self.lock = threading.Lock()
        # Ordered by last write (a written queue moves to the end): the front is
        # usually the first to expire entirely, so a sweep looks at the front only.
        self.queues: dict[str, deque[tuple[float, bytes]]] = {}
        # The receives waiting on each queue, guarded by the same lock: a send pops
        # them in the step that stores the payload, then wakes them (any loop, any thread).
        self.waiters = Waiters(self.lock)

    def sweep(self, now: float) -> None:
        """Drop up to two queues whose messages all expired (called on every write)."""
        for _ in range(2):
            first = next(iter(self.queues), None)
            if first is None:
                return
            items = self.queues[first]
            # Senders may give one queue different expiries (a message can outlive the
            # one queued after it): drop from the head, the queue once nothing is left.
            while items and items[0][0] <= now:
                items.popleft()
            if items:
                return
            del self.queues[first]


class DictBackend(layers.Backend):
    """Queues in a dict of deques, shared by the per-loop instances of one layer."""

    name = "dict"
    capabilities = frozenset()  # no groups, no flush: the core refuses those calls clearly
    # receive never suspends between taking payloads and returning them (no I/O), so a
    # waiting consumer may pop for itself: cancelling it cannot lose a payload.
    instant_receive = True

    def __init__(self, store: DictStore) -> None:
        self.store = store

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        return {}

    @classmethod
    def prepare_options(cls, options: Any) -> dict[str, Any]:
        return {"store": DictStore()}  # one store per layer, shared by its event loops

    async def send(self, queue: str, payload: bytes, *, expiry: float, capacity: int) -> bool:
        now = time.monotonic()
        with self.store.lock:
            items = self.store.queues.pop(queue, None) or deque()
            self.store.queues[queue] = items  # now the most recently written
            while items and items[0][0] <= now:
                items.popleft()
            if len(items) >= capacity:  # expired messages behind a live one free places too
                live = [item for item in items if item[0] > now]
                items.clear()
                items.extend(live)
            stored = len(items) < capacity
            if stored:
                items.append((now + expiry, payload))
            waiters = self.store.waiters.pop(queue) if stored else []
            self.store.sweep(now)
        wake(waiters)
        return stored

    async def receive(self, queue: str, *, timeout: float, limit: int = 1) -> list[bytes]:
        async def claim() -> list[bytes]:
            now = time.monotonic()
            out: list[bytes] = []
            with self.store.lock:  # take and return with no await in between
                items = self.store.queues.get(queue, deque())
                while items and len(out) < limit:
                    expires_at, payload = items.popleft()
                    if expires_at > now:
                        out.append(payload)
                if not items:
                    self.store.queues.pop(queue, None)  # nothing left: no memory kept
            return out

        # Claim; while nothing comes, wait for a send's wake-up (registered before
        # each claim, so none is missed) until the timeout.
        signal = WaiterSignal(self.store.waiters, queue)
        return await wait_then_claim(claim, signal, timeout=timeout)

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
