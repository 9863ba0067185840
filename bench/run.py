#!/usr/bin/env python3
"""Interleaved benchmark of rapidwsgi against other WSGI servers.

Every server runs as one process pinned to core 0, the load generator (wrk or
ab) is pinned to core 1, and all traffic goes to 127.0.0.1.  Servers are
interleaved in seeded shuffled order in each round so that drift on the
machine hits all of them alike; medians and min-max spreads are reported.

Usage: python bench/run.py [--quick] [--servers a,b,c] [--rounds N]
       [--duration S] [--out DIR] [--seed N] [--apps hello,demo]
       python bench/run.py --selftest
       python bench/run.py --markdown-only bench/results/FILE.json
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, TypedDict, cast

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
APPS_DIR = BENCH_DIR / "apps"
VENV_DIR = BENCH_DIR / ".venv-peers"
DEFAULT_OUT = BENCH_DIR / "results"
STAMP_FILE = VENV_DIR / "rapidwsgi-source.sha256"

HOST = "127.0.0.1"
SERVER_CORE = "0"
LOAD_CORE = "1"
APT_HINT = "apt-get install -y wrk apache2-utils libev-dev"
SCHEMA = 1
DEFAULT_SEED = 20240601
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
PIP_TIMEOUT_S = 1800.0
FAIRNESS_CONNS = 20
FAIRNESS_SECONDS = 1.0
FAIRNESS_MIN_SHARE = 0.5
NOFILE_WANTED = 65536
RAW_OUTPUT_CHARS = 4000

ALL_SERVERS = (
    "rapidwsgi",
    "gunicorn",
    "gunicorn-gthread",
    "granian",
    "bjoern",
    "fastwsgi",
    "waitress",
)
SELFTEST_PREFERENCE = ("waitress", "gunicorn", "bjoern", "fastwsgi", "granian")
BASELINE = "rapidwsgi"

# server -> distribution whose presence makes the server available
SERVER_DIST = {
    "rapidwsgi": "rapidwsgi",
    "gunicorn": "gunicorn",
    "gunicorn-gthread": "gunicorn",
    "granian": "granian",
    "bjoern": "bjoern",
    "fastwsgi": "fastwsgi",
    "waitress": "waitress",
}
# distribution -> (pip requirements, modules that must import afterwards)
PEER_INSTALL: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gunicorn": (("gunicorn",), ("gunicorn",)),
    "granian": (("granian",), ("granian",)),
    "bjoern": (("bjoern",), ("bjoern",)),
    # fastwsgi 0.0.9 imports pkg_resources, gone from setuptools >= 81
    "fastwsgi": (("fastwsgi", "setuptools<81"), ("fastwsgi", "pkg_resources")),
    "waitress": (("waitress",), ("waitress",)),
}
VERSION_DISTS = (
    "rapidwsgi",
    "gunicorn",
    "granian",
    "bjoern",
    "fastwsgi",
    "waitress",
    "setuptools",
)
# One process per server; "{bin}" is the peers venv's bin directory.
SERVER_COMMANDS = {
    "rapidwsgi": ("{py} -m rapidwsgi --bind {bind} --threads 1 --log-level warning {target}"),
    "gunicorn": "{bin}/gunicorn -w 1 -k sync -b {bind} --log-level warning {target}",
    "gunicorn-gthread": ("{bin}/gunicorn -w 1 -k gthread --threads 4 -b {bind} --log-level warning {target}"),
    "granian": (
        "{bin}/granian --interface wsgi --host {host} --port {port} --workers 1 --log-level warning {target}"
    ),
    "bjoern": "{py} {apps}/run_bjoern.py {target} {host} {port}",
    "fastwsgi": "{py} {apps}/run_fastwsgi.py {target} {host} {port}",
    "waitress": "{bin}/waitress-serve --listen {bind} --threads 4 {target}",
}
COPY_SKIP_TOP = {"bench", "build", "dist", "node_modules"}
COPY_SKIP_ANY = {
    ".git",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".tox",
    ".nox",
}


# --------------------------------------------------------------------------
# Data model (the JSON file holds these shapes)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    name: str
    target: str
    path: str
    needs_rapidwsgi: bool


@dataclass(frozen=True)
class Load:
    name: str
    tool: str
    connections: int


APPS = (
    App("hello", "hello:app", "/", needs_rapidwsgi=False),
    App("demo", "rapidwsgi.demo:app", "/", needs_rapidwsgi=True),
)
LOADS = (
    Load("wrk-c20", "wrk", 20),
    Load("wrk-c500", "wrk", 500),
    Load("ab-c20", "ab", 20),
)


@dataclass(frozen=True)
class Config:
    servers: tuple[str, ...]
    apps: tuple[App, ...]
    loads: tuple[Load, ...]
    rounds: int
    duration: int
    ab_requests: int
    seed: int
    out_dir: Path
    quick: bool
    selftest: bool


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
    app: str
    load: str
    server: str
    ok: bool
    error: str
    result: LoadResult | None
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


@dataclass
class Cell:
    rps: list[float]
    p50: list[float]
    p99: list[float]
    errors: int
    runs_with_errors: int
    failed_runs: int
    length_mismatch: int
    last_failure: str = ""


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def log(message: str, end: str = "\n") -> None:
    """Progress and diagnostics go to stderr."""
    print(message, end=end, file=sys.stderr, flush=True)


def venv_bin(name: str) -> Path:
    return VENV_DIR / "bin" / name


def venv_python() -> Path:
    return venv_bin("python")


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE for this process and its children (wrk -c500)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(target, soft)


def pin_self_to_load_core() -> None:
    """Keep the harness's own work (fairness probe) off the server core."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.sched_setaffinity(0, {int(LOAD_CORE)})


def fmt_rate(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.1f}k"
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


# --------------------------------------------------------------------------
# Load-generator output parsing
# --------------------------------------------------------------------------

TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def wrk_time_ms(number: str, unit: str) -> float:
    return float(number) * TIME_UNITS_MS[unit]


def search_int(pattern: str, text: str, default: int = 0) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    return int(match.group(1)) if match else default


def empty_errors() -> Errors:
    return Errors(connect=0, read=0, write=0, timeout=0, non_2xx=0, failed=0, length_mismatch=0)


def parse_wrk(text: str) -> LoadResult:
    """Parse `wrk --latency` output; raises ValueError if there is no rate."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    if rate is None:
        raise ValueError(f"no Requests/sec in wrk output: {last_line(text)}")
    latency: dict[str, float] = {}
    avg = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s|m|h)\b", text, re.MULTILINE)
    if avg:
        latency["avg"] = wrk_time_ms(avg.group(1), avg.group(2))
    for pct in ("50", "75", "90", "99"):
        hit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\b", text, re.MULTILINE)
        if hit:
            latency[f"p{pct}"] = wrk_time_ms(hit.group(1), hit.group(2))
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
    latency: dict[str, float] = {}
    mean = re.search(r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)$", text, re.MULTILINE)
    if mean:
        latency["avg"] = float(mean.group(1))
    for pct in ("50", "75", "90", "99"):
        hit = re.search(rf"^\s+{pct}%\s+(\d+)\s*$", text, re.MULTILINE)
        if hit:
            latency[f"p{pct}"] = float(hit.group(1))
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
# Peers virtualenv
# --------------------------------------------------------------------------


def ensure_venv() -> None:
    if venv_python().exists():
        return
    log(f"creating peers virtualenv {VENV_DIR}")
    subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
    code, out = run_capture(
        [str(venv_python()), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        PIP_TIMEOUT_S,
    )
    if code:
        log(f"  (pip upgrade failed, continuing with the bundled pip: {last_line(out)})")


def import_check(modules: Sequence[str]) -> dict[str, str]:
    """Try importing modules in the peers venv; return module -> error ('' = ok)."""
    script = (
        "import importlib, json, sys\n"
        "res = {}\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(m); res[m] = ''\n"
        "    except BaseException as e:\n"
        "        res[m] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps(res))\n"
    )
    code, out = run_capture(
        [str(venv_python()), "-c", script, *modules],
        120,
        cwd=Path(tempfile.gettempdir()),
    )
    if code:
        return {module: f"import check failed: {last_line(out)}" for module in modules}
    return cast(dict[str, str], json.loads(out.strip().splitlines()[-1]))


def module_exists(module: str) -> bool:
    script = "import importlib.util, sys\nsys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 1)\n"
    code, _ = run_capture([str(venv_python()), "-c", script, module], 60, cwd=Path(tempfile.gettempdir()))
    return code == 0


def pip_install(args: Sequence[str], label: str) -> str:
    """pip install into the peers venv; returns '' or a one-line reason."""
    log(f"  installing {label} ...")
    cmd = [
        str(venv_python()),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        *args,
    ]
    code, out = run_capture(cmd, PIP_TIMEOUT_S)
    (VENV_DIR / f"install-{label}.log").write_text(out)
    if code == 0:
        return ""
    log(tail(out))
    return f"pip install failed (exit {code}): {last_line(out)}"


def install_peer(dist: str) -> str:
    """Install one peer distribution if missing; returns '' or the skip reason."""
    requirements, modules = PEER_INSTALL[dist]
    if not any(import_check(modules).values()):
        return ""
    if dist == "bjoern" and not Path("/usr/include/ev.h").exists():
        return f"libev headers missing (/usr/include/ev.h): {APT_HINT}"
    reason = pip_install(requirements, dist)
    if reason:
        return reason
    broken = {m: e for m, e in import_check(modules).items() if e}
    return "; ".join(f"import {m}: {e}" for m, e in broken.items())


def skip_copy(root: Path, directory: str, names: list[str]) -> set[str]:
    top = Path(directory).resolve() == root
    return {
        name
        for name in names
        if name in COPY_SKIP_ANY
        or name.startswith(".venv")
        or name.endswith(".egg-info")
        or (top and name in COPY_SKIP_TOP)
    }


def source_files(root: Path) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(set(dirs) - skip_copy(root, directory, dirs))
        for name in sorted(files):
            yield Path(directory) / name


def source_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for path in source_files(root):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def install_rapidwsgi() -> str:
    """(Re)install rapidwsgi, non-editable, when missing or its sources changed.

    pip builds from a copy of the repo so that no build/ or *.egg-info
    directory appears in the working tree outside bench/.
    """
    if not any((REPO_ROOT / f).exists() for f in ("pyproject.toml", "setup.py")):
        return f"no pyproject.toml or setup.py in {REPO_ROOT}: not installable yet"
    fingerprint = source_fingerprint(REPO_ROOT)
    current = STAMP_FILE.read_text().strip() if STAMP_FILE.exists() else ""
    if current == fingerprint and not import_check(["rapidwsgi"])["rapidwsgi"]:
        return ""
    run_capture([str(venv_python()), "-m", "pip", "uninstall", "-y", "rapidwsgi"], 300)
    with tempfile.TemporaryDirectory(prefix="rapidwsgi-src-") as tmp:
        src = Path(tmp) / "rapidwsgi"
        shutil.copytree(
            REPO_ROOT,
            src,
            ignore=lambda d, n: skip_copy(REPO_ROOT, d, n),
            symlinks=True,
        )
        reason = pip_install([str(src)], "rapidwsgi")
    if reason:
        return reason
    error = import_check(["rapidwsgi"])["rapidwsgi"]
    if error:
        return f"import rapidwsgi: {error}"
    STAMP_FILE.write_text(fingerprint + "\n")
    return ""


def rapidwsgi_cli_missing() -> str:
    if not module_exists("rapidwsgi.__main__"):
        return "rapidwsgi has no __main__ module yet (python -m rapidwsgi unavailable)"
    return ""


def prepare_peers(servers: Sequence[str]) -> dict[str, str]:
    """Install what the chosen servers need; return server -> skip reason."""
    ensure_venv()
    log(f"checking peers in {VENV_DIR} (installs only what is missing)")
    dist_reason: dict[str, str] = {}
    for dist in dict.fromkeys(SERVER_DIST[s] for s in servers):
        if dist == "rapidwsgi":
            continue
        dist_reason[dist] = install_peer(dist)
    # rapidwsgi is needed by every server for the demo app, so always try it
    reason = install_rapidwsgi()
    dist_reason["rapidwsgi"] = reason or rapidwsgi_cli_missing()
    if reason:
        log(f"  rapidwsgi unavailable: {reason}")
    skipped = {s: dist_reason[SERVER_DIST[s]] for s in servers if dist_reason[SERVER_DIST[s]]}
    for server, why in skipped.items():
        log(f"  SKIP {server}: {why}")
    return skipped


def check_tools() -> list[str]:
    return [tool for tool in ("wrk", "ab", "taskset") if shutil.which(tool) is None]


# --------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------


def server_command(server: str, port: int, target: str) -> list[str]:
    """The command line of one server: one process, pinned to SERVER_CORE.

    The template is split before substitution, so paths with spaces are safe.
    """
    values = {
        "py": str(venv_python()),
        "bin": str(VENV_DIR / "bin"),
        "apps": str(APPS_DIR),
        "host": HOST,
        "port": str(port),
        "bind": f"{HOST}:{port}",
        "target": target,
    }
    argv = [part.format(**values) for part in SERVER_COMMANDS[server].split()]
    return ["taskset", "-c", SERVER_CORE, *argv]


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(APPS_DIR)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["VIRTUAL_ENV"] = str(VENV_DIR)
    env["PATH"] = f"{VENV_DIR / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def http_get_status(port: int, path: str) -> int:
    conn = HTTPConnection(HOST, port, timeout=2.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str) -> str:
    """Wait for a real GET to answer 200; returns '' or the failure reason."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode} before answering"
        try:
            status = http_get_status(port, path)
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return ""
            last = f"HTTP {status}"
        time.sleep(0.1)
    return f"no 200 on GET {path} within {READY_TIMEOUT_S:.0f}s (last: {last})"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server we started: its own process group (pgid == its pid)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
    # workers that outlived the master (same process group) get SIGKILL too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(server: str, app: App, logdir: Path) -> Iterator[tuple[int, str]]:
    """Start a server, yield (port, '' or start-failure reason), always stop it."""
    port = free_port()
    logfile = logdir / f"{server}-{app.name}.log"
    with logfile.open("ab") as sink:
        proc = subprocess.Popen(
            server_command(server, port, app.target),
            cwd=APPS_DIR,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        reason = wait_ready(proc, port, app.path)
        if reason:
            reason = f"{reason}; log: {last_line(logfile.read_text(errors='replace'))}"
        yield port, reason
    finally:
        stop_server(proc)


# --------------------------------------------------------------------------
# Keep-alive fairness probe (the uWSGI traps from BENCH-NOTES)
# --------------------------------------------------------------------------


def chunked_end(buf: bytes, pos: int) -> int | None:
    """End offset of a chunked body starting at pos (no trailers), or None."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            return pos + 2 if len(buf) >= pos + 2 else None
        if len(buf) < pos + size + 2:
            return None
        pos += size + 2


def response_end(buf: bytes) -> tuple[int, bool] | None:
    """(length of the first complete response in buf, announces close) or None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end].decode("latin-1").lower()
    announces_close = bool(re.search(r"^connection:\s*close", head, re.MULTILINE))
    length = re.search(r"^content-length:\s*(\d+)", head, re.MULTILINE)
    body_start = head_end + 4
    if length:
        end = body_start + int(length.group(1))
        return (end, announces_close) if len(buf) >= end else None
    if re.search(r"^transfer-encoding:.*chunked", head, re.MULTILINE):
        chunk_end = chunked_end(buf, body_start)
        return (chunk_end, announces_close) if chunk_end is not None else None
    raise ValueError("response has neither Content-Length nor chunked encoding")


@dataclass
class ProbeConn:
    sock: socket.socket
    buf: bytes = b""
    last_announced_close: bool = False


def probe_connect(port: int, sel: selectors.BaseSelector, slot: int, request: bytes) -> None:
    sock = socket.create_connection((HOST, port), timeout=2.0)
    sock.sendall(request)
    sock.setblocking(False)
    sel.register(sock, selectors.EVENT_READ, (slot, ProbeConn(sock)))


def probe_read(
    key: selectors.SelectorKey,
    sel: selectors.BaseSelector,
    port: int,
    request: bytes,
    counts: list[int],
    closes: list[int],
) -> None:
    slot, conn = cast(tuple[int, ProbeConn], key.data)
    try:
        data = conn.sock.recv(65536)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:  # server closed the connection: reconnect like wrk does
        sel.unregister(conn.sock)
        conn.sock.close()
        closes[0] += 1
        closes[1] += 0 if conn.last_announced_close else 1
        probe_connect(port, sel, slot, request)
        return
    conn.buf += data
    while (done := response_end(conn.buf)) is not None:
        conn.buf = conn.buf[done[0] :]
        conn.last_announced_close = done[1]
        counts[slot] += 1
        if not done[1]:
            conn.sock.send(request)


def fairness_flags(counts: list[int], closes: int, unannounced: int) -> list[str]:
    flags: list[str] = []
    median = statistics.median(counts)
    if min(counts) < FAIRNESS_MIN_SHARE * median:
        flags.append(
            f"unfair keep-alive service: per-connection responses min {min(counts)}, "
            f"median {median:.0f}, max {max(counts)}"
        )
    if unannounced:
        flags.append(
            f"closed {unannounced} keep-alive connections without 'Connection: close' "
            "(wrk counts read errors although responses arrived)"
        )
    elif closes:
        flags.append(f"no keep-alive: closed connections {closes} times (announced)")
    return flags


def fairness_probe(port: int, path: str) -> Fairness:
    """Drive FAIRNESS_CONNS keep-alive connections for FAIRNESS_SECONDS, count
    responses per connection and closes.  Bounded in time and count."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    counts = [0] * FAIRNESS_CONNS
    closes = [0, 0]
    result = Fairness(
        conns=FAIRNESS_CONNS,
        seconds=FAIRNESS_SECONDS,
        responses=counts,
        closes=0,
        unannounced_closes=0,
        parse_error="",
        flags=[],
    )
    with selectors.DefaultSelector() as sel:
        try:
            for slot in range(FAIRNESS_CONNS):
                probe_connect(port, sel, slot, request)
            deadline = time.monotonic() + FAIRNESS_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(timeout=left):
                    probe_read(key, sel, port, request, counts, closes)
        except (OSError, ValueError) as exc:
            result["parse_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            for key in list(sel.get_map().values()):
                cast(socket.socket, key.fileobj).close()
    result["closes"], result["unannounced_closes"] = closes
    if not result["parse_error"]:
        result["flags"] = fairness_flags(counts, closes[0], closes[1])
    return result


# --------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------


def ab_time_cap(cfg: Config) -> int:
    return max(60, cfg.duration * 12)


def load_command(load: Load, cfg: Config, url: str) -> list[str]:
    """wrk keep-alive, or ab with a new connection per request (no -k)."""
    c = load.connections
    if load.tool == "wrk":
        tool = f"wrk -t1 -c{c} -d{cfg.duration}s --latency".split()
    else:  # -t caps the time; -n after -t, or ab would use -t's 50000 requests
        tool = f"ab -r -t {ab_time_cap(cfg)} -n {cfg.ab_requests} -c {c}".split()
    return ["taskset", "-c", LOAD_CORE, *tool, url]


@dataclass(frozen=True)
class Measured:
    result: LoadResult | None
    error: str
    command: str
    output: str


def run_load(load: Load, cfg: Config, port: int, path: str) -> Measured:
    url = f"http://{HOST}:{port}{path}"
    timeout = cfg.duration + 60 if load.tool == "wrk" else ab_time_cap(cfg) + 30
    cmd = load_command(load, cfg, url)
    code, out = run_capture(cmd, timeout)
    parse = parse_wrk if load.tool == "wrk" else parse_ab
    raw = out[-RAW_OUTPUT_CHARS:]
    try:
        return Measured(parse(out), "", " ".join(cmd), raw)
    except ValueError as exc:
        return Measured(None, f"{load.tool} exit {code}: {exc}", " ".join(cmd), raw)


def measure_one(server: str, app: App, load: Load, cfg: Config, logdir: Path) -> Measured:
    with running_server(server, app, logdir) as (port, reason):
        if reason:
            return Measured(None, f"server did not start: {reason}", "", "")
        return run_load(load, cfg, port, app.path)


# --------------------------------------------------------------------------
# Run orchestration
# --------------------------------------------------------------------------


def preflight(server: str, app: App, logdir: Path) -> Preflight:
    """Start once before the rounds: fail fast and probe keep-alive fairness."""
    with running_server(server, app, logdir) as (port, reason):
        if reason:
            return Preflight(ok=False, error=reason, fairness=None)
        return Preflight(ok=True, error="", fairness=fairness_probe(port, app.path))


def run_preflights(cfg: Config, servers: Sequence[str], logdir: Path) -> dict[str, dict[str, Preflight]]:
    results: dict[str, dict[str, Preflight]] = {}
    for server in servers:
        for app in cfg.apps:
            log(f"[preflight] {app.name} {server} ...", end=" ")
            pre = preflight(server, app, logdir)
            flags = pre["fairness"]["flags"] if pre["fairness"] else []
            log("ok" if pre["ok"] else f"FAILED: {pre['error']}")
            for flag in flags:
                log(f"    flag: {flag}")
            results.setdefault(server, {})[app.name] = pre
    return results


def progress_suffix(result: LoadResult | None, error: str) -> str:
    if result is None:
        return f"FAILED: {error}"
    errors = error_total(result["errors"])
    text = f"{fmt_rate(result['rps'])} req/s"
    return f"{text} (errors: {describe_errors(result['errors'])})" if errors else text


@dataclass(frozen=True)
class Slot:
    round: int
    position: int
    app: App
    load: Load
    server: str


def schedule(cfg: Config, runnable: dict[str, list[str]]) -> list[Slot]:
    """Each round, each scenario, every server once in seeded shuffled order."""
    rng = random.Random(cfg.seed)
    slots: list[Slot] = []
    for rnd in range(1, cfg.rounds + 1):
        for app in cfg.apps:
            for load in cfg.loads:
                order = list(runnable.get(app.name, []))
                rng.shuffle(order)
                slots += [Slot(rnd, i, app, load, s) for i, s in enumerate(order)]
    return slots


def run_slot(slot: Slot, cfg: Config, logdir: Path) -> RunRecord:
    head = f"[round {slot.round}/{cfg.rounds}] {slot.app.name} {slot.load.name}"
    log(f"{head} {slot.server} ...", end=" ")
    got = measure_one(slot.server, slot.app, slot.load, cfg, logdir)
    log(progress_suffix(got.result, got.error))
    return RunRecord(
        round=slot.round,
        position=slot.position,
        app=slot.app.name,
        load=slot.load.name,
        server=slot.server,
        ok=got.result is not None,
        error=got.error,
        result=got.result,
        command=got.command,
        output=got.output,
    )


def runnable_servers(
    cfg: Config, servers: Sequence[str], pre: dict[str, dict[str, Preflight]]
) -> dict[str, list[str]]:
    """Per app, the servers whose preflight start succeeded."""
    runnable: dict[str, list[str]] = {}
    for app in cfg.apps:
        ok = [s for s in servers if app.name in pre.get(s, {})]
        runnable[app.name] = [s for s in ok if pre[s][app.name]["ok"]]
    return runnable


# --------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def tool_version(cmd: Sequence[str]) -> str:
    _, out = run_capture(cmd, 30)
    return out.strip().splitlines()[0].strip() if out.strip() else "unknown"


def peer_versions() -> dict[str, str]:
    script = (
        "import json, sys, platform\n"
        "from importlib import metadata\n"
        "out = {'python': platform.python_version()}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = metadata.version(d)\n"
        "    except metadata.PackageNotFoundError: out[d] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    code, out = run_capture([str(venv_python()), "-c", script, *VERSION_DISTS], 60)
    if code:
        return {"error": last_line(out)}
    return cast(dict[str, str], json.loads(out.strip().splitlines()[-1]))


GRANIAN_DEFAULTS_SCRIPT = (
    "from granian import Granian\n"
    "g = Granian('hello:app', interface='wsgi', workers=1)\n"
    "print(f'{g.blocking_threads} blocking threads (default for --interface wsgi "
    "--workers 1), runtime threads {g.runtime_threads}, backpressure "
    "{g.backpressure}')\n"
)


def granian_blocking_threads() -> str:
    """The blocking-threads default that our granian command line ends up with,
    read from the installed granian (constructing the server does not start it);
    falls back to the --help text."""
    if not venv_bin("granian").exists():
        return "granian not installed"
    code, out = run_capture([str(venv_python()), "-c", GRANIAN_DEFAULTS_SCRIPT], 60)
    if code == 0:
        return last_line(out)
    _, out = run_capture([str(venv_bin("granian")), "--help"], 60)
    match = re.search(r"--blocking-threads.*?(?=\n\s+--|\Z)", out, re.DOTALL)
    return " ".join(match.group(0).split()) if match else "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory": mem_total(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python_harness": platform.python_version(),
        "wrk": tool_version(["wrk", "-v"]).split(" Copyright")[0],
        "ab": tool_version(["ab", "-V"]).removeprefix("This is "),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "server_core": SERVER_CORE,
        "load_core": LOAD_CORE,
    }


# --------------------------------------------------------------------------
# Summaries and markdown
# --------------------------------------------------------------------------


def scenario_key(app: str, load: str) -> str:
    return f"{app} {load}"


def summarize(runs: Sequence[RunRecord]) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for run in runs:
        key = (run["server"], scenario_key(run["app"], run["load"]))
        cell = cells.setdefault(key, Cell([], [], [], 0, 0, 0, 0))
        result = run["result"]
        if not run["ok"] or result is None:
            cell.failed_runs += 1
            cell.last_failure = run["error"]
            continue
        cell.rps.append(result["rps"])
        cell.p50.append(result["latency_ms"].get("p50", float("nan")))
        cell.p99.append(result["latency_ms"].get("p99", float("nan")))
        errors = error_total(result["errors"])
        cell.errors += errors
        cell.runs_with_errors += 1 if errors else 0
        cell.length_mismatch += result["errors"]["length_mismatch"]
    return cells


def rate_cell(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if not cell.rps:
        return f"failed ({cell.failed_runs} runs)"
    text = fmt_rate(statistics.median(cell.rps))
    if len(cell.rps) > 1:
        text += f" [{fmt_rate(min(cell.rps))}-{fmt_rate(max(cell.rps))}]"
    if cell.errors:
        text += f" ⚠ {cell.errors:,} err"
    if cell.failed_runs:
        text += f" ({cell.failed_runs} failed)"
    return text


def ratio_cell(base: Cell | None, peer: Cell | None) -> str:
    if base is None or peer is None or not base.rps or not peer.rps:
        return "-"
    ratio = statistics.median(base.rps) / statistics.median(peer.rps)
    flag = " ⚠" if base.errors or peer.errors else ""
    return f"{ratio:.2f}{flag}"


def latency_cell(cell: Cell | None) -> str:
    if cell is None or not cell.rps:
        return "-"
    return f"{fmt_ms(statistics.median(cell.p50))} / {fmt_ms(statistics.median(cell.p99))}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> list[str]:
    """A markdown table; the first text_columns are left-aligned, the rest right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def server_label(server: str, versions: dict[str, str]) -> str:
    version = versions.get(SERVER_DIST.get(server, server), "")
    return f"{server} {version}" if version and version != "not installed" else server


def doc_scenarios(doc: dict[str, Any]) -> list[str]:
    cfg = doc["config"]
    return [scenario_key(a, ld) for a in cfg["apps"] for ld in cfg["loads"]]


def doc_servers(doc: dict[str, Any]) -> list[str]:
    measured = {run["server"] for run in doc["runs"]}
    return [s for s in doc["config"]["servers"] if s in measured]


def rate_section(doc: dict[str, Any], cells: dict[tuple[str, str], Cell]) -> list[str]:
    scenarios = doc_scenarios(doc)
    rows = [
        [server_label(s, doc["versions"])] + [rate_cell(cells.get((s, sc))) for sc in scenarios]
        for s in doc_servers(doc)
    ]
    rounds = doc["config"]["rounds"]
    title = f"## Requests per second (median of {rounds} round(s) [min-max])"
    return [title, "", *md_table(["server", *scenarios], rows), ""]


def ratio_section(doc: dict[str, Any], cells: dict[tuple[str, str], Cell]) -> list[str]:
    title = "## rapidwsgi / peer (ratio of median req/s; >1.00 means rapidwsgi faster)"
    servers = doc_servers(doc)
    if BASELINE not in servers:
        return [title, "", "rapidwsgi was not measured in this run: no ratios.", ""]
    scenarios = doc_scenarios(doc)
    rows = [
        [s] + [ratio_cell(cells.get((BASELINE, sc)), cells.get((s, sc))) for sc in scenarios]
        for s in servers
        if s != BASELINE
    ]
    note = "⚠ = rapidwsgi or the peer had errors in that cell: see Flags."
    return [title, "", *md_table(["peer", *scenarios], rows), "", note, ""]


def latency_section(doc: dict[str, Any], cells: dict[tuple[str, str], Cell]) -> list[str]:
    scenarios = doc_scenarios(doc)
    rows = [[s] + [latency_cell(cells.get((s, sc))) for sc in scenarios] for s in doc_servers(doc)]
    title = "## Latency p50 / p99 in ms (median over rounds; ab reports whole ms)"
    return [title, "", *md_table(["server", *scenarios], rows), ""]


def error_flags(cells: dict[tuple[str, str], Cell]) -> list[str]:
    lines: list[str] = []
    for (server, scenario), cell in sorted(cells.items()):
        if cell.errors:
            kind = "keep-alive number is suspect" if " wrk-" in f" {scenario}" else "errors"
            lines.append(
                f"- {server} / {scenario}: {cell.errors:,} errors in "
                f"{cell.runs_with_errors} of {len(cell.rps)} runs ({kind})"
            )
        if cell.length_mismatch:
            lines.append(
                f"- {server} / {scenario}: ab saw {cell.length_mismatch:,} responses "
                "whose length differed from the first (expected for a dynamic page, "
                "not for hello)"
            )
        if cell.failed_runs:
            lines.append(
                f"- {server} / {scenario}: {cell.failed_runs} run(s) failed, last: {cell.last_failure}"
            )
    return lines


def preflight_flags(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for server, apps in doc.get("preflight", {}).items():
        for app, pre in apps.items():
            if not pre["ok"]:
                lines.append(f"- {server} / {app}: did not start: {pre['error']}")
                continue
            fair = pre["fairness"] or {}
            if fair.get("parse_error"):
                lines.append(f"- {server} / {app}: fairness probe inconclusive: {fair['parse_error']}")
            lines += [f"- {server} / {app}: {flag}" for flag in fair.get("flags", [])]
    return lines


def flags_section(doc: dict[str, Any], cells: dict[tuple[str, str], Cell]) -> list[str]:
    skipped = [f"- {s}: skipped: {why}" for s, why in doc.get("skipped", {}).items()]
    skipped += [f"- app {a}: skipped: {why}" for a, why in doc.get("skipped_apps", {}).items()]
    lines = skipped + error_flags(cells) + preflight_flags(doc)
    probe = (
        f"Fairness probe: before the rounds, {FAIRNESS_CONNS} keep-alive connections "
        "for "
        f"{FAIRNESS_SECONDS:g} s from the harness; a connection getting under "
        f"{FAIRNESS_MIN_SHARE:.0%} of the median count, or closes without "
        "'Connection: close', is flagged."
    )
    return ["## Flags", "", *(lines or ["- none"]), "", probe, ""]


def machine_section(doc: dict[str, Any]) -> list[str]:
    m, cfg, v = doc["machine"], doc["config"], doc["versions"]
    servers = ", ".join(f"{d} {v[d]}" for d in VERSION_DISTS if v.get(d, "not installed") != "not installed")
    return [
        "## Machine and setup",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores, {m['memory']}",
        f"- Kernel: {m['kernel']} ({m['platform']})",
        f"- Python: harness {m['python_harness']}, servers {v.get('python', '?')}",
        f"- Packages (peers venv): {servers}",
        f"- granian blocking threads: {doc.get('granian_blocking_threads', 'n/a')}",
        f"- Load: {m['wrk']}; {m['ab']}",
        (
            f"- Each server: one process pinned to core {m['server_core']}; load "
            f"generator pinned to core {m['load_core']}; 127.0.0.1 only; "
            f"RLIMIT_NOFILE {m['nofile_limit']}"
        ),
        (
            f"- {cfg['rounds']} round(s), wrk -t1 -d{cfg['duration']}s (c20, c500, "
            f"keep-alive), ab -n {cfg['ab_requests']} -c 20 (new connection per "
            f"request); servers interleaved in shuffled order, seed {cfg['seed']}"
        ),
        "",
    ]


def fairness_verdict(fair: Fairness) -> str:
    if any(flag.startswith("unfair") for flag in fair["flags"]):
        return "UNFAIR"
    if fair["unannounced_closes"]:
        return "closes without notice"
    return "no keep-alive" if fair["closes"] else "ok"


def fairness_row(server: str, app: str, pre: Preflight) -> list[str] | None:
    fair = pre["fairness"]
    if not pre["ok"] or fair is None:
        return None
    if fair["parse_error"]:
        return [server, app, "inconclusive", "-", "-", "-"]
    counts = fair["responses"]
    spread = f"{min(counts)} / {statistics.median(counts):.0f} / {max(counts)}"
    verdict = fairness_verdict(fair)
    closes = f"{fair['closes']} ({fair['unannounced_closes']} unannounced)"
    return [server, app, f"{sum(counts):,}", spread, closes, verdict]


def fairness_section(doc: dict[str, Any]) -> list[str]:
    rows = [
        row
        for server, apps in doc.get("preflight", {}).items()
        for app, pre in apps.items()
        if (row := fairness_row(server, app, pre)) is not None
    ]
    if not rows:
        return []
    header = ["server", "app", "responses", "per conn min / median / max", "closes",
              "verdict"]  # fmt: skip
    title = (
        f"## Keep-alive fairness probe ({FAIRNESS_CONNS} connections, "
        f"{FAIRNESS_SECONDS:g} s, Python client: absolute numbers mean nothing)"
    )
    return [title, "", *md_table(header, rows, text_columns=2), ""]


def render_markdown(doc: dict[str, Any]) -> str:
    cells = summarize(doc["runs"])
    title = f"# rapidwsgi benchmark, {doc['date']} on {doc['machine']['hostname']}"
    if doc.get("interrupted"):
        title += " (interrupted: partial results)"
    sections = [
        [title, ""],
        rate_section(doc, cells),
        ratio_section(doc, cells),
        latency_section(doc, cells),
        flags_section(doc, cells),
        fairness_section(doc),
        machine_section(doc),
    ]
    return "\n".join(line for section in sections for line in section)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(doc: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['date']}-{doc['machine']['hostname']}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_atomic(json_path, json.dumps(doc, indent=1) + "\n")
    write_atomic(md_path, render_markdown(doc))
    return json_path, md_path


# --------------------------------------------------------------------------
# Self-test of the parsers (no processes)
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


def check_parsers() -> None:
    wrk = parse_wrk(WRK_SAMPLE)
    assert wrk["rps"] == 30917.26 and wrk["requests"] == 61839, wrk
    assert abs(wrk["latency_ms"]["p99"] - 1.63) < 1e-9, wrk
    assert abs(wrk["latency_ms"]["avg"] - 0.31757) < 1e-9, wrk
    assert error_total(wrk["errors"]) == 21, wrk
    ab = parse_ab(AB_SAMPLE)
    assert ab["rps"] == 9041.63 and ab["requests"] == 2000, ab
    assert ab["latency_ms"] == {"avg": 2.212, "p50": 2.0, "p99": 4.0}, ab
    assert ab["errors"]["failed"] == 1 and ab["errors"]["length_mismatch"] == 2, ab
    assert error_total(ab["errors"]) == 5, ab
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nX"
    assert response_end(body) == (len(body) - 1, False)
    log("selftest: wrk/ab/HTTP parsers ok")


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s, ab -n 2000, hello only")
    parser.add_argument("--servers", help=f"comma list, default: {','.join(ALL_SERVERS)}")
    parser.add_argument("--apps", help="comma list of hello,demo (default both; quick: hello)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5)")
    parser.add_argument("--ab-requests", type=int, help="ab -n (default 20000; quick 2000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="shuffle seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument(
        "--markdown-only",
        type=Path,
        metavar="FILE.json",
        help="re-render the markdown of a results JSON and exit",
    )
    parser.add_argument(
        "--selftest",
        action="store_true",
        help="1 s per load on one available server; prints the table",
    )
    return parser.parse_args(argv)


def split_names(value: str | None, known: Sequence[str], what: str) -> tuple[str, ...]:
    if not value:
        return tuple(known)
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def build_config(args: argparse.Namespace) -> Config:
    quick = bool(args.quick or args.selftest)
    app_names = split_names(args.apps or ("hello" if quick else None), [a.name for a in APPS], "app")
    cfg = Config(
        servers=split_names(args.servers, ALL_SERVERS, "server"),
        apps=tuple(a for a in APPS if a.name in app_names),
        loads=LOADS,
        rounds=args.rounds or (1 if quick else 3),
        duration=args.duration or (1 if args.selftest else 2 if quick else 5),
        ab_requests=args.ab_requests or (500 if args.selftest else 2000 if quick else 20000),
        seed=args.seed,
        out_dir=args.out.resolve(),
        quick=quick,
        selftest=bool(args.selftest),
    )
    if cfg.rounds < 1 or cfg.duration < 1 or cfg.ab_requests < 1:
        raise SystemExit("--rounds, --duration and --ab-requests must be >= 1")
    return cfg


def choose_selftest_server(cfg: Config, skipped: dict[str, str], explicit: bool) -> Config:
    """The first available of --servers, else of SELFTEST_PREFERENCE."""
    candidates = cfg.servers if explicit else SELFTEST_PREFERENCE
    pool = [s for s in candidates if s not in skipped]
    if not pool:
        raise SystemExit("selftest: no server available")
    return replace(cfg, servers=(pool[0],))


def new_doc(cfg: Config) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "date": dt.date.today().isoformat(),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": {
            "servers": list(cfg.servers),
            "apps": [a.name for a in cfg.apps],
            "app_targets": {a.name: f"{a.target} GET {a.path}" for a in cfg.apps},
            "loads": [ld.name for ld in cfg.loads],
            "server_commands": {
                name: f"taskset -c {SERVER_CORE} {SERVER_COMMANDS[name]}" for name in cfg.servers
            },
            "rounds": cfg.rounds,
            "duration": cfg.duration,
            "ab_requests": cfg.ab_requests,
            "seed": cfg.seed,
            "quick": cfg.quick,
            "selftest": cfg.selftest,
        },
        "machine": machine_info(),
        "versions": peer_versions(),
        "granian_blocking_threads": granian_blocking_threads(),
        "skipped": {},
        "preflight": {},
        "runs": [],
    }


def apps_needing_rapidwsgi(cfg: Config) -> dict[str, str]:
    """Apps to skip (name -> reason) when rapidwsgi.demo is not importable."""
    needing = [a.name for a in cfg.apps if a.needs_rapidwsgi]
    if not needing or module_exists("rapidwsgi.demo"):
        return {}
    reason = "rapidwsgi.demo is not importable in the peers venv"
    log(f"  SKIP app(s) {', '.join(needing)}: {reason}")
    return dict.fromkeys(needing, reason)


def benchmark(cfg: Config, explicit_servers: bool) -> dict[str, Any]:
    skipped = prepare_peers(cfg.servers)
    if cfg.selftest:
        cfg = choose_selftest_server(cfg, skipped, explicit_servers)
        skipped = {}
    skipped_apps = apps_needing_rapidwsgi(cfg)
    cfg = replace(cfg, apps=tuple(a for a in cfg.apps if a.name not in skipped_apps))
    raise_nofile_limit()
    pin_self_to_load_core()
    doc = new_doc(cfg)
    doc["skipped"] = dict(skipped)
    doc["skipped_apps"] = skipped_apps
    servers = [s for s in cfg.servers if s not in skipped]
    with tempfile.TemporaryDirectory(prefix="rapidwsgi-bench-logs-") as tmp:
        try:
            doc["preflight"] = run_preflights(cfg, servers, Path(tmp))
            runnable = runnable_servers(cfg, servers, doc["preflight"])
            for slot in schedule(cfg, runnable):
                doc["runs"].append(run_slot(slot, cfg, Path(tmp)))
        except KeyboardInterrupt:
            log("\ninterrupted: keeping the runs done so far")
            doc["interrupted"] = True
    doc["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return doc


def markdown_only(path: Path) -> int:
    doc = json.loads(path.read_text())
    text = render_markdown(doc)
    write_atomic(path.with_suffix(".md"), text)
    print(text)
    return 0


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves like Ctrl-C: stop the running server, keep partial runs."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, interrupt)
    args = parse_args(argv)
    if args.markdown_only:
        return markdown_only(args.markdown_only)
    missing = check_tools()
    if missing:
        log(f"missing tools: {', '.join(missing)}; install them with: {APT_HINT}")
        if "taskset" in missing:
            log("(taskset comes with Debian's util-linux package)")
        return 2
    cfg = build_config(args)
    if cfg.selftest:
        check_parsers()
    doc = benchmark(cfg, explicit_servers=args.servers is not None)
    print(render_markdown(doc))
    if not cfg.selftest:
        json_path, md_path = write_results(doc, cfg.out_dir)
        log(f"wrote {json_path} and {md_path}")
    if doc.get("interrupted"):
        return 130
    return 0 if any(r["ok"] for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
