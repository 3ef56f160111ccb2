"""Tier 3: a worker receives on every routed channel and runs a consumer per message.

A routing table maps channel names to consumers, as in the original Channels design::

    channel_routing = {
        "thumbnails": "myapp.consumers.thumbnail",   # a dotted path ...
        "websocket.connect": ws_connect,             # ... or a callable
    }

A consumer takes one :class:`~layers.Message`; inside it, ``Channel(name)`` and
``Group(name)`` without ``layer=`` use the worker's layer. A plain function runs in the worker's
thread pool and may use the object API without ``await`` (``message.reply_channel.send(...)``,
``Group("liveblog").add(message.reply_channel)``); a coroutine function runs on the
worker's event loop.

Guarantees: each message is handled by at most one worker, in any number of processes
(the layer's at-most-once delivery). A worker holds at most ``concurrency`` messages in
consumers plus one received message per channel waiting for a free slot. A consumer that
raises, or runs past ``time_limit``, is logged with the message's channel and counted as
failed; the worker goes on. :meth:`Worker.stop` (SIGTERM or SIGINT under
``layers worker``) stops receiving, lets the messages in hand finish within ``grace``
seconds, logs the count of those still unfinished at the deadline (cancelled), and
closes the layer. A second signal ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from asgiref.sync import SyncToAsync

from layers.core.errors import ConfigurationError, LayerClosed
from layers.core.names import require_valid_channel_name
from layers.core.objects import Channel, Message, current_layer

__all__ = ["Consumer", "Worker", "import_object", "load_routing"]

logger = logging.getLogger("layers.worker")

#: A consumer: called with one Message; a plain function or a coroutine function.
Consumer = Callable[[Message], Any]


def import_object(path: str, *, setting: str = "routing") -> Any:
    """Import ``"package.module:attribute"`` or ``"package.module.attribute"``.

    Raises :class:`~layers.ConfigurationError` naming ``setting`` when it cannot.
    """
    if not isinstance(path, str) or not path:
        raise ConfigurationError(setting, f"expected a dotted path, got {path!r}")
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigurationError(setting, f"{path!r} is not 'module:attribute' or a dotted path")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(setting, f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(
                setting, f"module {module_name!r} has no attribute {attr!r}"
            ) from None
    return target


def load_routing(routing: Mapping[str, Consumer | str] | str) -> dict[str, Consumer]:
    """Return ``{channel: consumer}`` from a routing table or a path to one.

    Keys must be valid channel names that any process may receive on (no ``!``);
    values are callables or dotted paths to them. Errors raise
    :class:`~layers.ConfigurationError` (``TypeError`` for an invalid name).
    """
    if isinstance(routing, str):
        routing = import_object(routing, setting="channel_routing")
    if not isinstance(routing, Mapping) or not routing:
        raise ConfigurationError(
            "channel_routing", f"expected a non-empty dict of channel: consumer, got {routing!r}"
        )
    table: dict[str, Consumer] = {}
    for channel, consumer in routing.items():
        require_valid_channel_name(channel, receive=True)
        if "!" in channel:
            raise ConfigurationError(
                "channel_routing", f"{channel!r} is a reply channel; route normal channels only"
            )
        if isinstance(consumer, str):
            consumer = import_object(consumer, setting="channel_routing")
        if not callable(consumer):
            raise ConfigurationError(
                "channel_routing", f"the consumer for {channel!r} is not callable: {consumer!r}"
            )
        table[channel] = consumer
    return table


def _consumer_name(consumer: Consumer) -> str:
    module = getattr(consumer, "__module__", None) or "?"
    return f"{module}.{getattr(consumer, '__qualname__', repr(consumer))}"


class Worker:
    """Receives on routed channels and runs their consumers; see the module docstring.

    Args:
        layer: the channel layer (any ``ChannelLayer``-compatible object).
        routing: ``{channel: consumer}`` or a path to such a table.
        only: route only these channels (names from the table).
        exclude: do not route these channels.
        concurrency: how many consumers run at once (also the thread-pool size).
        time_limit: seconds a consumer may run before it is cancelled and counted as
            failed (a sync consumer's thread cannot be stopped: it runs on, unwatched).
        grace: seconds :meth:`stop` waits for the messages in hand.
        stats_interval: print counts every this many seconds (None: never).
        out: where the status line and stats go.
    """

    def __init__(
        self,
        layer: Any,
        routing: Mapping[str, Consumer | str] | str,
        *,
        only: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        concurrency: int = 8,
        time_limit: float | None = None,
        grace: float = 10.0,
        stats_interval: float | None = None,
        out: TextIO | None = None,
    ) -> None:
        table = load_routing(routing)
        for setting, names in (("--only", only), ("--exclude", exclude)):
            unknown = sorted(set(names or ()) - set(table))
            if unknown:
                raise ConfigurationError(
                    setting, f"not in the routing table: {unknown}; routed: {sorted(table)}"
                )
        if only is not None:
            table = {name: c for name, c in table.items() if name in set(only)}
        table = {name: c for name, c in table.items() if name not in set(exclude or ())}
        if not table:
            raise ConfigurationError("--only/--exclude", "no channel is left to receive on")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError("concurrency", f"must be an int >= 1, got {concurrency!r}")
        for name, value in (("time_limit", time_limit), ("stats_interval", stats_interval)):
            if value is not None and not value > 0:
                raise ConfigurationError(name, f"must be > 0 or None, got {value!r}")
        if not grace >= 0:
            raise ConfigurationError("grace", f"must be >= 0, got {grace!r}")
        self.layer = layer
        self.routing = table
        self.concurrency = concurrency
        self.time_limit = time_limit
        self.grace = grace
        self.stats_interval = stats_interval
        self.out = out if out is not None else sys.stdout
        #: Messages whose consumer returned, per channel.
        self.handled: Counter[str] = Counter()
        #: Messages whose consumer raised or ran out of time, per channel.
        self.failed: Counter[str] = Counter()
        #: Messages in hand still unfinished when the grace period ended.
        self.abandoned = 0
        self._stopping: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._held: list[tuple[str, dict[str, Any]]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def channels(self) -> list[str]:
        """The channels this worker receives on."""
        return list(self.routing)

    def status_line(self) -> str:
        """The one line printed at start: layer, channels, concurrency."""
        return (
            f"layers worker: layer {self.layer!r}, channels {', '.join(self.channels)}, "
            f"concurrency {self.concurrency}"
        )

    def stop(self) -> None:
        """Stop receiving and finish the messages in hand (a second call skips the grace).

        Safe to call from any thread, and before :meth:`run` has started its loop.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._stop_in_loop)

    def _stop_in_loop(self) -> None:
        if self._stopping is None or self._force is None:
            return
        if self._stopping.is_set():
            self._force.set()
        self._stopping.set()

    async def run(self, *, handle_signals: bool = False, close_layer: bool = True) -> None:
        """Receive and dispatch until :meth:`stop`; then drain, and close the layer.

        With ``handle_signals``, SIGTERM and SIGINT call :meth:`stop`. Cancelling
        ``run`` is a stop with no grace: consumers in hand are cancelled and counted.
        """
        self._loop = asyncio.get_running_loop()
        self._stopping, self._force = asyncio.Event(), asyncio.Event()
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="layers-worker")
        slots = asyncio.Semaphore(self.concurrency)
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._stop_in_loop)
        print(self.status_line(), file=self.out, flush=True)
        # One receiver per channel receives first and then waits for a slot, so no channel
        # starves; the others take a slot first, so at most ``concurrency`` plus one
        # message per channel are ever in hand. Several waiting receives on a channel let
        # the layer fetch a batch per round trip instead of one message.
        extra = max(0, self.concurrency // (2 * len(self.routing)) - 1)
        receivers = [
            asyncio.create_task(self._receive(ch, slots, slot_first=n > 0))
            for ch in self.routing
            for n in range(1 + extra)
        ]
        stats = asyncio.create_task(self._stats()) if self.stats_interval else None
        try:
            await self._stopping.wait()
        except asyncio.CancelledError:
            self._force.set()
            raise
        finally:
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
            await self._drain()
            if stats is not None:
                stats.cancel()
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(signum)
            self._executor.shutdown(wait=False, cancel_futures=True)
            if close_layer and hasattr(self.layer, "aclose"):
                await self.layer.aclose()
            self._print_stats(final=True)

    async def _receive(self, channel: str, slots: asyncio.Semaphore, *, slot_first: bool) -> None:
        """Receive on ``channel`` and dispatch, one message at a time, until cancelled."""
        while True:
            if slot_first:
                await slots.acquire()
            try:
                content = await self.layer.receive(channel)
            except LayerClosed:
                if slot_first:
                    slots.release()
                return
            except asyncio.CancelledError:
                if slot_first:
                    slots.release()
                raise
            except Exception:
                if slot_first:
                    slots.release()
                logger.exception("receive on %r failed; retrying in 1 s", channel)
                await asyncio.sleep(1)
                continue
            if not slot_first:
                try:
                    await slots.acquire()
                except asyncio.CancelledError:
                    # Stopping with a message in hand: it is handled in the drain.
                    self._held.append((channel, content))
                    raise
            self._start(channel, content, slots.release)

    def _start(self, channel: str, content: dict[str, Any], done: Callable[[], None]) -> None:
        task = asyncio.create_task(self._handle(channel, content))
        self._inflight.add(task)

        def finished(task: asyncio.Task[None]) -> None:
            self._inflight.discard(task)
            done()

        task.add_done_callback(finished)

    async def _drain(self) -> None:
        """Handle what was in hand at stop, within the grace period; count what is left."""
        for channel, content in self._held:
            self._start(channel, content, lambda: None)
        self._held.clear()
        # A cancelled receive keeps a message it had already taken buffered in this
        # loop; take such messages now (one loop turn each) rather than drop them.
        for channel in self.routing:
            for _ in range(self.concurrency):
                probe = asyncio.create_task(self.layer.receive(channel))
                await asyncio.sleep(0)
                if not probe.done():
                    probe.cancel()
                    with contextlib.suppress(asyncio.CancelledError, LayerClosed):
                        content = await probe
                        self._start(channel, content, lambda: None)
                    break
                if probe.exception() is not None:
                    break
                self._start(channel, probe.result(), lambda: None)
        if not self._inflight:
            return
        assert self._force is not None  # noqa: S101 - set by run()
        force: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
        inflight: asyncio.Future[Any] = asyncio.gather(*self._inflight, return_exceptions=True)
        await asyncio.wait([force, inflight], timeout=self.grace, return_when="FIRST_COMPLETED")
        force.cancel()
        left = [task for task in self._inflight if not task.done()]
        if left:
            self.abandoned += len(left)
            logger.error(
                "stopping: %d message(s) still in hand after the %s s grace period are "
                "abandoned (their consumers are cancelled)",
                len(left),
                self.grace,
            )
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        await asyncio.gather(inflight, return_exceptions=True)

    async def _handle(self, channel: str, content: dict[str, Any]) -> None:
        consumer = self.routing[channel]
        current_layer.set(self.layer)  # this task's context (and its thread's copy) only
        try:
            message = Message(content=content, channel=Channel(channel, layer=self.layer))
            async with asyncio.timeout(self.time_limit):
                await self._call(consumer, message)
        except TimeoutError:
            self.failed[channel] += 1
            logger.error(
                "consumer %s on channel %r ran past its %s s time limit",
                _consumer_name(consumer),
                channel,
                self.time_limit,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failed[channel] += 1
            logger.exception("consumer %s failed on channel %r", _consumer_name(consumer), channel)
        else:
            self.handled[channel] += 1

    def _call(self, consumer: Consumer, message: Message) -> Awaitable[Any]:
        if inspect.iscoroutinefunction(consumer) or inspect.iscoroutinefunction(
            getattr(consumer, "__call__", None)  # noqa: B004 - an async __call__
        ):
            return consumer(message)  # type: ignore[no-any-return]
        # SyncToAsync (not run_in_executor) so the object API inside the thread runs
        # its coroutines on this loop, with this loop's layer connections.
        return SyncToAsync(consumer, thread_sensitive=False, executor=self._executor)(message)

    async def _stats(self) -> None:
        assert self.stats_interval is not None  # noqa: S101 - checked by run()
        while True:
            await asyncio.sleep(self.stats_interval)
            self._print_stats()

    _last: tuple[float, Counter[str]] | None = None

    def _print_stats(self, *, final: bool = False) -> None:
        if not final and self.stats_interval is None:
            return
        now = time.monotonic()
        total = self.handled + self.failed
        rates = ""
        if self._last is not None and not final:
            since, before = self._last
            elapsed = max(now - since, 1e-9)
            rates = " | " + ", ".join(
                f"{ch} {(total[ch] - before[ch]) / elapsed:.1f}/s" for ch in self.routing
            )
        self._last = (now, Counter(total))
        label = "stopped" if final else "stats"
        print(
            f"layers worker {label}: handled {sum(self.handled.values())}, "
            f"failed {sum(self.failed.values())}, abandoned {self.abandoned}{rates}",
            file=self.out,
            flush=True,
        )
