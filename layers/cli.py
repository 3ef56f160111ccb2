"""The ``layers`` command: ``layers demo``, ``layers conformance URL``, ``layers backends``."""

from __future__ import annotations

import argparse
import sys

from layers.core.errors import ConfigurationError

__all__ = ["main"]


def _backends(argv: list[str]) -> int:
    from layers.core.registry import available_backends, get_backend

    argparse.ArgumentParser(prog="layers backends", description="List backends.").parse_args(argv)
    for name in available_backends():
        try:
            backend = get_backend(name)
        except ConfigurationError as exc:
            print(f"{name:16} unavailable: {exc.problem}")
            continue
        except ImportError as exc:
            print(f"{name:16} unavailable: {exc}")
            continue
        caps = ", ".join(sorted(c.value for c in backend.capabilities))
        print(f"{name:16} {backend.__module__}.{backend.__qualname__} [{caps}]")
    return 0


def _conformance(argv: list[str]) -> int:
    try:
        from layers.conformance_tests.cli import (  # type: ignore[import-not-found,unused-ignore]
            main as conformance_main,
        )
    except ImportError as exc:
        print(f"layers conformance needs pytest and hypothesis: {exc}", file=sys.stderr)
        print("pip install 'channel-layers[conformance]'", file=sys.stderr)
        return 2
    return int(conformance_main(argv))


def _demo(argv: list[str]) -> int:
    from layers.demo import main as demo_main

    return demo_main(argv)


def _inspect(argv: list[str]) -> int:
    from layers.inspector import main as inspect_main

    return inspect_main(argv)


COMMANDS = {
    "demo": (_demo, "run a live scenario: workers, reply channels, a group broadcast, FIFO"),
    "conformance": (_conformance, "run the conformance suite on a layer URL"),
    "backends": (_backends, "list the installed backends and their capabilities"),
    "inspect": (_inspect, "show the busiest channels and groups of a layer (--watch, --json)"),
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``layers`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: layers COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if args and args[0] in ("-h", "--help") else 2
    command, rest = COMMANDS[args[0]][0], args[1:]
    try:
        return command(rest)
    except ConfigurationError as exc:
        print(f"layers {args[0]}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
