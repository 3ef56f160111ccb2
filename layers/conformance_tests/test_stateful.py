"""A stateful property test: random operations checked against a model of the contract.

Hypothesis drives sends, receives, group operations, flushes and real (short) time
steps against one layer; a reference model of the contract (FIFO, at-most-once,
expiry, capacity, groups) checks every result. Time is real, so the model keeps,
for each message, the window in which it was stored and treats messages near their
expiry as possibly present: it fails only on behaviour no correct layer can show.

The fast profile runs 10 derandomized programs of 15 steps and reports a failure
unshrunk (shrinking on real time can take minutes); the thorough profile runs 200
random programs of 40 steps and shrinks a failure to its shortest form.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from layers.conformance_tests.helpers import unique
from layers.conformance_tests.plugin import LayerFactory, hypothesis_settings, scaled
from layers.conformance_tests.plugin import settings as run_settings
from layers.core.backend import Capability
from layers.core.errors import ChannelFull
from layers.core.layer import ChannelLayer

EXPIRY = 0.35
CAPACITY = 3
#: Slack for the time between a store write and the client seeing it return.
MARGIN = 0.1
CHANNELS = 3
GROUPS = 2


@dataclass
class Entry:
    """One message the model expects may be on a channel."""

    n: int
    t_lo: float
    t_hi: float
    maybe: bool  # a group_send to a member whose fullness was uncertain

    def surely_alive(self, now: float) -> bool:
        return not self.maybe and self.t_lo + EXPIRY > now + MARGIN

    def possibly_alive(self, now: float) -> bool:
        return self.t_hi + EXPIRY + MARGIN > now


class LayerModel(RuleBasedStateMachine):
    """The machine: each rule runs one operation on the layer and checks it on the model."""

    #: Makes the layer under test (set by :func:`_machine`).
    factory: ClassVar[LayerFactory]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.layer: ChannelLayer = type(self).factory(
            expiry=EXPIRY, capacity=CAPACITY, group_expiry=60
        )
        caps = self.layer.capabilities
        self.groups_ok = Capability.GROUPS in caps
        self.flush_ok = Capability.FLUSH in caps
        self.names = [unique() for _ in range(CHANNELS)]
        self.group_names = [unique("grp") for _ in range(GROUPS)]
        self.queues: list[list[Entry]] = [[] for _ in range(CHANNELS)]
        self.members: list[set[int]] = [set() for _ in range(GROUPS)]
        self.counter = 0
        self.slept = 0.0
        self.empty_receives = 0

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def teardown(self) -> None:
        self.run(self.layer.aclose())
        self.runner.close()

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _counts(self, index: int, now: float) -> tuple[int, int]:
        entries = self.queues[index]
        sure = sum(e.surely_alive(now) for e in entries)
        possible = sum(e.possibly_alive(now) for e in entries)
        return sure, possible

    @rule(index=st.integers(0, CHANNELS - 1))
    def send(self, index: int) -> None:
        n = self._next()
        t_lo = time.monotonic()
        sure, possible = self._counts(index, t_lo)
        try:
            self.run(self.layer.send(self.names[index], {"n": n}))
        except ChannelFull:
            assert possible >= CAPACITY, f"ChannelFull with {possible} possibly queued"
            return
        t_hi = time.monotonic()
        sure_now, _ = self._counts(index, t_hi)
        assert min(sure, sure_now) < CAPACITY, "a send fitted in a full channel"
        self.queues[index].append(Entry(n, t_lo, t_hi, maybe=False))

    @precondition(lambda self: self.empty_receives < 2 or any(self.queues))
    @rule(index=st.integers(0, CHANNELS - 1))
    def receive(self, index: int) -> None:
        entries = self.queues[index]
        t0 = time.monotonic()
        must = any(e.surely_alive(t0) for e in entries)
        if not entries:
            if self.empty_receives >= 2:
                return
            self.empty_receives += 1
        wait = run_settings.wait if must else run_settings.quiet
        try:
            message = self.run(_receive(self.layer, self.names[index], wait))
        except TimeoutError:
            message = None
        t1 = time.monotonic()
        if message is None:
            late = [e.n for e in entries if e.surely_alive(t1)]
            assert not late, f"messages {late} were due but never arrived"
            entries.clear()
            return
        n = message["n"]
        positions = [k for k, e in enumerate(entries) if e.n == n]
        assert positions, f"message {n} was not expected (duplicate or foreign)"
        k = positions[0]
        skipped = [e.n for e in entries[:k] if e.surely_alive(t1)]
        assert not skipped, f"received {n} before {skipped} (FIFO)"
        assert entries[k].possibly_alive(t0), f"message {n} was delivered after expiry"
        del entries[: k + 1]

    @precondition(lambda self: self.groups_ok)
    @rule(group=st.integers(0, GROUPS - 1), index=st.integers(0, CHANNELS - 1))
    def group_add(self, group: int, index: int) -> None:
        self.run(self.layer.group_add(self.group_names[group], self.names[index]))
        self.members[group].add(index)

    @precondition(lambda self: self.groups_ok)
    @rule(group=st.integers(0, GROUPS - 1), index=st.integers(0, CHANNELS - 1))
    def group_discard(self, group: int, index: int) -> None:
        self.run(self.layer.group_discard(self.group_names[group], self.names[index]))
        self.members[group].discard(index)

    @precondition(lambda self: self.groups_ok)
    @rule(group=st.integers(0, GROUPS - 1))
    def group_send(self, group: int) -> None:
        n = self._next()
        t_lo = time.monotonic()
        before = {i: self._counts(i, t_lo) for i in self.members[group]}
        self.run(self.layer.group_send(self.group_names[group], {"n": n}))
        t_hi = time.monotonic()
        for index, (sure, possible) in before.items():
            sure_after, _ = self._counts(index, t_hi)
            if min(sure, sure_after) >= CAPACITY:
                continue  # surely full: skipped
            maybe = possible >= CAPACITY
            self.queues[index].append(Entry(n, t_lo, t_hi, maybe=maybe))

    @precondition(lambda self: self.flush_ok)
    @rule()
    def flush(self) -> None:
        self.run(self.layer.flush())
        for entries in self.queues:
            entries.clear()
        for members in self.members:
            members.clear()

    @precondition(lambda self: self.slept < 0.6)
    @rule(seconds=st.sampled_from([0.02, 0.15, 0.45]))
    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        time.sleep(seconds)


def _machine(factory: LayerFactory) -> type[RuleBasedStateMachine]:
    """The machine class bound to ``factory`` (Hypothesis makes one instance per program)."""
    return type("LayerModel", (LayerModel,), {"factory": staticmethod(factory)})


async def _receive(layer: ChannelLayer, channel: str, wait: float) -> dict[str, Any]:
    async with asyncio.timeout(wait):
        return await layer.receive(channel)


def test_random_operations_match_the_model(layer_factory: LayerFactory) -> None:
    """Random sends, receives, group operations, flushes and time steps obey the contract."""
    machine = _machine(layer_factory)
    run_state_machine_as_test(
        machine, settings=hypothesis_settings(stateful_step_count=scaled(15, 40))
    )
