"""``layers inspect URL``: the busiest channels and the largest groups of a layer.

Reads :meth:`layers.ChannelLayer.statistics` (read-only: nothing is consumed) and
prints a table, refreshed every few seconds with ``--watch``, or JSON with
``--json``. Exit status: 0, 1 when the store fails, 2 for a bad URL or option.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TextIO

from layers.core.errors import BackendError, ConfigurationError
from layers.core.statistics import LayerStatistics

__all__ = ["main", "render"]


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
    from layers.core.config import from_url

    layer = from_url(args.url)
    if Capability.CROSS_PROCESS not in layer.capabilities:
        print(
            f"layers inspect: note: the {layer.backend_class.name or 'this'} backend keeps "
            "messages inside one process; this command sees only its own, empty store",
            file=sys.stderr,
        )
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


def main(argv: list[str]) -> int:
    """Run ``layers inspect``."""
    parser = argparse.ArgumentParser(
        prog="layers inspect",
        description="Show the busiest channels and the largest groups of a layer (read-only).",
    )
    parser.add_argument("url", help="the layer URL, e.g. redis://localhost:6379/0")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, one object per refresh")
    parser.add_argument(
        "--limit", type=int, default=20, help="show at most this many channels and groups"
    )
    parser.add_argument(
        "--count", type=int, default=0, help="with --watch, stop after this many refreshes"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args, sys.stdout))
    except KeyboardInterrupt:
        return 0
    except ConfigurationError as exc:
        print(f"layers inspect: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"layers inspect: the store failed: {exc}", file=sys.stderr)
        return 1
    return 0
