"""The scenarios: the same workloads for every layer, each counting what went wrong.

Every scenario returns a result dict with its speed *and* its correctness counters:
``lost`` (sent, never received before the idle timeout), ``duplicated`` (received
more than once) and ``reordered`` (received after a later message of the same
producer). Before the clock starts, a warm-up message is sent to every consumer
until it arrives, so subscriptions and reader tasks exist for every layer alike.

A layer here is anything with the Channels layer API (``send``, ``receive``,
``new_channel``, ``group_add``, ``group_send``); a baseline may add ``send_batch``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.scenarios.cell import WARM, Params, Tally
from benchmarks.scenarios.groups import group_fanout
from benchmarks.scenarios.processes import (
    consume_fresh,
    cross_process,
    cross_process_request_reply,
    cross_process_restart,
    cross_process_startup,
)
from benchmarks.scenarios.requests import request_reply, serve_requests
from benchmarks.scenarios.streams import concurrent, payload_1k, payload_64k, sequential

__all__ = [
    "SCENARIOS",
    "WARM",
    "Params",
    "Tally",
    "consume_fresh",
    "run_scenario",
    "serve_requests",
]


SCENARIOS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "sequential": sequential,
    "concurrent": concurrent,
    "request_reply": request_reply,
    "group": group_fanout,
    "payload_1k": payload_1k,
    "payload_64k": payload_64k,
    "cross_process": cross_process,
    "cross_process_rr": cross_process_request_reply,
    "cross_process_startup": cross_process_startup,
    "cross_process_restart": cross_process_restart,
}


async def run_scenario(
    name: str, layer: Any, params: Params, *, spec_json: str = "", tmp: str = ""
) -> dict[str, Any]:
    """Run one scenario under the cell timeout; errors become the cell's status, never a crash."""
    func = SCENARIOS[name]
    kwargs = {"spec_json": spec_json, "tmp": tmp} if name.startswith("cross_process") else {}
    cpu = time.process_time()
    try:
        async with asyncio.timeout(params.cell_timeout):
            result = await func(layer, params, **kwargs)
        result["status"] = "ok"
    except TimeoutError:
        result = {"status": "timeout", "error": f"timeout after {params.cell_timeout:g} s"}
    except Exception as exc:
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["cpu_s"] = time.process_time() - cpu + result.get("child_cpu_s", 0.0)
    return result
