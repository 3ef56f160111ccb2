"""A newcomer's first hour with the ``layers`` command, run for real in subprocesses.

Wrong input of every kind gets one clear line and a usage exit status: never a
traceback, never a password from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import layers

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3tpw"
COMMANDS = ["demo", "conformance", "backends", "worker", "serve", "inspect"]


def _layers(
    *args: str, cwd: Path = ROOT, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def _spare_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fill(url: str) -> None:
    async def fill() -> None:
        async with layers.from_url(url) as layer:
            await layer.send("jobs", {"n": 1})

    asyncio.run(fill())


# -- 1. inspect creates nothing ------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--json"], ["--watch", "--count", "1"]])
def test_inspect_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path, extra: list[str]) -> None:
    path = tmp_path / "nope.db"
    done = _layers("inspect", f"sqlite:///{path}", *extra)
    assert done.returncode == 2, done.stdout + done.stderr
    expected = f"no layer at sqlite:///{path}: {path} does not exist (nothing was created)"
    assert done.stderr == f"layers inspect: {expected}\n"
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_inspect_of_a_file_that_is_no_layer_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    path.write_bytes(b"")
    done = _layers("inspect", f"sqlite:///{path}")
    assert done.returncode == 2
    assert "holds no channel layer" in done.stderr
    assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_inspect_of_a_missing_postgres_schema_creates_nothing() -> None:
    psycopg = pytest.importorskip("psycopg")
    base = os.environ.get("LAYERS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        psycopg.connect(base, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {base}: {exc}")
    schema = f"layers_nc_{uuid.uuid4().hex[:8]}"
    try:
        done = _layers("inspect", f"{base}?schema={schema}")
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"the schema {schema!r} does not exist (nothing was created)" in done.stderr
        with psycopg.connect(base) as conn:
            row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,))
            assert row.fetchone() == (0,)
    finally:  # a regression must not leave a schema behind in the shared database
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- 2. --watch URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        ["--watch", "{url}"],
        ["--watch", "0.1", "{url}"],
        ["{url}", "--watch"],
        ["--watch=0.1", "{url}"],
    ],
)
def test_watch_takes_an_optional_interval_before_the_url(tmp_path: Path, form: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/watched.db"
    _fill(url)
    args = [word.format(url=url) for word in form]
    started = time.monotonic()
    done = _layers("inspect", *args, "--count", "2", "--json")
    assert done.returncode == 0, done.stderr
    frames = [json.loads(line) for line in done.stdout.splitlines()]
    assert [frame["pending"] for frame in frames] == [1, 1]
    if "0.1" not in " ".join(form):
        assert time.monotonic() - started >= 2.0  # the default interval


def test_watch_with_a_bad_interval_says_so(tmp_path: Path) -> None:
    done = _layers("inspect", "--watch", "soon", f"sqlite:///{tmp_path}/x.db")
    assert done.returncode == 2
    assert "argument --watch: SECONDS must be a number, not 'soon'" in done.stderr
    helped = _layers("inspect", "--help")
    assert "--watch [SECONDS]" in helped.stdout
    assert helped.stdout.splitlines()[0].endswith("URL")


# -- 3. serve without a worker -------------------------------------------------------------


def test_serve_on_memory_without_routing_refuses_at_once() -> None:
    started = time.monotonic()
    done = _layers("serve", "--url", "memory://", "--port", str(_spare_port()), timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - started < 20
    (line,) = done.stderr.splitlines()
    assert "keeps messages inside this process" in line
    assert "--routing" in line


def test_serve_without_uvicorn_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "uvicorn.py").write_text("raise ImportError('No module named uvicorn')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = _layers("serve", "--url", "memory://", env={"PYTHONPATH": path}, timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == "layers serve: needs uvicorn: pip install 'channel-layers[serve]'"


def test_worker_on_memory_refuses_at_once() -> None:
    done = _layers("worker", "tests.cli.test_first_hour:nothing", "--url", "memory://")
    assert done.returncode == 2
    assert "keeps messages inside one process" in done.stderr
    assert "layers serve --url memory:// --routing" in done.stderr


@contextlib.contextmanager
def _serving(*args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = _spare_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "layers", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        proc.kill()


def test_a_504_logs_that_no_worker_consumes_http_request(tmp_path: Path) -> None:
    with _serving("--url", f"sqlite:///{tmp_path}/served.db", "--timeout", "1") as (base, proc):
        answer = httpx.get(f"{base}/", timeout=30)
        assert answer.status_code == 504
    output = proc.communicate()[0]
    assert "no answer to a request in 1.0 s (504)" in output
    assert "1 http.request message(s) wait unread" in output
    assert "no worker consumes http.request on this layer" in output


def test_serve_on_an_unreachable_layer_warns_and_answers_503() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{_spare_port()}/0"
    with _serving("--url", url) as (base, proc):
        answer = httpx.get(f"{base}/", timeout=30)
        assert answer.status_code == 503
    output = proc.communicate()[0]
    assert "layers serve: warning: cannot use the layer at redis://:***@" in output
    assert "the channel layer failed (503)" in output
    assert "Traceback" not in output
    assert SECRET not in output


# -- 4. the liveblog's Django variant --------------------------------------------------------


def test_the_django_liveblog_migrates_from_a_fresh_checkout(tmp_path: Path) -> None:
    pytest.importorskip("django")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "examples.liveblog.django_variant.settings",
        "LIVEBLOG_DATABASE": str(tmp_path / "liveblog.sqlite3"),
    }
    django = [sys.executable, "-m", "django"]
    check = [*django, "makemigrations", "--check", "--dry-run"]
    missing = subprocess.run(check, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert missing.returncode == 0, missing.stdout + missing.stderr
    assert "No changes detected" in missing.stdout
    done = subprocess.run(
        [*django, "migrate"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Applying liveblog.0001_initial... OK" in done.stdout
    assert "have changes that are not yet reflected" not in done.stdout + done.stderr


# -- 5. unknown commands -------------------------------------------------------------------


def test_an_unknown_command_names_the_commands_and_a_close_match() -> None:
    done = _layers("nosuch")
    assert done.returncode == 2
    assert "layers: error: unknown command 'nosuch'; commands: " + ", ".join(COMMANDS) in (
        done.stderr
    )
    close = _layers("inspct", "redis://")
    assert "unknown command 'inspct' (did you mean 'inspect'?)" in close.stderr
    option = _layers("demo", "--prosesses", "2")
    assert option.returncode == 2
    assert "unrecognized arguments: --prosesses 2 (did you mean --processes?)" in option.stderr


# -- 6. help reads as plain text -----------------------------------------------------------


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_help_reads_as_plain_text(command: list[str]) -> None:
    done = _layers(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: layers" in done.stdout
    assert "`" not in done.stdout, done.stdout
    assert ":class:" not in done.stdout
    assert ":func:" not in done.stdout


# -- wrong input, one line each ------------------------------------------------------------


def _wrong_inputs() -> list[tuple[list[str], int, str]]:
    spare = _spare_port()
    redis_down = f"redis://:{SECRET}@127.0.0.1:{spare}/0"
    pg_down = f"postgresql://postgres:{SECRET}@127.0.0.1:{spare}/test"
    bad_port = f"redis://:{SECRET}@127.0.0.1:notaport/0"
    return [
        (["demo", "--url", "foo://x"], 2, "unknown backend 'foo'"),
        (["demo", "--url", redis_down], 2, "cannot use the layer at redis://:***@127.0.0.1"),
        (["demo", "--url", bad_port], 2, "Port could not be cast to integer"),
        (["demo", "--url", f"sqlite://u:{SECRET}@host/x.db"], 2, "sqlite URLs take no host"),
        (["demo", "--requests", "0"], 2, "--requests: N must be at least 1"),
        (["inspect", f"rediss://:{SECRET}@[::1"], 2, "Invalid IPv6 URL"),
        (["inspect", redis_down], 1, "the store failed"),
        (["inspect", pg_down], 1, "cannot connect to PostgreSQL"),
        (["inspect", "--limit", "0", "memory://"], 2, "--limit: N must be at least 1"),
        (["inspect"], 2, "the following arguments are required: URL"),
        (["worker", "x:y", "--url", bad_port], 2, "Port could not be cast to integer"),
        (["worker", "nowhere.mod:routing", "--url", "sqlite:///w.db"], 2, "cannot import"),
        (["serve", "--url", bad_port], 2, "Port could not be cast to integer"),
        (["serve", "--url", "sqlite:///s.db", "--port", "70000"], 2, "a port is 0 to 65535"),
        (["serve", "--url", "sqlite:///s.db", "--routing", "no.where:r"], 2, "cannot import"),
        (["conformance", f"sqlite://u:{SECRET}@host/x.db"], 2, "sqlite URLs take no host"),
        (["backends", "--bogus"], 2, "unrecognized arguments: --bogus"),
    ]


@pytest.mark.parametrize(
    ("args", "status", "says"), _wrong_inputs(), ids=lambda v: str(v)[:40] if v else ""
)
def test_wrong_input_gets_one_clear_line(
    tmp_path: Path, args: list[str], status: int, says: str
) -> None:
    done = _layers(*args, cwd=tmp_path, timeout=90)
    assert done.returncode == status, done.stdout + done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert SECRET not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("layers")]
    assert len(errors) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was created in the working directory


@pytest.mark.parametrize("command", [["worker", "x:y"], ["serve"]])
@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis://:{SECRET}@127.0.0.1:notaport/0", "the default layer's url: 'redis://:***@"),
        (f"sqlite://u:{SECRET}@host/x.db", "the default layer's url: sqlite URLs take no host"),
    ],
)
def test_a_bad_layers_url_variable_gets_one_line(
    tmp_path: Path, command: list[str], url: str, says: str
) -> None:
    done = _layers(*command, cwd=tmp_path, env={"LAYERS_URL": url})
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_redaction_hides_command_line_passwords_as_given_and_decoded() -> None:
    from layers.cli_common import redact

    words = ["demo", "--url", "sqlite://u:p%40ssw0rd@h/x.db"]
    assert redact("host ('u:p%40ssw0rd@h')", words) == "host ('u:***@h')"
    assert redact("login p@ssw0rd refused", words) == "login *** refused"
    assert redact("x password=hunter22 y", ["postgresql://h/db?password=hunter22"]) == (
        "x password=*** y"
    )
    assert redact("a bad value", ["redis://:a@h/0"]) == "a bad value"  # not garbled
    assert redact("redis://:a@h/0 failed", ["redis://:a@h/0"]) == "redis://:***@h/0 failed"
