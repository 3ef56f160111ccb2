"""The polling-consumer scenario: how much does a consumer that polls with a timeout lose?

``python -m benchmarks.polling [--seconds S] [--timeout T] [SPEC ...]``

For each cross-process layer (ours and the peers; the default specs of
:func:`benchmarks.specs.default_specs`), one run is:

- a *steady* consumer process that receives in a bare loop;
- a *polling* consumer process that wraps every receive in
  ``asyncio.wait_for(..., T)`` (5 ms by default), as code that polls does, and exits
  cleanly (closing its layer) after ``S`` seconds;
- this process sending numbered messages at a steady pace (``--rate``, 1000 a second)
  for ``S + 1`` seconds, at each layer's default capacity, waiting for room when a
  channel is full (so every number is sent).

When the steady consumer has been quiet for a second, the run counts what was
sent, what each consumer received, what was lost (received by nobody) and what was
duplicated. A layer that keeps popping for cancelled receives takes messages meant
for the steady consumer and loses what it still holds when the poller exits.

Internal modes, one process each: ``python -m benchmarks.polling consume
SPEC_JSON TMP MODE SECONDS TIMEOUT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from typing import Any

from benchmarks.specs import Spec, default_specs, expand, parse_spec
from benchmarks.worker import build_layer, close_layer_quietly, is_cross_process, prepare

__all__ = ["main", "run_one"]


async def _consume(spec: Spec, tmp: str, mode: str, seconds: float, timeout: float) -> None:
    layer = await build_layer(spec, tmp)
    channel = "bench.polling"
    got: list[int] = []
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    quiet = 1.0
    while True:
        if mode == "poll":
            if loop.time() >= end:
                break
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout)
            except TimeoutError:
                continue
        else:
            try:
                async with asyncio.timeout(seconds + 30 if not got else quiet + 1.0):
                    message = await layer.receive(channel)
            except TimeoutError:
                break
        got.append(int(message["i"]))
    await close_layer_quietly(layer)
    print(json.dumps({"got": got}), flush=True)


async def _spawn(spec: Spec, tmp: str, mode: str, seconds: float, timeout: float) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.polling",
        "consume",
        spec.to_json(),
        tmp,
        mode,
        str(seconds),
        str(timeout),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line.strip():
        raise RuntimeError(f"{spec.label}: the {mode} consumer did not start")
    return proc


async def _collect(proc: Any) -> list[int]:
    out, _ = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith('{"got"')]
    if not lines:
        raise RuntimeError(f"a consumer failed (exit {proc.returncode})")
    got: list[int] = json.loads(lines[-1])["got"]
    return got


async def _send(layer: Any, i: int) -> None:
    """Send message ``i``, waiting for room when the channel is full (nothing skipped)."""
    while True:
        try:
            await layer.send("bench.polling", {"i": i})
            return
        except Exception as exc:
            if type(exc).__name__ != "ChannelFull":
                raise
            await asyncio.sleep(0.001)


async def run_one(
    spec: Spec, tmp: str, seconds: float, timeout: float, rate: float = 1000
) -> dict[str, Any]:
    """Run the scenario for one layer (already :func:`prepare`-d); return its counts."""
    layer = await build_layer(spec, tmp)
    try:
        if not is_cross_process(spec, layer):
            return {"layer": spec.label, "skipped": "not cross-process"}
        steady = await _spawn(spec, tmp, "steady", seconds, timeout)
        poller = await _spawn(spec, tmp, "poll", seconds, timeout)
        sent = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds + 1:
            await _send(layer, sent)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        polled, steadied = await _collect(poller), await _collect(steady)
    finally:
        await close_layer_quietly(layer)
    everything = polled + steadied
    return {
        "layer": spec.label,
        "sent": sent,
        "polling consumer": len(polled),
        "steady consumer": len(steadied),
        "lost": len(set(range(sent)) - set(everything)),
        "duplicated": len(everything) - len(set(everything)),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the scenario for every given (or default) cross-process spec; print a table."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["consume"]:
        spec = Spec.from_json(args[1])
        prepare(spec, args[2])
        asyncio.run(_consume(spec, args[2], args[3], float(args[4]), float(args[5])))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.polling", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the poller polls")
    parser.add_argument("--timeout", type=float, default=0.005, help="the poller's timeout")
    parser.add_argument("--rate", type=float, default=1000, help="messages sent per second")
    parser.add_argument("specs", nargs="*", help="layer specs (default: ours and the peers)")
    options = parser.parse_args(args)
    texts = options.specs or [s for s in default_specs() if "baseline:" not in s]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in texts:
            spec = parse_spec(expand(text, tmp))
            try:
                prepare(spec, tmp)
                limit = options.seconds + 90  # a hung layer is reported, not waited for
                run = run_one(spec, tmp, options.seconds, options.timeout, options.rate)
                row = asyncio.run(asyncio.wait_for(run, limit))
            except Exception as exc:  # a peer that cannot run is reported, not fatal
                row = {"layer": spec.label, "skipped": f"{type(exc).__name__}: {exc}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| layer | sent | polling consumer | steady consumer | lost | duplicated |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if "skipped" in row:
            continue
        print(
            f"| {row['layer']} | {row['sent']} | {row['polling consumer']} |"
            f" {row['steady consumer']} | {row['lost']} ({row['lost'] / row['sent']:.0%}) |"
            f" {row['duplicated']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
