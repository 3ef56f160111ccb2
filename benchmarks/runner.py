"""Run specs through scenarios, interleaved, one worker process per spec.

Specs are run family by family (memory, redis, postgres, sqlite, other). Within a
family every spec's worker is started first (imports, connections, migrations are
never timed), then each repetition runs each scenario on every spec in turn
(A B C, then B C A, ...), so the drift of a shared machine hits every spec alike.
Workers not being measured are frozen with SIGSTOP, so a peer's idle polling task
never slows down the spec being measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from benchmarks.scenarios import SCENARIOS, Params
from benchmarks.specs import FAMILIES, Spec, postgres_url, redis_url

__all__ = ["MODES", "Mode", "Worker", "run"]

ROOT = Path(__file__).resolve().parent.parent
_HELLO_TIMEOUT = 120.0


@dataclass(frozen=True)
class Mode:
    """How much work each scenario does and how often it repeats."""

    name: str
    repeat: int
    params: Params
    #: Families whose cells repeat this many times as often as ``repeat``.
    repeat_factor: dict[str, int] = field(default_factory=dict)


MODES = {
    "quick": Mode(
        "quick",
        1,
        Params(messages=200, budget=1.0, idle_timeout=2.0, cell_timeout=15.0, backlog=20),
    ),
    # Enough messages that the fastest layers run for a good part of the budget (at
    # 5,000 a memory layer's cell lasted under 50 ms, and a p99 was its 5th-worst of
    # 500 round trips); the slower layers stop at the budget, as before.
    "full": Mode(
        "full",
        3,
        Params(
            messages=50_000,
            budget=2.0,
            idle_timeout=5.0,
            cell_timeout=45.0,
            backlog=500,
            # A round of 5,000 64 KB messages took a memory layer 40 ms, and 5,000 round
            # trips 130 ms: one hiccup of the machine moved its rate by 20%, and its p99
            # by 5%. Those cells go on until half a second.
            min_seconds=0.5,
        ),
        # A memory cell lasts well under a second, so one slow stretch of a shared
        # machine (seen to move a request/reply p50 by half) can decide a median of
        # three; three times the repetitions cost seconds there and steady its medians.
        # Every layer of the family repeats alike.
        repeat_factor={"memory": 3},
    ),
}


def repeats(mode: Mode, family: str) -> int:
    """How many times the cells of ``family`` repeat in ``mode``."""
    return mode.repeat * mode.repeat_factor.get(family, 1)


class Worker:
    """A worker process measuring one spec (see :mod:`benchmarks.worker`)."""

    def __init__(self, spec: Spec, tmp: str, log: IO[str]) -> None:
        self.spec = spec
        env = dict(os.environ)
        # The harness is not installed: make it importable wherever we were started from.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONFAULTHANDLER"] = "1"  # a crash in C code leaves its traceback in the log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", "serve", spec.to_json(), tmp],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        self.status: dict[str, Any] = {}

    def hello(self) -> dict[str, Any]:
        """Wait for the worker's first line: ready, or unavailable with a reason."""
        line = self._readline(_HELLO_TIMEOUT)
        if line:
            self.status = json.loads(line)
        elif self.proc.poll() is None:
            self.status = {"unavailable": f"no answer in {_HELLO_TIMEOUT:g} s while starting"}
            self.proc.kill()
        else:
            self.status = {"unavailable": "the worker process exited (see workers.log)"}
        return self.status

    @property
    def available(self) -> bool:
        return bool(self.status.get("ready"))

    def pause(self) -> None:
        """Freeze the worker (SIGSTOP) so its idle background tasks cost the others nothing."""
        self._signal(getattr(signal, "SIGSTOP", None))

    def resume(self) -> None:
        """Let a paused worker run again (SIGCONT)."""
        self._signal(getattr(signal, "SIGCONT", None))

    def _signal(self, signum: int | None) -> None:
        if signum is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def run(self, scenario: str, params: Params) -> dict[str, Any]:
        """Run one scenario in the (resumed) worker and return its result; pause it again."""
        self.resume()
        try:
            return self._run(scenario, params)
        finally:
            self.pause()

    def _run(self, scenario: str, params: Params) -> dict[str, Any]:
        stdin = self.proc.stdin
        if stdin is None:
            raise RuntimeError("worker has no stdin")
        try:
            stdin.write(json.dumps({"scenario": scenario, "params": asdict(params)}) + "\n")
            stdin.flush()
        except OSError:
            pass  # the worker died: reported below
        line = self._readline(params.cell_timeout + 30)
        if not line:
            try:  # the pipe closes a moment before a dying process can be reaped
                code: int | None = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
                self.proc.kill()
            self.status = {"unavailable": "the worker process died during a scenario"}
            error = "worker hung, killed" if code is None else f"worker died ({_exit(code)})"
            return {"status": "error", "error": error}
        result: dict[str, Any] = json.loads(line)
        return result

    def _readline(self, timeout: float) -> str:
        """One line from the worker, or "" if it exits or says nothing for ``timeout`` s."""
        stdout = self.proc.stdout
        if stdout is None:
            return ""
        if os.name == "posix":  # pipes are selectable there; elsewhere, trust the worker
            ready, _, _ = select.select([stdout], [], [], timeout)
            if not ready:
                return ""
        return stdout.readline()

    def stop(self) -> None:
        """Ask the worker to close its layer and exit; kill it if it hangs."""
        self.resume()
        try:
            if self.proc.stdin is not None and self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a dead worker's unread input
                    pipe.close()


def _exit(code: int) -> str:
    """How a process ended, from its return code: "exit code 1", "signal SIGSEGV"."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


#: Scenarios a bare-driver baseline does not take part in: reply channels and groups,
#: and the start-up and restart scenarios, which test a layer's own machinery.
_LAYER_ONLY = (
    "request_reply", "group", "cross_process_rr", "cross_process_startup",
    "cross_process_restart",
)  # fmt: skip


def _cell(worker: Worker, scenario: str, params: Params, rep: int, echo: bool) -> dict[str, Any]:
    spec = worker.spec
    base = {"spec": spec.label, "family": spec.family, "scenario": scenario, "rep": rep}
    if not worker.available:
        result = {"status": "unavailable", "error": worker.status.get("unavailable", "")}
    elif scenario.startswith("cross_process") and not worker.status.get("cross_process"):
        result = {"status": "n/a", "error": "not cross-process"}
    elif spec.kind == "baseline" and scenario in _LAYER_ONLY:
        result = {"status": "n/a", "error": "no reply channels or groups in a bare driver"}
    else:
        result = worker.run(scenario, params)
    if echo:
        _echo(base, result)
    return {**base, **result}


def _echo(base: dict[str, Any], result: dict[str, Any]) -> None:
    status = result.get("status")
    if status in ("ok",):
        rate = result.get("delivered", 0) / result["seconds"] if result.get("seconds") else 0
        note = f"{rate:,.0f}/s"
        bad = [k for k in ("lost", "duplicated", "reordered") if result.get(k)]
        if bad:
            note += " " + ", ".join(f"{k} {result[k]}" for k in bad)
    elif status == "n/a":
        return
    else:
        note = f"{status}: {result.get('error', '')}"[:120]
    print(f"  {base['spec']:<24} {base['scenario']:<14} rep {base['rep']}  {note}", file=sys.stderr)


def run(
    specs: list[Spec],
    mode: Mode,
    scenarios: list[str],
    tmp: str,
    log: IO[str],
    *,
    echo: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Run every spec through every scenario; return (cells, spec statuses)."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    cells: list[dict[str, Any]] = []
    statuses: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        members = [s for s in specs if s.family == family]
        if not members:
            continue
        down = _server_down(family)
        if down:
            statuses.update({s.label: {"unavailable": down} for s in members})
            cells += [
                _down_cell(s, sc, rep, down)
                for rep in range(repeats(mode, family))
                for s in members
                for sc in scenarios
            ]
            if echo:
                print(f"[{family}] skipped: {down}", file=sys.stderr)
            continue
        if echo:
            print(f"[{family}] starting {len(members)} workers", file=sys.stderr)
        workers = [Worker(spec, tmp, log) for spec in members]
        try:
            for worker in workers:
                statuses[worker.spec.label] = worker.hello()
                worker.pause()  # idle workers must not steal CPU from the measured one
            for rep in range(repeats(mode, family)):
                for scenario in scenarios:
                    shift = (rep + scenarios.index(scenario)) % len(workers)
                    for worker in workers[shift:] + workers[:shift]:
                        cells.append(_cell(worker, scenario, mode.params, rep, echo))
        finally:
            for worker in workers:
                worker.stop()
    return cells, statuses


def _server_down(family: str) -> str:
    """Why a family's server cannot be reached ("" when it can, or needs none)."""
    urls = {"redis": (redis_url(), 6379), "postgres": (postgres_url(), 5432)}
    if family not in urls:
        return ""
    url, default_port = urls[family]
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or default_port)
    try:
        with socket.create_connection(address, timeout=3):
            return ""
    except OSError as exc:
        return f"no {family} server at {address[0]}:{address[1]} ({exc.strerror or exc})"


def _down_cell(spec: Spec, scenario: str, rep: int, reason: str) -> dict[str, Any]:
    base = {"spec": spec.label, "family": spec.family, "scenario": scenario, "rep": rep}
    return {**base, "status": "unavailable", "error": reason}


def now() -> str:
    """UTC timestamp for result file names."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
