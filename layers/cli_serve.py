"""``layers serve``: run an interface server (tier 1) with uvicorn (``[serve]`` extra).

Before it listens, the command checks what would make every request fail: a layer
that keeps messages inside one process (``memory://``) without ``--routing`` is
refused (status 2: no worker in another process could ever answer), a routing table
that cannot be loaded is refused, and a layer that cannot store a message (server
unreachable, bad credentials) is reported in one line. While it serves, a request
that no worker answers in time gets 504, and the log says why (see
:class:`~layers.interface.InterfaceServer`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from layers.asgi_worker import CHUNK_SIZE
from layers.cli_common import (
    CommandError,
    CommandParser,
    add_layer_arguments,
    check_layer,
    layer_from_args,
    one_process,
    redact,
)
from layers.core.errors import ConfigurationError
from layers.interface import InterfaceServer

__all__ = ["main"]

_ONE_PROCESS = (
    "the {backend} backend keeps messages inside this process, so a worker in another "
    "process never sees this server's requests. Run a worker here with --routing "
    "module:channel_routing, or use a layer shared between processes "
    "(sqlite:///app.db, redis://host:6379/0, postgresql://host/db)"
)


def _port(value: str) -> int:
    """A TCP port number, 0 to 65535 (0: any free port)."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="layers serve",
        description="Serve HTTP and WebSocket on a channel layer (tier 1), with uvicorn.",
        epilog="Each request becomes an http.request message for a worker (layers worker "
        "ROUTING --url URL, on the same layer); with --routing a worker runs in this "
        "process too (development; the only way with memory://).",
    )
    add_layer_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a worker's answer (30)",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=CHUNK_SIZE, metavar="BYTES", help="body bytes per message"
    )
    parser.add_argument(
        "--routing", help="also run a worker in this process on this routing table (development)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="that worker's concurrency (8)"
    )
    return parser


def _layer(args: Any, argv: list[str]) -> Any:
    """The layer, refused when no worker could answer, checked when it is shared."""
    from layers.worker import load_routing

    if args.routing is not None:
        load_routing(args.routing)  # a typo in the table: one line now, not at startup
    layer = layer_from_args(args.url, args.layer)
    if one_process(layer):
        if args.routing is None:
            name = getattr(getattr(layer, "backend_class", None), "name", None) or "memory"
            raise ConfigurationError("--routing", _ONE_PROCESS.format(backend=name))
    elif hasattr(layer, "aclose"):
        try:
            check_layer(layer, args.url or args.layer or "the default layer")
        except CommandError as exc:
            print(f"layers serve: warning: {redact(str(exc), argv)}", file=sys.stderr, flush=True)
    return layer


def main(argv: list[str]) -> int:
    """Run ``layers serve`` until SIGINT or SIGTERM."""
    args = _parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        raise CommandError("needs uvicorn: pip install 'channel-layers[serve]'") from None
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # import the routing module as `python -m` would
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    layer = _layer(args, argv)
    server = InterfaceServer(
        layer,
        timeout=args.timeout,
        chunk_size=args.chunk_size,
        routing=args.routing,
        worker_options={"concurrency": args.concurrency},
    )
    where = "with a worker in this process" if args.routing else "workers elsewhere"
    print(f"layers serve: http://{args.host}:{args.port} on {layer!r} ({where})", flush=True)
    config = uvicorn.Config(
        server, host=args.host, port=args.port, lifespan="on", log_level="warning"
    )
    uvicorn.Server(config).run()
    return 0
