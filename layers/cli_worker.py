"""``layers worker ROUTING``: run a :class:`~layers.worker.Worker` until SIGTERM or SIGINT.

A layer that keeps messages inside one process (``memory://``) is refused with exit
status 2: nothing in another process could send to the worker. A store that is
unreachable at start is not fatal: the worker logs each failed receive and retries,
so it can start before its server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from layers.cli_common import CommandParser, add_layer_arguments, layer_from_args, one_process
from layers.core.errors import ConfigurationError
from layers.worker import Worker

__all__ = ["main"]

_ONE_PROCESS = (
    "this layer keeps messages inside one process: a worker in a process of its own would "
    "only ever see messages sent from within itself. Use a layer shared between processes "
    "(sqlite:///app.db, redis://host:6379/0, postgresql://host/db), or run the worker "
    "inside the server: layers serve --url memory:// --routing ROUTING"
)


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="layers worker",
        description="Receive on every routed channel and run its consumer for each message.",
    )
    parser.add_argument("routing", help="the routing table, 'package.module:channel_routing'")
    add_layer_arguments(parser)
    parser.add_argument("--only", nargs="+", metavar="CHANNEL", help="receive on these only")
    parser.add_argument("--exclude", nargs="+", metavar="CHANNEL", help="do not receive on these")
    parser.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="consumers at once (8)"
    )
    parser.add_argument(
        "--time-limit", type=float, metavar="SECONDS", help="seconds per message (no limit)"
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, metavar="SECONDS", help="seconds to drain on stop (10)"
    )
    parser.add_argument(
        "--stats",
        type=float,
        nargs="?",
        const=10.0,
        metavar="SECONDS",
        help="print counts every SECONDS (10)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``layers worker`` until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # import the routing module as `python -m` would
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    layer = layer_from_args(args.url, args.layer)
    if one_process(layer):
        raise ConfigurationError("--url", _ONE_PROCESS)
    worker = Worker(
        layer,
        args.routing,
        only=args.only,
        exclude=args.exclude,
        concurrency=args.concurrency,
        time_limit=args.time_limit,
        grace=args.grace,
        stats_interval=args.stats,
    )
    asyncio.run(worker.run(handle_signals=True))
    return 0
