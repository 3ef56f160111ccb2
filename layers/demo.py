"""``layers demo``: a short live scenario showing what a channel layer is for.

1. **Workers answer requests over reply channels.** Clients make reply channels with
   ``new_channel()``, send requests to the normal channel ``demo.requests`` and wait
   for the answers; several workers compete for the requests, and each request is
   answered exactly once (at-most-once delivery, no loss without a crash).
2. **A group broadcast reaches every listener.** Listeners join ``demo.news``; every
   broadcast arrives at every listener, in order.
3. **FIFO order is kept** on one channel for one writer and one reader.

With a cross-process URL (``sqlite:///demo.db``, ``redis://``, ``postgresql://``) and
``--processes N`` the workers run as N separate OS processes sharing the store.

The demo keeps to its own namespace: every channel and group it uses is named
``demo.<run>.…`` after a random run id, it consumes what it sends and leaves its
groups, and it never calls ``flush()``. Other data in the same store (another
application's channels and groups under the same prefix, file or schema) is left
alone, and several demos can run on one store at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from layers.cli_common import CommandParser, build_layer, check_layer
from layers.core.backend import Capability
from layers.core.errors import ChannelFull, ConfigurationError
from layers.core.layer import ChannelLayer
from layers.core.objects import Channel, Group

__all__ = ["Names", "main", "run_demo"]

#: The message type that tells a worker to stop.
STOP = "demo.stop"


@dataclass(frozen=True)
class Names:
    """The channel and group names of one demo run, all under ``demo.<run>.``."""

    run: str

    @classmethod
    def fresh(cls) -> Names:
        """Names for a new run, under a random run id."""
        return cls(secrets.token_hex(4))

    @property
    def requests(self) -> str:
        """The normal channel the workers compete on."""
        return f"demo.{self.run}.requests"

    @property
    def news(self) -> str:
        """The group the listeners join."""
        return f"demo.{self.run}.news"

    @property
    def fifo(self) -> str:
        """The channel of the FIFO check."""
        return f"demo.{self.run}.fifo"

    @property
    def ready(self) -> str:
        """Where worker processes announce they are serving."""
        return f"demo.{self.run}.ready"

    def prefix(self, kind: str) -> str:
        """A ``new_channel()`` prefix of this run."""
        return f"demo.{self.run}.{kind}."


@dataclass
class Report:
    """What the demo delivered and how fast."""

    backend: str
    workers: int
    processes: int
    latencies: list[float] = field(default_factory=list)
    answered_by: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    broadcasts_expected: int = 0
    broadcasts_delivered: int = 0
    broadcast_order_ok: bool = True
    fifo_count: int = 0
    fifo_ok: bool = True
    messages: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The summary a person reads."""
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1e3 if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else float("nan")
        served = ", ".join(f"{k}: {v}" for k, v in sorted(self.answered_by.items()))
        ok = (
            self.duplicates == 0
            and self.broadcasts_delivered == self.broadcasts_expected
            and self.broadcast_order_ok
            and self.fifo_ok
        )
        rate = self.messages / self.seconds if self.seconds else 0.0
        where = f"{self.processes} worker process(es)" if self.processes else "one process"
        return [
            f"channel-layers demo on {self.backend} ({where})",
            f"  requests answered   {len(self.latencies)} by {self.workers} workers "
            f"({served}); duplicates: {self.duplicates}",
            f"  round trip          p50 {p50:.2f} ms, p99 {p99:.2f} ms",
            f"  group broadcast     {self.broadcasts_delivered}/{self.broadcasts_expected} "
            f"deliveries, order {'kept' if self.broadcast_order_ok else 'BROKEN'}",
            f"  FIFO                {self.fifo_count} messages, order "
            f"{'kept' if self.fifo_ok else 'BROKEN'}",
            f"  throughput          {self.messages} messages in {self.seconds * 1e3:.0f} ms "
            f"({rate:,.0f} msg/s)",
            f"  result              {'OK' if ok else 'FAILED'}",
        ]

    @property
    def ok(self) -> bool:
        """True when nothing was duplicated, lost or reordered."""
        return self.lines()[-1].endswith("OK")


async def worker(layer: ChannelLayer, name: str, names: Names) -> None:
    """Answer the run's requests channel until a stop message; reply with who answered."""
    requests = Channel(names.requests, layer=layer)
    while True:
        message = await requests.receive()
        if message.content.get("type") == STOP:
            return
        await message.reply(
            {
                "type": "demo.answer",
                "id": message.content["id"],
                "worker": name,
                "square": message.content["n"] ** 2,
            }
        )


async def _client(
    layer: ChannelLayer, names: Names, ids: range, report: Report, seen: set[int]
) -> None:
    reply = await Channel.new(names.prefix("client"), layer=layer)
    requests = Channel(names.requests, layer=layer)
    for request_id in ids:
        started = time.perf_counter()
        await requests.send(
            {"type": "demo.request", "id": request_id, "n": request_id, "reply_channel": reply.name}
        )
        answer = (await reply.receive()).content
        report.latencies.append(time.perf_counter() - started)
        if answer["id"] in seen or answer["square"] != request_id**2:
            report.duplicates += 1
        seen.add(answer["id"])
        report.answered_by[answer["worker"]] = report.answered_by.get(answer["worker"], 0) + 1


async def _listener(
    layer: ChannelLayer, names: Names, count: int, report: Report, joined: asyncio.Event
) -> None:
    inbox = await Channel.new(names.prefix("listener"), layer=layer)
    news = Group(names.news, layer=layer)
    await news.add(inbox)
    joined.set()
    for expected in range(count):
        content = (await inbox.receive()).content
        report.broadcast_order_ok &= content["seq"] == expected
        report.broadcasts_delivered += 1
    await news.discard(inbox)


async def _broadcasts(
    layer: ChannelLayer, names: Names, listeners: int, count: int, report: Report
) -> None:
    joined = [asyncio.Event() for _ in range(listeners)]
    tasks = [asyncio.create_task(_listener(layer, names, count, report, ev)) for ev in joined]
    async with _cancel_on_error(tasks):
        await asyncio.gather(*(ev.wait() for ev in joined))
        report.broadcasts_expected = listeners * count
        for seq in range(count):
            await Group(names.news, layer=layer).send({"type": "demo.news", "seq": seq})
    await asyncio.gather(*tasks)


async def _fifo(layer: ChannelLayer, names: Names, count: int, report: Report) -> None:
    async def consume() -> None:
        for expected in range(count):
            report.fifo_ok &= (await layer.receive(names.fifo))["i"] == expected
            report.fifo_count += 1

    consumer = asyncio.create_task(consume())
    async with _cancel_on_error([consumer]):
        for i in range(count):
            while True:
                try:
                    await layer.send(names.fifo, {"type": "demo.fifo", "i": i})
                    break
                except ChannelFull:  # back-pressure: let the consumer catch up
                    if consumer.done():  # it failed, and never will: say why
                        await consumer
                    await asyncio.sleep(0.001)
    await consumer


@contextlib.asynccontextmanager
async def _cancel_on_error(tasks: list[asyncio.Task[None]]) -> AsyncIterator[None]:
    """Cancel ``tasks`` when the block fails, so the failure is reported once, not per task."""
    try:
        yield
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def run_demo(
    layer: ChannelLayer,
    *,
    requests: int = 200,
    clients: int = 4,
    workers: int = 3,
    listeners: int = 10,
    broadcasts: int = 20,
    fifo: int = 500,
    processes: list[subprocess.Popen[bytes]] | None = None,
    names: Names | None = None,
) -> Report:
    """Run the scenario on ``layer``; local worker tasks unless ``processes`` serve.

    Everything happens on ``names`` (a fresh run's by default; worker ``processes``
    must serve the same run): nothing else in the store is read, changed or flushed.
    """
    names = names or Names.fresh()
    report = Report(
        backend=layer.backend_class.name or layer.backend_class.__name__,
        workers=len(processes) if processes else workers,
        processes=len(processes or ()),
    )
    async with layer:
        async with asyncio.timeout(120):  # time the scenario, not the workers' start-up
            for _ in processes or ():
                await layer.receive(names.ready)
        started = time.perf_counter()
        local = (
            []
            if processes
            else [
                asyncio.create_task(worker(layer, f"worker-{i + 1}", names)) for i in range(workers)
            ]
        )
        seen: set[int] = set()
        share = -(-requests // clients)
        async with _cancel_on_error(local):
            await asyncio.gather(
                *(
                    _client(
                        layer, names, range(i * share, min(requests, (i + 1) * share)), report, seen
                    )
                    for i in range(clients)
                ),
                _broadcasts(layer, names, listeners, broadcasts, report),
                _fifo(layer, names, fifo, report),
            )
        for _ in range(report.workers):
            await layer.send(names.requests, {"type": STOP})
        await asyncio.gather(*local)
    report.seconds = time.perf_counter() - started
    report.messages = 2 * requests + broadcasts * (1 + listeners) + fifo
    return report


def _spawn_workers(url: str, count: int, names: Names) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "layers", "demo", "--url", url, "--run", names.run]
    return [subprocess.Popen([*command, "--worker", f"process-{i + 1}"]) for i in range(count)]


def _parser() -> CommandParser:
    parser = CommandParser(prog="layers demo", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="memory://", help="layer URL (default: memory://)")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        metavar="N",
        help="run workers as N OS processes (needs a cross-process backend)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=200,
        metavar="N",
        help="request/answer round trips the clients make (default: 200)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``layers demo``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.processes < 0:
        parser.error(f"argument --processes: N must be 0 or more, not {args.processes}")
    if args.requests < 1:
        parser.error(f"argument --requests: N must be at least 1, not {args.requests}")
    layer = build_layer(args.url)
    names = Names(args.run) if args.run else Names.fresh()
    if args.worker:
        asyncio.run(_serve(layer, args.worker, names))
        return 0
    if Capability.CROSS_PROCESS in layer.capabilities:
        check_layer(layer, args.url)  # an unreachable server: one line, before any worker
    processes: list[subprocess.Popen[bytes]] = []
    if args.processes:
        if Capability.CROSS_PROCESS not in layer.capabilities:
            raise ConfigurationError(
                "--processes", f"{args.url} is one process only; try --url sqlite:///demo.db"
            )
        processes = _spawn_workers(args.url, args.processes, names)
    try:
        report = asyncio.run(
            run_demo(layer, requests=args.requests, processes=processes or None, names=names)
        )
    finally:
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


async def _serve(layer: ChannelLayer, name: str, names: Names) -> None:
    async with layer:
        await layer.send(names.ready, {"type": "demo.ready"})
        await worker(layer, f"{name} (pid {os.getpid()})", names)
