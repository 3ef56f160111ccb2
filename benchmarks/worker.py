"""The worker process: one per spec, so each layer has its own process, memory and CPU.

``python -m benchmarks.worker serve SPEC_JSON TMP`` builds the layer once, on one
event loop kept for the worker's life, answers ``{"unavailable": reason}`` or
``{"ready": ...}``, then runs one scenario per JSON line read on stdin and writes
one JSON result line. Results go to the original stdout; anything a layer prints
goes to stderr, so it cannot corrupt the protocol.

``python -m benchmarks.worker produce SPEC_JSON TMP ARGS_JSON`` is the producer of
the cross-process scenario: it builds its own layer, prints ``ready``, waits for
``go`` on stdin, sends the messages and prints how many and its CPU seconds.
``rpc-server`` is the server of the cross-process request/reply scenario: it answers
requests until ``stop`` arrives on stdin, then prints its CPU seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from typing import Any, TextIO

from benchmarks.scenarios import Params, consume_fresh, run_scenario, serve_requests
from benchmarks.scenarios.cell import produce as produce_messages
from benchmarks.specs import Spec

__all__ = ["build_layer", "close_layer", "main"]


def _peer_config(spec: Spec) -> dict[str, Any]:
    config = dict(spec.config)
    if spec.target.startswith("channels_postgres.") and "NAME" not in config:
        from benchmarks.djangosetup import django_postgres_settings

        config.update(django_postgres_settings())
    return config


def _import(path: str) -> Any:
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


async def build_layer(spec: Spec, tmp: str) -> Any:
    """Build and start the layer a spec describes (raises if it cannot)."""
    if spec.kind == "baseline":
        from benchmarks.baselines import make_baseline

        layer = make_baseline(spec.target, tmp)
        await layer.start()
        return layer
    if spec.kind == "url":
        import layers

        return layers.from_url(spec.target)
    return _import(spec.target)(**_peer_config(spec))


async def prime(layer: Any) -> None:
    """One message through a fresh channel before any scenario, for every layer alike.

    Each layer's lazily started machinery (listeners, pools, reader tasks) then
    exists before a scenario's first burst of concurrent receives. channels_postgres
    needs it: a first receive that finds no listener running starts one, so a burst
    of first receives (the 100 consumers of the group scenario) opens a listener
    connection each, which can exhaust the server's connections and re-delivers the
    stored messages once per listener. That start-up defect is not what the
    throughput scenarios measure; every other layer only warms up a little earlier.
    Failures are ignored: a layer that cannot do this fails its scenarios visibly.
    """
    channel = f"bench.prime.{os.getpid()}"
    with contextlib.suppress(Exception):
        async with asyncio.timeout(10):
            await layer.send(channel, {"type": "bench.prime"})
            await layer.receive(channel)


def prepare(spec: Spec, tmp: str) -> None:
    """Synchronous set-up before the event loop runs: Django settings and migrations."""
    if spec.needs_django:
        from benchmarks.djangosetup import setup

        setup(spec.target.split(".", 1)[0], tmp)


def is_cross_process(spec: Spec, layer: Any) -> bool:
    """Whether the layer shares its store between OS processes (declared, never guessed)."""
    if spec.cross_process is not None:
        return spec.cross_process
    capabilities: frozenset[object] = getattr(layer, "capabilities", frozenset())
    return "cross_process" in {str(c) for c in capabilities}


async def flush_layer(layer: Any) -> None:
    """Empty the layer's store if it can (errors ignored: this is housekeeping)."""
    with contextlib.suppress(Exception):
        if "flush" in getattr(layer, "extensions", []):
            await asyncio.wait_for(layer.flush(), 10)


async def close_layer(layer: Any) -> None:
    """Flush and close a layer, ignoring errors (the run is over for it)."""
    await flush_layer(layer)
    await close_layer_quietly(layer)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _emit(out: TextIO, data: dict[str, Any]) -> None:
    out.write(json.dumps(data) + "\n")
    out.flush()


def _protocol_out() -> TextIO:
    """Keep the real stdout for the protocol; send everything else printed to stderr."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def serve(spec_json: str, tmp: str) -> int:
    """Serve scenario requests for one spec until stdin closes."""
    out = _protocol_out()
    spec = Spec.from_json(spec_json)
    loop = asyncio.new_event_loop()
    try:
        prepare(spec, tmp)
        layer = loop.run_until_complete(build_layer(spec, tmp))
        loop.run_until_complete(prime(layer))
    except BaseException as exc:
        _emit(out, {"unavailable": f"{type(exc).__name__}: {exc}"[:300]})
        return 0
    _emit(out, {"ready": True, "cross_process": is_cross_process(spec, layer), "rss_mb": _rss_mb()})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        try:
            loop.run_until_complete(flush_layer(layer))
            result = loop.run_until_complete(
                run_scenario(
                    request["scenario"],
                    layer,
                    Params(**request["params"]),
                    spec_json=spec_json,
                    tmp=tmp,
                )
            )
        except Exception as exc:  # the harness itself failed on this layer: say so
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
        result["rss_mb"] = _rss_mb()
        _emit(out, result)
    loop.run_until_complete(close_layer(layer))
    loop.close()
    return 0


async def _produce_main(
    spec: Spec, tmp: str, args: dict[str, Any], out: TextIO
) -> tuple[float, int]:
    layer = await build_layer(spec, tmp)
    out.write("ready\n")
    out.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu = time.process_time()
    deadline = time.perf_counter() + args["budget"]
    sent = await produce_messages(
        layer, args["channel"], 0, args["messages"], "x" * args["payload"], deadline
    )
    used = time.process_time() - cpu
    await close_layer_quietly(layer)
    return used, sent


async def close_layer_quietly(layer: Any) -> None:
    """Close without flushing: the consumer in the other process still reads."""
    for name in ("aclose", "close", "close_pools"):
        method = getattr(layer, name, None)
        if method is not None:
            with contextlib.suppress(Exception):
                result = method()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 10)
            return


async def _rpc_server_main(spec: Spec, tmp: str, args: dict[str, Any], out: TextIO) -> float:
    layer = await build_layer(spec, tmp)
    cpu = time.process_time()
    server = asyncio.create_task(serve_requests(layer, args["channel"]))
    out.write("ready\n")
    out.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    server.cancel()
    await asyncio.gather(server, return_exceptions=True)
    used = time.process_time() - cpu
    await close_layer_quietly(layer)
    return used


def rpc_server(spec_json: str, tmp: str, args_json: str) -> int:
    """Run the server side of the cross-process request/reply scenario until ``stop``."""
    out = _protocol_out()
    try:
        prepare(Spec.from_json(spec_json), tmp)
        used = asyncio.run(
            _rpc_server_main(Spec.from_json(spec_json), tmp, json.loads(args_json), out)
        )
    except Exception as exc:
        _emit(out, {"error": f"{type(exc).__name__}: {exc}"[:300]})
        return 1
    _emit(out, {"cpu_s": used})
    return 0


def produce(spec_json: str, tmp: str, args_json: str) -> int:
    """Run the producer side of the cross-process scenario."""
    out = _protocol_out()
    try:
        prepare(Spec.from_json(spec_json), tmp)
        used, sent = asyncio.run(
            _produce_main(Spec.from_json(spec_json), tmp, json.loads(args_json), out)
        )
    except Exception as exc:
        _emit(out, {"error": f"{type(exc).__name__}: {exc}"[:300]})
        return 1
    _emit(out, {"cpu_s": used, "sent": sent})
    return 0


async def _consume_main(spec: Spec, tmp: str, args: dict[str, Any]) -> dict[str, Any]:
    layer = await build_layer(spec, tmp)  # fresh and not primed: that is the point
    try:
        return await consume_fresh(
            layer, args["channels"], args["target"], args["stop_after"], args["idle"]
        )
    finally:
        await close_layer_quietly(layer)  # an exit, not a flush: the rest stays stored


def consume(spec_json: str, tmp: str, args_json: str) -> int:
    """Run the consumer side of the start-up and restart scenarios; report what arrived."""
    out = _protocol_out()
    try:
        spec = Spec.from_json(spec_json)
        prepare(spec, tmp)
        report = asyncio.run(_consume_main(spec, tmp, json.loads(args_json)))
    except Exception as exc:
        _emit(out, {"error": f"{type(exc).__name__}: {exc}"[:300]})
        return 1
    _emit(out, report)
    return 0


def main(argv: list[str]) -> int:
    """Entry point: ``serve SPEC TMP`` or ``produce SPEC TMP ARGS``."""
    if argv[:1] == ["serve"] and len(argv) == 3:
        return serve(argv[1], argv[2])
    if argv[:1] == ["produce"] and len(argv) == 4:
        return produce(argv[1], argv[2], argv[3])
    if argv[:1] == ["rpc-server"] and len(argv) == 4:
        return rpc_server(argv[1], argv[2], argv[3])
    if argv[:1] == ["consume"] and len(argv) == 4:
        return consume(argv[1], argv[2], argv[3])
    print(
        "usage: python -m benchmarks.worker serve SPEC TMP"
        " | {produce,rpc-server,consume} SPEC TMP ARGS",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
