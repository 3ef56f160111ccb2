"""The wake-up helpers a backend's receive is built on: no missed wake-up, nothing left behind."""

from __future__ import annotations

import asyncio
import threading
import time

from layers.core.wakeups import (
    EventSignal,
    Waiter,
    Waiters,
    WaiterSignal,
    cancel_requested,
    outlast,
    wait_then_claim,
    wake,
)


class Store:
    """A queue of ints with the waiter bookkeeping of a real in-process store."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[int] = []
        self.waiters = Waiters(self.lock)
        self.claims = 0

    def put(self, item: int) -> None:
        with self.lock:
            self.items.append(item)
            woken = self.waiters.pop("q")
        wake(woken)

    async def claim(self) -> list[int]:
        self.claims += 1
        with self.lock:
            out, self.items = self.items, []
        return out


def test_a_hit_returns_the_first_claim_and_leaves_no_waiter() -> None:
    async def main() -> None:
        store = Store()
        store.put(1)
        signal = WaiterSignal(store.waiters, "q")
        assert await wait_then_claim(store.claim, signal, timeout=5) == [1]
        assert store.claims == 1
        assert not store.waiters

    asyncio.run(main())


def test_a_send_landing_right_after_an_empty_claim_is_not_missed() -> None:
    async def main() -> None:
        store = Store()

        async def claim() -> list[int]:
            got = await store.claim()
            if store.claims == 1:
                store.put(7)  # after the claim looked, before the wait
            return got

        started = time.monotonic()
        signal = WaiterSignal(store.waiters, "q")
        assert await wait_then_claim(claim, signal, timeout=5) == [7]
        assert time.monotonic() - started < 1
        assert not store.waiters

    asyncio.run(main())


def test_a_timeout_returns_nothing_and_leaves_no_waiter() -> None:
    async def main() -> None:
        store = Store()
        signal = WaiterSignal(store.waiters, "q")
        assert await wait_then_claim(store.claim, signal, timeout=0.05) == []
        assert not store.waiters
        assert await wait_then_claim(store.claim, signal, timeout=0) == []
        assert store.claims == 2

    asyncio.run(main())


def test_cancelling_a_waiting_call_removes_its_waiter_and_takes_nothing() -> None:
    async def main() -> None:
        store = Store()
        task = asyncio.create_task(
            wait_then_claim(store.claim, WaiterSignal(store.waiters, "q"), timeout=30)
        )
        await asyncio.sleep(0.05)
        with store.lock:
            assert store.waiters.queues() == ["q"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        assert not store.waiters
        store.put(3)
        assert store.items == [3]

    asyncio.run(main())


def test_a_send_from_another_thread_wakes_a_waiter_in_its_own_loop() -> None:
    async def main() -> None:
        store = Store()
        task = asyncio.create_task(
            wait_then_claim(store.claim, WaiterSignal(store.waiters, "q"), timeout=30)
        )
        await asyncio.sleep(0.05)
        sender = threading.Thread(target=asyncio.run, args=(_put(store, 9),))
        sender.start()
        assert await asyncio.wait_for(task, 5) == [9]
        sender.join()

    asyncio.run(main())


async def _put(store: Store, item: int) -> None:
    store.put(item)


def test_poll_bounds_each_wait_when_no_wake_up_comes() -> None:
    async def main() -> None:
        store = Store()

        async def claim() -> list[int]:
            got = await store.claim()
            return got or ([5] if store.claims == 3 else [])

        started = time.monotonic()
        got = await wait_then_claim(claim, EventSignal(asyncio.Event()), timeout=5, poll=0.02)
        assert got == [5]
        assert time.monotonic() - started < 1

    asyncio.run(main())


def test_an_event_signal_counts_only_wake_ups_after_it_was_armed() -> None:
    async def main() -> None:
        event = asyncio.Event()
        event.set()  # a stale wake-up from before this call
        store = Store()
        started = time.monotonic()
        assert await wait_then_claim(store.claim, EventSignal(event), timeout=0.1) == []
        assert time.monotonic() - started >= 0.09

    asyncio.run(main())


def test_an_event_signal_consumes_the_wake_up_it_reports() -> None:
    """A wake-up answered by the claim after it does not stay set for later readers
    of the event (PostgreSQL's next receive waits first only on a clear event)."""

    async def main() -> None:
        event = asyncio.Event()
        store = Store()

        async def notify() -> None:
            await asyncio.sleep(0.02)
            store.put(7)  # stored, then notified, as a NOTIFY follows its commit
            event.set()

        notifier = asyncio.create_task(notify())
        assert await wait_then_claim(store.claim, EventSignal(event), timeout=5) == [7]
        await notifier
        assert not event.is_set()

    asyncio.run(main())


def test_discarding_a_waiter_twice_is_harmless() -> None:
    async def main() -> None:
        waiters = Waiters()
        waiter = waiters.add("q", asyncio.get_running_loop())
        waiters.discard("q", waiter)
        waiters.discard("q", waiter)
        assert not waiters

    asyncio.run(main())


def test_a_send_during_the_claim_after_a_wake_up_is_not_missed() -> None:
    """Woken, but a thief took the payload; another send lands during the next claim."""

    async def main() -> None:
        store = Store()

        async def claim() -> list[int]:
            got = await store.claim()
            if store.claims == 2:  # the claim right after the wake-up
                got = []  # the thief's
                store.put(8)  # lands after this claim looked, before any re-arm
            return got

        async def send_later() -> None:
            await asyncio.sleep(0.05)
            store.put(1)

        sender = asyncio.ensure_future(send_later())
        started = time.monotonic()
        signal = WaiterSignal(store.waiters, "q")
        assert await wait_then_claim(claim, signal, timeout=5) == [8]
        assert time.monotonic() - started < 1
        assert not store.waiters
        await sender

    asyncio.run(main())


def test_a_woken_wait_claims_before_registering_again() -> None:
    """After a wake-up the payload is usually there: one claim, no new registration."""

    async def main() -> None:
        store = Store()
        registered = 0

        class CountingWaiters(Waiters):
            def add(self, queue: str, loop: asyncio.AbstractEventLoop) -> Waiter:
                nonlocal registered
                registered += 1
                return super().add(queue, loop)

        store.waiters = CountingWaiters(store.lock)
        asyncio.get_running_loop().call_later(0.05, store.put, 3)
        assert await wait_then_claim(store.claim, WaiterSignal(store.waiters, "q"), timeout=5) == [
            3
        ]
        assert (store.claims, registered) == (2, 1)
        assert not store.waiters

    asyncio.run(main())


def test_polls_leave_one_registration_at_most() -> None:
    """Each poll that times out replaces its registration; none is left at the end."""

    async def main() -> None:
        store = Store()
        most = 0

        # Count the registrations at each claim, leaving them as they were.
        async def counting_claim() -> list[int]:
            nonlocal most
            with store.lock:
                waiting = store.waiters.pop("q")
                most = max(most, len(waiting))
                for waiter in waiting:  # put them back as they were
                    store.waiters._by_queue.setdefault("q", []).append(waiter)
            return await store.claim()

        got = await wait_then_claim(
            counting_claim, WaiterSignal(store.waiters, "q"), timeout=0.2, poll=0.01
        )
        assert got == []
        assert 10 <= store.claims <= 25  # one claim per poll, no busy loop
        assert most == 1
        assert not store.waiters

    asyncio.run(main())


def test_a_wake_up_whose_payload_was_stolen_waits_quietly_again() -> None:
    """Woken, the payload gone to another consumer: register again and wait, no spinning."""

    async def main() -> None:
        store = Store()

        async def claim() -> list[int]:
            got = await store.claim()
            return [] if store.claims == 2 else got  # the thief takes what woke us

        asyncio.get_running_loop().call_later(0.05, store.put, 1)
        got = await wait_then_claim(claim, WaiterSignal(store.waiters, "q"), timeout=0.3)
        assert got == []
        assert store.claims == 3  # armed, unarmed after the wake-up, armed again
        assert not store.waiters

    asyncio.run(main())


def test_outlast_waits_through_cancellations_and_leaves_them_requested() -> None:
    async def main() -> None:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        seen: list[object] = []

        async def caller() -> None:
            try:
                await asyncio.shield(answer)
            except asyncio.CancelledError:
                seen.append(await outlast(answer))
                seen.append(cancel_requested())

        task = asyncio.create_task(caller())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0.01)
        task.cancel()  # cancelled again while it waits: it waits on
        await asyncio.sleep(0.01)
        assert not task.done()
        answer.set_result("reply")
        await task
        assert seen == [True, True]

    asyncio.run(main())


def test_outlast_gives_up_after_its_timeout_and_never_raises_the_future_error() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] = loop.create_future()
        assert await outlast(pending, 0.05) is False
        failed: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.01, failed.set_exception, ConnectionError("lost"))
        assert await outlast(failed, 1.0) is True
        assert isinstance(failed.exception(), ConnectionError)
        assert cancel_requested() is False

    asyncio.run(main())
