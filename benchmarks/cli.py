"""``python -m benchmarks``: run layer specs side by side and report medians and ratios.

Examples::

    python -m benchmarks --quick                      # every default spec, seconds
    python -m benchmarks --full --docs                # minutes; rewrites docs/performance.md
    python -m benchmarks --quick --family memory      # one family
    python -m benchmarks --quick --spec memory:// \\
        --spec 'peer=channels.layers.InMemoryChannelLayer:{"capacity": 1000}'
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.runner import MODES, now, run
from benchmarks.scenarios import SCENARIOS
from benchmarks.specs import DEFAULT_REFERENCES, FAMILIES, Spec, default_specs, expand, parse_spec

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="seconds")
    mode.add_argument("--full", action="store_const", const="full", dest="mode", help="minutes")
    parser.add_argument("--spec", action="append", default=[], metavar="[LABEL=]TARGET",
                        help="a URL, DOTTED.CLASS[:JSON] or baseline:NAME (repeatable; "
                        "default: ours, the peers and the baselines)")  # fmt: skip
    parser.add_argument("--family", action="append", default=[], choices=FAMILIES,
                        help="only specs of these families (repeatable)")  # fmt: skip
    parser.add_argument("--scenario", action="append", default=[], choices=list(SCENARIOS),
                        help="only these scenarios (repeatable)")  # fmt: skip
    parser.add_argument("--reference", action="append", default=[], metavar="FAMILY=LABEL",
                        help="the spec a family's ratios are computed against")  # fmt: skip
    parser.add_argument("--repeat", type=int,
                        help="repetitions (quick: 1, full: 3; memory: 3x in full)")  # fmt: skip
    parser.add_argument("--messages", type=int, help="messages per scenario")
    parser.add_argument("--concurrency", type=int, help="N for the concurrent scenario (32)")
    parser.add_argument(
        "--backlog", type=int, help="messages queued by the start-up and restart scenarios"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="directory for the JSON, Markdown and charts")  # fmt: skip
    parser.add_argument("--docs", action="store_true",
                        help="also write docs/performance.md and its charts")  # fmt: skip
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    parser.add_argument("--list", action="store_true", help="list default specs and scenarios")
    parser.set_defaults(mode="full")
    return parser


def _specs(args: argparse.Namespace, tmp: str) -> list[Spec]:
    specs = [parse_spec(expand(text, tmp)) for text in (args.spec or default_specs())]
    if args.family:
        specs = [s for s in specs if s.family in args.family]
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"two specs share the label(s) {duplicates}; name them LABEL=TARGET")
    return specs


def _references(args: argparse.Namespace) -> dict[str, str]:
    references = dict(DEFAULT_REFERENCES)
    for item in args.reference:
        family, sep, label = item.partition("=")
        if not sep:
            raise ValueError(f"--reference wants FAMILY=LABEL, got {item!r}")
        references[family] = label
    return references


def _shown(argv: list[str]) -> list[str]:
    """The command line without ``--out DIR``: where results went says nothing of the run."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            shown.append(arg)
    return shown


def _meta(args: argparse.Namespace, argv: list[str], mode: Any) -> dict[str, Any]:
    return {
        "command": "python -m benchmarks " + shlex.join(_shown(argv)),
        "mode": mode.name,
        "repeat": mode.repeat,
        "repeat_factor": dict(mode.repeat_factor),
        "params": mode.params.__dict__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "started": now(),
        "commit": _commit(),
    }


def _commit() -> str:
    """The checked-out commit (with ``+`` if the tree has changes), or "" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "layers"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return ""
    return head + ("+" if head and dirty else "")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the Markdown table; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.list:
        print("default specs:\n  " + "\n  ".join(default_specs()))
        print("scenarios:\n  " + "\n  ".join(SCENARIOS))
        return 0
    mode = MODES[args.mode]
    params = mode.params
    if args.messages:
        params = replace(params, messages=args.messages)
    if args.concurrency:
        params = replace(params, concurrency=args.concurrency)
    if args.backlog:
        params = replace(params, backlog=args.backlog)
    mode = replace(mode, params=params, repeat=args.repeat or mode.repeat)
    tmp = tempfile.mkdtemp(prefix="layers-bench-")
    try:
        specs = _specs(args, tmp)
        references = _references(args)
        meta = _meta(args, argv, mode)
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "workers.log", "w") as log:
            cells, statuses = run(specs, mode, args.scenario or list(SCENARIOS), tmp, log)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["finished"] = now()
    table = report.markdown(cells, specs, statuses, references, scratch=tmp)
    stamp = meta["started"]
    report.write_json(args.out / f"bench-{stamp}.json", meta, cells)
    (args.out / "latest.md").write_text(table)
    if not args.no_charts:
        report.write_charts(args.out, cells, specs, statuses)
    if args.docs:
        from benchmarks.docs import write_docs

        write_docs(ROOT, table, meta, cells, specs, statuses)
    print(table)
    print(f"results: {args.out / f'bench-{stamp}.json'}", file=sys.stderr)
    return 0
