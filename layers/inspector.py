"""``layers inspect URL``: the busiest channels and the largest groups of a layer.

Reads :meth:`layers.ChannelLayer.statistics` (read-only: nothing is consumed) and
prints a table, refreshed every few seconds with ``--watch``, or JSON with
``--json``. ``--watch URL`` refreshes at the default interval; ``--watch 5 URL`` every
5 seconds.

Inspecting creates nothing: a SQLite file or a PostgreSQL schema that does not exist
(no layer has used it yet, or the URL names the wrong one) is reported in one line,
with exit status 2. Exit status: 0, 1 when the store fails (unreachable server, bad
credentials), 2 for a bad URL or option or a store that does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TextIO

from layers.cli_common import CommandError, CommandParser, build_layer, redact
from layers.cli_probe import missing_store
from layers.core.errors import BackendError, ConfigurationError
from layers.core.statistics import LayerStatistics

__all__ = ["main", "render"]

#: Seconds between two refreshes of ``--watch`` without a value.
WATCH_INTERVAL = 2.0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render(stats: LayerStatistics, *, limit: int) -> str:
    """The text table of ``stats``: at most ``limit`` channels and ``limit`` groups."""
    lines = [
        f"channels: {len(stats.channels)} with messages, {stats.pending} pending, "
        f"{stats.full_channels} full"
    ]
    if stats.channels:
        width = max(7, *(len(c.name) for c in stats.channels[:limit]))
        lines.append(
            f"  {'CHANNEL':<{width}}  {'PENDING':>7}  {'CAPACITY':>8}  {'OLDEST':>7}  FULL"
        )
        for c in stats.channels[:limit]:
            lines.append(
                f"  {c.name:<{width}}  {c.pending:>7}  {c.capacity:>8}  "
                f"{_age(c.oldest_age):>7}  {'yes' if c.full else ''}".rstrip()
            )
        if len(stats.channels) > limit:
            lines.append(f"  ... and {len(stats.channels) - limit} more")
    lines.append(f"groups: {len(stats.groups)}")
    if stats.groups:
        width = max(5, *(len(g.name) for g in stats.groups[:limit]))
        lines.append(f"  {'GROUP':<{width}}  {'MEMBERS':>7}")
        for g in stats.groups[:limit]:
            lines.append(f"  {g.name:<{width}}  {g.size:>7}")
        if len(stats.groups) > limit:
            lines.append(f"  ... and {len(stats.groups) - limit} more")
    return "\n".join(lines)


async def _run(args: argparse.Namespace, out: TextIO) -> None:
    from layers.core.backend import Capability

    layer = build_layer(args.url)
    if Capability.CROSS_PROCESS not in layer.capabilities:
        print(
            f"layers inspect: note: the {layer.backend_class.name or 'this'} backend keeps "
            "messages inside one process; this command sees only its own, empty store",
            file=sys.stderr,
        )
    else:
        missing = await missing_store(layer.backend_class, args.url)
        if missing:
            raise CommandError(missing)
    try:
        shown = 0
        while True:
            stats = await layer.statistics()
            if args.json:
                out.write(json.dumps(stats.as_dict()) + "\n")
            else:
                if args.watch is not None and out.isatty():
                    out.write("\x1b[H\x1b[2J")
                elif shown:
                    out.write("\n")
                out.write(render(stats, limit=args.limit) + "\n")
            out.flush()
            shown += 1
            if args.watch is None or (args.count and shown >= args.count):
                return
            await asyncio.sleep(args.watch)
    finally:
        await layer.aclose()


def _parser() -> CommandParser:
    parser = CommandParser(
        prog="layers inspect",
        usage="layers inspect [-h] [--watch [SECONDS]] [--json] [--limit N] [--count N] URL",
        description="Show the busiest channels and the largest groups of a layer (read-only).",
        epilog="Examples: layers inspect redis://localhost:6379/0; "
        "layers inspect --watch sqlite:///app.db; layers inspect --watch 5 --json URL. "
        "Exit status: 0, 1 when the store fails, 2 for a bad URL or option or when "
        "there is no layer at URL (a SQLite file or PostgreSQL schema that does not "
        "exist: nothing is created).",
    )
    parser.add_argument("url", nargs="?", metavar="URL", help="the layer URL")
    parser.add_argument(
        "--watch",
        nargs="?",
        const="",
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {WATCH_INTERVAL:g}) until Ctrl-C",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, one object per refresh")
    parser.add_argument(
        "--limit", type=int, default=20, metavar="N", help="show at most N channels and N groups"
    )
    parser.add_argument(
        "--count", type=int, default=0, metavar="N", help="with --watch, stop after N refreshes"
    )
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``--watch URL`` is ``--watch`` at the default interval, then URL."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.watch is not None:
        try:
            seconds = float(args.watch) if args.watch else WATCH_INTERVAL
        except ValueError:
            # argparse gave the URL to --watch's optional value.
            if args.url is not None:
                parser.error(f"argument --watch: SECONDS must be a number, not {args.watch!r}")
            args.url, seconds = args.watch, WATCH_INTERVAL
        if not 0 < seconds <= 86400:
            parser.error(f"argument --watch: SECONDS must be in (0, 86400], not {args.watch}")
        args.watch = seconds
    if args.url is None:
        parser.error("the following arguments are required: URL")
    if args.limit < 1:
        parser.error(f"argument --limit: N must be at least 1, not {args.limit}")
    if args.count < 0:
        parser.error(f"argument --count: N must be 0 (no limit) or more, not {args.count}")
    return args


def main(argv: list[str]) -> int:
    """Run ``layers inspect``."""
    args = _parse(argv)
    try:
        asyncio.run(_run(args, sys.stdout))
    except KeyboardInterrupt:
        return 0
    except (ConfigurationError, CommandError) as exc:
        print(f"layers inspect: {redact(str(exc), argv)}", file=sys.stderr)
        return 2
    except BackendError as exc:
        reason = " ".join(redact(str(exc), argv).split())
        print(f"layers inspect: the store failed: {reason}", file=sys.stderr)
        return 1
    return 0
