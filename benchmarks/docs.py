"""Write the documentation's Performance page from a run (``python -m benchmarks --docs``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import write_charts
from benchmarks.specs import Spec

__all__ = ["write_docs"]

_INTRO = """\
# Performance

Speed claims here are measured side by side: every layer below ran on the same
machine, in the same run, through the same scenarios, interleaved (A B C, then
B C A, ...) so that the drift of a shared machine hits all of them alike. Absolute
numbers drift from run to run; the ratios are what to read.

**This page is one {mode} run on a {cpus}-core machine shared with other work**
(Python {python}, {platform}). Expect other machines to give other numbers and
similar ratios. Redis and PostgreSQL ran on the same host as the clients.

Made at commit `{commit}` (a `+` means with uncommitted changes under `layers/`) with:

```console
$ {command}
```

(`nox -s bench -- --full --docs` runs the same command in the benchmark
environment, where the peers are installed from PyPI.)

## How to read the tables

- One table per backend family; the columns are our layer, the peers (other
  packages' channel layers) and bare-driver baselines (the driver alone moving a
  msgpack payload: the ceiling a layer over that driver can approach).
- Each cell is the median over {repeat} repetition(s){factors}, and in brackets its ratio to
  the family's reference (marked *ref*). Ratios always read "times better":
  throughput divided by the reference's, the reference's latency divided by this one's.
- Every scenario counts **lost**, **duplicated** and **reordered** messages; a cell
  with any shows **WRONG** and the counts next to its speed. A fast wrong answer is
  not a fast answer.
- A peer that fails a scenario shows the error (or timeout) in its cell; `n/a` means
  the layer does not offer what the scenario needs (a baseline has no groups and no
  reply channels; an in-process layer has no cross-process variant).
- Under each table, the geometric mean of each layer's ratios to the reference;
  when the reference failed or answered wrongly in some scenario, a second mean
  leaves those scenarios out, since a ratio to a run that lost messages compares
  nothing.

## Scenarios

| scenario | what it does |
|---|---|
| sequential | one producer task, one consumer task, one channel, 16-byte bodies |
| concurrent | N = {concurrency} producers and N consumers on N channels |
| request/reply | request to a server channel, reply on a fresh `new_channel()`: p50, p99 |
| group_send | `group_send` to a group of {group_size} reply channels, each with its own consumer |
| 1 KB / 64 KB payload | sequential with bigger bodies (64 KB: in rounds, see below) |
| cross-process | the producer in another OS process (only for layers that declare it) |
| cross-process request/reply | request/reply with the server in another OS process |
| start-up burst | a backlog on 20 channels; a fresh OS process starts 20 consumers at once |
| consumer restart | a process takes half of a backlog and exits; a new one takes the rest |

Each scenario sends up to {messages} messages (a tenth as many round trips; 100
deliveries per `group_send`) or stops sending after {budget:g} s, whichever comes
first, then waits for the consumers; the rate is what was delivered divided by the
time from the first send to the last delivery. The start-up and restart scenarios
queue a backlog of {backlog} messages before their consumers start.
{rounds}

"CPU s per 1,000 msg" is the client processes' CPU time (user + system, all
threads, the producer process included in the cross-process scenario) over every
successful scenario, divided by the messages delivered; the servers' CPU is not
counted. "peak RSS" is the peak resident memory of the process that ran the layer.
Before its first scenario every layer moves one message through a fresh channel,
and before the clock starts a warm-up message reaches every consumer, so
subscriptions, reader tasks and connections exist for every layer alike (the
start-up and restart scenarios alone use fresh, unwarmed layers in new processes).
Consumers call ``receive`` in a bare loop, with no timer per message, so the
harness adds as little as it can to what it measures. Each layer gets a capacity
of 100,000 where it has one, so no scenario measures back-pressure.

## Results

"""

_OUTRO = """
## Charts

![Throughput per scenario, one panel per family](_static/bench/throughput.png)

![Request/reply latency, p50 and p99](_static/bench/latency.png)

## Contract violations seen in this run

{violations}

## How the peers were set up

- Every peer is the current PyPI release, installed only into the benchmark
  environment (`nox -s bench`); none is a dependency of channel-layers.
- `channels-inmemory` is Django Channels' `InMemoryChannelLayer`; `channels_redis` and
  `channels_redis-pubsub` are channels_redis' `RedisChannelLayer` and
  `RedisPubSubChannelLayer`, on the same Redis database as ours (other key prefixes).
  The pub/sub layer keeps nothing for a channel without a subscriber; the warm-up
  makes sure every consumer is subscribed before the clock starts.
- `channels_postgres`, `channels-sqlite` and `channels-lite-aio` store messages through
  Django models: the harness configures a minimal Django project, gives each peer its
  own database (its own PostgreSQL schema, its own SQLite file) and runs `migrate`
  before anything is timed. `channels-sqlite` polls every 10 ms (its default is 100 ms);
  `channels-lite-aio` is channels-lite's aiosqlite layer with its defaults.
- Baselines: `redis-lpush-brpop` (one `LPUSH` per send, one `BRPOP` per receive),
  `redis-pipelined` (pipelined batches of 100 `LPUSH`, `RPOP key 100` to drain),
  `psycopg-skip-locked` (`INSERT`; `DELETE ... FOR UPDATE SKIP LOCKED ... RETURNING`,
  polling every 2 ms when empty), `aiosqlite-returning` (`INSERT`;
  `DELETE ... RETURNING` in WAL mode, polling every 2 ms when empty). They have no
  groups, reply channels, expiry or capacity.
- `layers-postgres-prefetch` is our PostgreSQL layer with `prefetch=100` (a process
  claims up to 100 messages of a normal channel per statement and holds them for
  its own consumers); every other layer of ours runs with its defaults.
- In the single-process scenarios (sequential, payloads, request/reply) the consumer
  runs in the producer's process. There our PostgreSQL layer hands a send to the
  process's own waiting receive when the channel holds nothing ahead of it, without
  storing it (docs/backends/postgres.md, "Handing a send to a waiting receive"). So
  those rows measure that path, one read-only statement per message. The cross-process
  rows measure the table path, where every message is stored and claimed.
- While one layer is measured, the worker processes of the others are frozen
  (`SIGSTOP`), so no idle polling task of one layer slows down another.

The three tiers (an HTTP request through the interface server, the layer and a worker,
against the same handler served directly) are measured separately: see
[](performance-tiers.md).

## Running it yourself

```console
$ nox -s bench -- --quick            # seconds: a small run of every spec
$ nox -s bench -- --full             # minutes: the run on this page
$ python -m benchmarks --quick --family redis
$ python -m benchmarks --quick --spec layers-redis=redis://127.0.0.1:6379/8 \\
      --spec 'peer=channels_redis.core.RedisChannelLayer:{{"hosts": ["redis://127.0.0.1:6379/8"]}}'
```

A spec is a URL, a dotted class path with an optional JSON object of keyword
arguments, or `baseline:NAME`. Results (every repetition, as JSON), the Markdown
table and the charts go to `benchmarks/results/`. The servers are found through
`LAYERS_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379/8`) and
`LAYERS_BENCH_POSTGRES_URL` (default `postgresql://postgres@127.0.0.1:5432/test`);
every layer writes to its own keys, schema or file. A layer whose import or set-up
fails is reported as unavailable, with the reason, instead of being left out.
"""


def _violations(cells: list[dict[str, Any]]) -> str:
    lines = []
    for cell in cells:
        counts = {k: cell.get(k, 0) for k in ("lost", "duplicated", "reordered") if cell.get(k)}
        if counts:
            what = ", ".join(f"{k} {v}" for k, v in counts.items())
            lines.append(
                f"- `{cell['spec']}`, {cell['scenario']}, repetition {cell['rep']}: {what}"
            )
    return "\n".join(lines) if lines else "None."


def _factors(repeat: int, factors: dict[str, int]) -> str:
    """The clause on families that repeat more often (their cells last under a second)."""
    if not factors:
        return ""
    listed = ", ".join(f"{repeat * k} for the {family} family" for family, k in factors.items())
    return f" ({listed}, whose cells last under a second each)"


def _rounds(min_seconds: float) -> str:
    """The sentence on the 64 KB scenario's rounds."""
    text = (
        "The 64 KB scenario sends a tenth of the messages per round, so that a producer\n"
        "that outruns its consumer never queues gigabytes"
    )
    if min_seconds <= 0:
        return text + "; it runs one round."
    return text + (
        f"; a layer that delivers a whole\nround in less than {min_seconds:g} s runs more"
        " rounds, each on a fresh channel,\nuntil their timed parts add up to that (for no"
        " longer than the cell's\nbudget in wall time), and its rate is what all rounds"
        " delivered over their\nadded times. A request/reply cell that finishes its round"
        f" trips in less than\n{min_seconds:g} s goes on until then, within the same budget."
    )


def write_docs(
    root: Path,
    table: str,
    meta: dict[str, Any],
    cells: list[dict[str, Any]],
    specs: list[Spec],
    statuses: dict[str, dict[str, Any]],
) -> Path:
    """Write ``docs/performance.md`` and ``docs/_static/bench/*.png``; return the page's path."""
    write_charts(root / "docs" / "_static" / "bench", cells, specs, statuses)
    params = meta["params"]
    intro = _INTRO.format(
        mode=meta["mode"],
        cpus=meta["cpus"],
        python=meta["python"],
        platform=meta["platform"],
        command=meta["command"],
        repeat=meta["repeat"],
        factors=_factors(meta["repeat"], meta.get("repeat_factor", {})),
        messages=params["messages"],
        concurrency=params["concurrency"],
        group_size=params["group_size"],
        budget=params["budget"],
        backlog=params["backlog"],
        rounds=_rounds(params.get("min_seconds", 0.0)),
        commit=meta.get("commit") or "unknown",
    )
    page = root / "docs" / "performance.md"
    page.write_text(
        intro + table.replace("### ", "### Family: ") + _OUTRO.format(violations=_violations(cells))
    )
    return page
