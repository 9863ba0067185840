"""Shared data model, tables and helpers of the benchmark (see bench/README.md).

Imported by run.py (the one entry point), peers.py, front.py, report.py and charts.py.
Standard library only.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, cast

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
APPS_DIR = BENCH_DIR / "apps"
VENV_DIR = BENCH_DIR / ".venv-peers"
DEFAULT_OUT = BENCH_DIR / "results"

HOST = "127.0.0.1"
BASELINE = "rapidwsgi"
RAW_OUTPUT_CHARS = 3000


# --------------------------------------------------------------------------
# The scenario matrix: apps x modes x loads
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    name: str
    target: str
    path: str
    description: str
    needs: tuple[str, ...] = ()  # modules that must import in the peers venv


@dataclass(frozen=True)
class Mode:
    name: str
    listener: str  # what the server listens with: http, uwsgi (unix socket) or fastcgi
    front: str  # nginx front: "" (standalone), proxy, proxy-ka, uwsgi, fastcgi
    label: str  # as the seed's table names it


@dataclass(frozen=True)
class Load:
    name: str
    tool: str  # wrk (keep-alive) or ab (a new connection per request)
    connections: int
    requests: int = 0  # ab -n
    repeat: int = 1  # ab runs back to back on one server start (the seed ran 5)


APPS = (
    App("hello", "hello:app", "/", "13-byte text/plain `Hello, world!`"),
    App(
        "django",
        "djbench.wsgi:application",
        "/",
        "Django 5 project, DEBUG off, a template-rendered page (base template, loop, filters)",
        ("django",),
    ),
    App(
        "django-sql",
        "djbench.wsgi:application",
        "/db/",
        "the same Django project, a page listing 20 rows of a SQLite query through the ORM",
        ("django",),
    ),
    App("flask", "flaskbench:app", "/", "Flask 3 app, a Jinja2 template-rendered page", ("flask",)),
    App("big", "big:app", "/", "a 1 MB static-ish body (one precomputed bytes object)"),
    App("demo", "rapidwsgi.demo:app", "/", "rapidwsgi.demo's HTML page", ("rapidwsgi.demo",)),
)
MODES = (
    Mode("standalone", "http", "", "standalone"),
    Mode("nginx-proxy", "http", "proxy", "nginx + proxy_pass"),
    Mode("nginx-proxy-ka", "http", "proxy-ka", "nginx + proxy_pass keepalive"),
    Mode("nginx-uwsgi", "uwsgi", "uwsgi", "nginx + uwsgi_pass (unix)"),
    Mode("nginx-fastcgi", "fastcgi", "fastcgi", "nginx + fastcgi_pass keepalive"),
)
LOADS = (
    Load("ab-c20", "ab", 20, requests=1000, repeat=5),
    Load("wrk-c20", "wrk", 20),
    Load("ab-c500", "ab", 500, requests=10000),
    Load("wrk-c500", "wrk", 500),
    Load("wrk-c2000", "wrk", 2000),
)
# A browser-like request head (7 fields, a cookie, a query string): bench/hotpath.py feeds it
# to the hot path, bench/instructions.py sends it to each server.
BROWSER = (
    b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nCookie: a=b; c=d\r\n\r\n"
)
APP_BY_NAME = {a.name: a for a in APPS}
MODE_BY_NAME = {m.name: m for m in MODES}
LOAD_BY_NAME = {ld.name: ld for ld in LOADS}


@dataclass(frozen=True)
class Group:
    """One (app, mode) with the loads run on one start of each server, in order."""

    app: App
    mode: Mode
    loads: tuple[Load, ...] = field(default=LOADS)

    @property
    def name(self) -> str:
        return f"{self.app.name} {self.mode.name}"


def scenario_key(app: str, mode: str, load: str) -> str:
    return f"{app} {mode} {load}"


# --------------------------------------------------------------------------
# Shapes stored in the results JSON
# --------------------------------------------------------------------------


class Errors(TypedDict):
    connect: int
    read: int
    write: int
    timeout: int
    non_2xx: int
    failed: int
    length_mismatch: int


class LoadResult(TypedDict):
    rps: float
    requests: int
    latency_ms: dict[str, float]
    errors: Errors


class RunRecord(TypedDict):
    round: int
    position: int
    rep: int
    app: str
    mode: str
    load: str
    server: str
    ok: bool
    error: str
    result: LoadResult | None
    rss_kb: int
    command: str
    output: str


class Fairness(TypedDict):
    conns: int
    seconds: float
    responses: list[int]
    closes: int
    unannounced_closes: int
    parse_error: str
    flags: list[str]


class Preflight(TypedDict):
    ok: bool
    error: str
    fairness: Fairness | None


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def log(message: str, end: str = "\n") -> None:
    """Progress and diagnostics go to stderr."""
    print(message, end=end, file=sys.stderr, flush=True)


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def run_capture(cmd: Sequence[str], timeout: float, cwd: Path | None = None) -> tuple[int, str]:
    """Run a command, returning (exit code, stdout+stderr)."""
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return 124, f"{out}\ntimed out after {timeout:.0f}s"
    except OSError as exc:
        return 127, str(exc)
    return proc.returncode, proc.stdout + proc.stderr


def spawn_logged(argv: Sequence[str], logfile: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server under test in its own session (so that it and its workers can be
    signalled as a group), from the apps directory, stdout and stderr appended to
    ``logfile``."""
    with logfile.open("ab") as sink:
        return subprocess.Popen(
            list(argv),
            cwd=APPS_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fmt_rate(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.1f}k"
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    if math.isnan(value):  # not reported
        return "?"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


# --------------------------------------------------------------------------
# Load-generator output parsing
# --------------------------------------------------------------------------

# --------------------------------------------------------------------------

TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def wrk_time_ms(number: str, unit: str) -> float:
    return float(number) * TIME_UNITS_MS[unit]


def search_int(pattern: str, text: str, default: int = 0) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    return int(match.group(1)) if match else default


def empty_errors() -> Errors:
    return Errors(connect=0, read=0, write=0, timeout=0, non_2xx=0, failed=0, length_mismatch=0)


def latency_ms(text: str, avg_pattern: str, value_pattern: str) -> dict[str, float]:
    """avg and p50/p75/p90/p99 in ms; a value is a number, then a unit (wrk) or none (ab: ms)."""
    latency: dict[str, float] = {}
    patterns = {
        "avg": avg_pattern,
        **{f"p{p}": rf"^\s+{p}%\s+{value_pattern}" for p in ("50", "75", "90", "99")},
    }
    for key, pattern in patterns.items():
        hit = re.search(pattern, text, re.MULTILINE)
        if hit:
            unit = hit.group(2) if hit.lastindex and hit.lastindex >= 2 else "ms"
            latency[key] = wrk_time_ms(hit.group(1), unit)
    return latency


def parse_wrk(text: str) -> LoadResult:
    """Parse `wrk --latency` output; raises ValueError if there is no rate."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    if rate is None:
        raise ValueError(f"no Requests/sec in wrk output: {last_line(text)}")
    latency = latency_ms(text, r"^\s+Latency\s+([\d.]+)(us|ms|s|m|h)\b", r"([\d.]+)(us|ms|s|m|h)\b")
    errors = empty_errors()
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors["connect"], errors["read"], errors["write"], errors["timeout"] = (
            int(sock.group(i)) for i in range(1, 5)
        )
    errors["non_2xx"] = search_int(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return LoadResult(
        rps=float(rate.group(1)),
        requests=search_int(r"^\s+(\d+) requests in", text),
        latency_ms=latency,
        errors=errors,
    )


def parse_ab(text: str) -> LoadResult:
    """Parse ApacheBench output; raises ValueError if there is no rate."""
    rate = re.search(r"^Requests per second:\s+([\d.]+)", text, re.MULTILINE)
    if rate is None:
        raise ValueError(f"no 'Requests per second' in ab output: {last_line(text)}")
    latency = latency_ms(text, r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)$", r"(\d+)\s*$")
    errors = empty_errors()
    failed = search_int(r"^Failed requests:\s+(\d+)", text)
    parts = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", text)
    length = int(parts.group(3)) if parts else 0
    errors["failed"] = failed - length  # connect + receive + exceptions
    errors["length_mismatch"] = length
    errors["non_2xx"] = search_int(r"^Non-2xx responses:\s+(\d+)", text)
    return LoadResult(
        rps=float(rate.group(1)),
        requests=search_int(r"^Complete requests:\s+(\d+)", text),
        latency_ms=latency,
        errors=errors,
    )


ERROR_KINDS = ("connect", "read", "write", "timeout", "non_2xx", "failed")


def error_total(errors: Errors) -> int:
    """Errors that make a number suspect (ab length mismatches are not counted)."""
    counts = cast(dict[str, int], errors)
    return sum(counts[kind] for kind in ERROR_KINDS)


def describe_errors(errors: Errors) -> str:
    counts = cast(dict[str, int], errors)
    return ", ".join(f"{kind} {counts[kind]}" for kind in ERROR_KINDS if counts[kind])


# --------------------------------------------------------------------------

WRK_SAMPLE = """Running 2s test @ http://127.0.0.1:8000/
  1 threads and 20 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   317.57us  102.51us   3.05ms   87.62%
    Req/Sec    31.10k     1.23k   33.01k    80.00%
  Latency Distribution
     50%  299.00us
     75%  342.00us
     90%  408.00us
     99%    1.63ms
  61839 requests in 2.00s, 7.67MB read
  Socket errors: connect 0, read 7, write 0, timeout 2
  Non-2xx or 3xx responses: 12
Requests/sec:  30917.26
Transfer/sec:      3.84MB
"""

AB_SAMPLE = """Complete requests:      2000
Failed requests:        3
   (Connect: 0, Receive: 1, Length: 2, Exceptions: 0)
Non-2xx responses:      4
Requests per second:    9041.63 [#/sec] (mean)
Time per request:       2.212 [ms] (mean)
Time per request:       0.111 [ms] (mean, across all concurrent requests)
Percentage of the requests served within a certain time (ms)
  50%      2
  66%      2
  99%      4
 100%      7 (longest request)
"""


# --------------------------------------------------------------------------
# Probe clients and measurements shared by overload.py and adaptive.py
# --------------------------------------------------------------------------


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection, one GET at a time (a closed-loop client).

    The connection is opened on first use, renewed after ``per_connection`` requests
    (0: never) and reopened after a ``Connection: close`` answer. Responses must carry a
    Content-Length (every benchmark app sends one).
    """

    def __init__(self, port: int, per_connection: int = 0, timeout: float = 10.0) -> None:
        self.port = port
        self.per_connection = per_connection
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.used = 0
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, target: str) -> tuple[int, float]:
        """GET ``target``: (status, seconds from sending to the last body byte).

        Raises OSError (ConnectionError when the server closed mid-response)."""
        started = time.perf_counter()
        if self.sock is None or (self.per_connection and self.used >= self.per_connection):
            self.close()
            self.sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
            self.used, self.buf = 0, b""
        sock = self.sock
        self.used += 1
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the response")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        length = int(found.group(1)) if found else 0
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the body")
            rest += chunk
        self.buf = rest[length:]
        if re.search(rb"\r\nconnection: *close", head, re.I):
            self.close()
        return int(head.split(b" ", 2)[1]), time.perf_counter() - started


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by rank, nearest below; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pids: Sequence[int]) -> int:
    """The summed VmRSS of ``pids`` in KiB (a process already gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(found.group(1)) if found else 0
    return total


def children(pid: int) -> list[int]:
    """The child PIDs of ``pid`` (its workers, for a master); [] once it is gone."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
