"""The ``layers`` command: ``layers COMMAND [options]``; ``layers --help`` lists the commands.

An unknown command exits with status 2, naming the valid ones and the closest match.
A subcommand's configuration error or :class:`~layers.cli_common.CommandError` is
printed as one line (no traceback, no password from the command line); status 2.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from layers.cli_common import CommandError, CommandParser, redact
from layers.core.errors import ConfigurationError

__all__ = ["main"]


#: A complete URL of each built-in scheme: ``layers backends`` asks the backend to
#: parse it, so a scheme whose backend cannot build a layer yet shows as unavailable.
EXAMPLE_URLS = {
    "memory": "memory://",
    "redis": "redis://localhost:6379/0",
    "rediss": "rediss://localhost:6379/0",
    "unix": "unix:///run/redis.sock?db=0",
    "redis+sentinel": "redis+sentinel://localhost:26379/mymaster/0",
    "redis+cluster": "redis+cluster://localhost:7000",
    "postgresql": "postgresql://localhost/app",
    "postgres": "postgres://localhost/app",
    "sqlite": "sqlite:///layers.db",
}


def _backends(argv: list[str]) -> int:
    from layers.core.registry import available_backends, get_backend

    CommandParser(
        prog="layers backends",
        description="List the backends and whether each can build a layer here.",
    ).parse_args(argv)
    for name in available_backends():
        try:
            backend = get_backend(name)
            # Parsing a complete URL of the scheme does no I/O; a scheme the backend
            # does not support (yet) refuses here, as it would in from_url().
            backend.options_from_url(EXAMPLE_URLS.get(name, f"{name}://"))
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
    # Imports without pytest and hypothesis: the command checks for them after
    # parsing its arguments, so --help works without them.
    from layers.conformance_tests.cli import main as conformance_main

    return conformance_main(argv)


def _demo(argv: list[str]) -> int:
    from layers.demo import main as demo_main

    return demo_main(argv)


def _worker(argv: list[str]) -> int:
    from layers.cli_worker import main as worker_main

    return worker_main(argv)


def _serve(argv: list[str]) -> int:
    from layers.cli_serve import main as serve_main

    return serve_main(argv)


def _inspect(argv: list[str]) -> int:
    from layers.inspector import main as inspect_main

    return inspect_main(argv)


COMMANDS = {
    "demo": (_demo, "run a live scenario: workers, reply channels, a group broadcast, FIFO"),
    "conformance": (_conformance, "run the conformance suite on a layer URL"),
    "backends": (_backends, "list the installed backends and their capabilities"),
    "worker": (_worker, "run a worker: receive on routed channels and run their consumers"),
    "serve": (_serve, "run an interface server: HTTP and WebSocket to messages (uvicorn)"),
    "inspect": (_inspect, "show the busiest channels and groups of a layer (--watch, --json)"),
}


def main(argv: list[str] | None = None) -> int:
    """Run the ``layers`` command; a reader that stops early (``| head``) ends it quietly."""
    try:
        try:
            return _main(argv)
        finally:  # also after argparse's SystemExit (--help, usage errors)
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away: say nothing more, and keep the interpreter's own
        # flush at exit from failing again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by the signal


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return argparse.ArgumentParser(
        prog="layers",
        usage="layers COMMAND [options]",
        description="channel-layers: run, test and look inside channel layers.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nlayers COMMAND --help shows its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _unknown(parser: argparse.ArgumentParser, word: str) -> int:
    """Say, as argparse does, that ``word`` is no command: name them and the closest one."""
    close = difflib.get_close_matches(word, COMMANDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    kind = "option" if word.startswith("-") else "command"
    parser.print_usage(sys.stderr)
    print(
        f"layers: error: unknown {kind} {word!r}{hint}; commands: {', '.join(COMMANDS)}",
        file=sys.stderr,
    )
    return 2


def _main(argv: list[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not args:
        parser.print_usage(sys.stderr)
        print(parser.epilog, file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"layers (channel-layers) {version('channel-layers')}")
        return 0
    if args[0] not in COMMANDS:
        return _unknown(parser, args[0])
    command, rest = COMMANDS[args[0]][0], args[1:]
    try:
        return command(rest)
    except (ConfigurationError, CommandError) as exc:
        # Whatever the message quotes, no password from the command line (or from
        # LAYERS_URL) is shown.
        words = [*rest, os.environ.get("LAYERS_URL", "")]
        print(f"layers {args[0]}: {redact(str(exc), words)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
