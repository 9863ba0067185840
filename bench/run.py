#!/usr/bin/env python3
"""rapidwsgi bench: the seed's 2010 study reproduced with today's WSGI servers.

One entry point for the whole scenario matrix, apps x modes x loads:
- apps: hello world, a Django project (a template page; a SQLite query page), a Flask
  page, a 1 MB response;
- modes: standalone, and behind nginx with proxy_pass (with and without upstream
  keep-alive), uwsgi_pass and fastcgi_pass, each server in the modes it supports;
- loads: the seed's ``ab -n 1000 -c 20`` x5 and ``ab -n 10000 -c 500``, wrk keep-alive
  at c20 and c500, and wrk at c2000 to find where each server starts failing.

Each server runs as one worker pinned to core 0; the load generator (and nginx) run on
core 1; all traffic stays on 127.0.0.1 or unix sockets. Servers are interleaved in a
seeded shuffled order every round so that drift on the machine hits all of them alike.
Writes ``<out>/<date>-<host>.json``, a markdown report and PNG charts.

Usage: python bench/run.py [--quick | --selftest] [--servers a,b] [--apps a,b]
       [--modes a,b] [--loads a,b] [--rounds N] [--duration S] [--workers N] [--out DIR]
       python bench/run.py --markdown-only FILE.json
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import front
import peers
import probe
from common import (
    AB_SAMPLE,
    APP_BY_NAME,
    APPS,
    APPS_DIR,
    DEFAULT_OUT,
    HOST,
    LOAD_BY_NAME,
    LOADS,
    MODE_BY_NAME,
    MODES,
    RAW_OUTPUT_CHARS,
    WRK_SAMPLE,
    Group,
    Load,
    LoadResult,
    Preflight,
    RunRecord,
    describe_errors,
    error_total,
    fmt_rate,
    free_port,
    last_line,
    log,
    parse_ab,
    parse_wrk,
    run_capture,
    spawn_logged,
    write_atomic,
)
from report import render_markdown

SCHEMA = 2
DEFAULT_SEED = 20240601
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
NOFILE_WANTED = 65536
AB_REQUEST_TIMEOUT_S = 10
SELFTEST_PREFERENCE = ("waitress", "gunicorn", "bjoern", "fastwsgi", "granian")
CHARTS_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------
# Plans: which (app, mode) groups, with which loads
# --------------------------------------------------------------------------


def group(app: str, mode: str, loads: Sequence[str]) -> Group:
    return Group(APP_BY_NAME[app], MODE_BY_NAME[mode], tuple(LOAD_BY_NAME[ld] for ld in loads))


ALL_LOADS = tuple(ld.name for ld in LOADS)
NGINX_MODES = tuple(m.name for m in MODES if m.front)
SEED_LOADS = ("ab-c20", "ab-c500")
KEEPALIVE_LOADS = ("wrk-c20", "wrk-c500")
PLANS: dict[str, tuple[Group, ...]] = {
    # The full study: the seed's table (Django page, every mode, ab loads), keep-alive
    # and overload on hello and Django, the cost of each nginx mode on hello, and the
    # other apps standalone.
    "full": (
        group("hello", "standalone", ALL_LOADS),
        group("django", "standalone", ALL_LOADS),
        *(group("django", m, (*SEED_LOADS, "wrk-c20")) for m in NGINX_MODES),
        *(group("hello", m, ("wrk-c20",)) for m in NGINX_MODES),
        group("django-sql", "standalone", KEEPALIVE_LOADS),
        group("flask", "standalone", KEEPALIVE_LOADS),
        group("big", "standalone", KEEPALIVE_LOADS),
    ),
    "quick": (
        group("hello", "standalone", ALL_LOADS),
        group("django", "standalone", ("ab-c20", "wrk-c20")),
        group("django", "nginx-proxy-ka", ("ab-c20",)),
    ),
    "selftest": (
        group("hello", "standalone", ("ab-c20", "wrk-c20", "wrk-c500")),
        group("hello", "nginx-proxy-ka", ("wrk-c20",)),
    ),
}


@dataclass(frozen=True)
class Config:
    servers: tuple[str, ...]
    plan: tuple[Group, ...]
    rounds: int
    duration: int
    ab_scale: float
    ab_repeat: int
    ab_cap: int
    seed: int
    out_dir: Path
    write: bool
    charts: bool
    profile: str
    workers: int
    server_cpus: str
    load_cpus: str
    rapidwsgi_python: str
    tag: str

    @property
    def wrk_threads(self) -> int:
        return len(self.load_cpus.split(","))


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE for this process and its children (c500, c2000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(target, soft)


def pin_self(cpus: str) -> None:
    """Keep the harness's own work (fairness probe, readiness checks) off the server cores."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def split_cpus(workers: int) -> tuple[str, str]:
    """(server cpus, load cpus): one core for a one-worker server, else the first N."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0, 1]
    if len(cores) < 2:
        raise SystemExit("the benchmark needs at least 2 cores (server and load apart)")
    n = max(1, min(workers, len(cores) - 1))
    if workers > n:
        log(f"note: {workers} workers share {n} server core(s); the load keeps {len(cores) - n}")
    return ",".join(map(str, cores[:n])), ",".join(map(str, cores[n:]))


def check_tools(need_nginx: bool) -> list[str]:
    missing = [tool for tool in ("wrk", "ab", "taskset") if shutil.which(tool) is None]
    if need_nginx and not front.nginx_binary():
        missing.append("nginx")
    return missing


# --------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------


def server_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(APPS_DIR)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["VIRTUAL_ENV"] = str(peers.venv_dir())
    env["PATH"] = f"{peers.venv_dir() / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["BENCH_DB_DIR"] = str(tmp)
    return env


def http_get_status(port: int, path: str) -> int:
    conn = HTTPConnection(HOST, port, timeout=5.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def can_connect(address: str) -> bool:
    """address: host:port or unix:path."""
    try:
        if address.startswith("unix:"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(address[5:])
        else:
            host, port = address.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        return False
    return True


def wait_ready(proc: subprocess.Popen[bytes], check: Any, what: str, timeout: float = READY_TIMEOUT_S) -> str:
    """Poll check() until it returns '' (ready); returns '' or the failure reason."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode} before answering"
        last = check()
        if not last:
            return ""
        time.sleep(0.1)
    return f"{what}: not ready within {timeout:.0f}s (last: {last})"


def get_check(port: int, path: str) -> Any:
    def check() -> str:
        try:
            status = http_get_status(port, path)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "" if status == 200 else f"HTTP {status}"

    return check


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


def session_pids(sid: int) -> list[int]:
    """The live processes of session sid: a server started in its own session (master and
    workers, whatever they fork)."""
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def session_peak_rss_kb(sid: int) -> int:
    """Sum of the peak RSS (VmHWM) of the live processes of session sid: the server's
    master and workers (an upper bound of their joint peak)."""
    total = 0
    for pid in session_pids(sid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


@dataclass
class Running:
    port: int  # where the load goes: the server, or nginx in front of it
    error: str
    pid: int
    command: str


@contextlib.contextmanager
def running_server(server: str, grp: Group, cfg: Config, tmp: Path, tag: str) -> Iterator[Running]:
    """Start a server (and nginx in front for a gateway mode); always stop both."""
    spec = peers.SERVER_BY_NAME[server]
    visit_dir = tmp / tag
    visit_dir.mkdir(parents=True, exist_ok=True)
    visit_dir.chmod(0o755)  # nginx must reach a unix socket in here
    free = free_port()
    values = {
        "port": str(free),
        "bind": f"{HOST}:{free}",
        "sock": str(visit_dir / "app.sock"),
        "target": grp.app.target,
        "workers": str(cfg.workers),
    }
    listener = grp.mode.listener
    argv = peers.server_argv(spec, listener, values, cfg.rapidwsgi_python)
    argv = ["taskset", "-c", cfg.server_cpus, *argv]
    upstream = f"unix:{values['sock']}" if listener == "uwsgi" else values["bind"]
    logfile = visit_dir / "server.log"
    proc = spawn_logged(argv, logfile, server_env(tmp))
    command = " ".join(argv)
    try:
        if not grp.mode.front:
            error = wait_ready(proc, get_check(free, grp.app.path), "server")
            if error:
                error += f"; log: {last_line(logfile.read_text(errors='replace'))}"
            yield Running(free, error, proc.pid, command)
            return
        ready = wait_ready(proc, lambda: "" if can_connect(upstream) else "not listening", "server")
        if ready:
            ready += f"; log: {last_line(logfile.read_text(errors='replace'))}"
            yield Running(0, ready, proc.pid, command)
            return
        nginx_workers = len(cfg.load_cpus.split(","))
        nginx_dir = visit_dir / "nginx"
        with front.running_nginx(
            grp.mode.front, upstream, nginx_dir, cfg.load_cpus, nginx_workers
        ) as started:
            port, error = started
            if not error:
                error = wait_ready(proc, get_check(port, grp.app.path), "through nginx")
            if error:
                server_log = last_line(logfile.read_text(errors="replace"))
                error += f"; nginx: {front.error_log_tail(nginx_dir)}; server log: {server_log}"
            yield Running(port, error, proc.pid, command)
    finally:
        stop_server(proc)
        shutil.rmtree(visit_dir, ignore_errors=True)


# --------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------


def ab_requests(load: Load, cfg: Config) -> int:
    return max(load.connections, round(load.requests * cfg.ab_scale))


def load_repeats(load: Load, cfg: Config) -> int:
    return min(load.repeat, cfg.ab_repeat) if load.tool == "ab" else 1


def load_command(load: Load, cfg: Config, url: str) -> list[str]:
    """wrk keep-alive, or ab with a new connection per request (no -k), as the seed."""
    c = load.connections
    if load.tool == "wrk":
        tool = f"wrk -t{cfg.wrk_threads} -c{c} -d{cfg.duration}s --latency".split()
    else:  # -t caps the time; -n after -t, or ab would use -t's 50000 requests
        n = ab_requests(load, cfg)
        tool = f"ab -r -s {AB_REQUEST_TIMEOUT_S} -t {cfg.ab_cap} -n {n} -c {c}".split()
    return ["taskset", "-c", cfg.load_cpus, *tool, url]


@dataclass(frozen=True)
class Measured:
    result: LoadResult | None
    error: str
    command: str
    output: str


def run_load(load: Load, cfg: Config, port: int, path: str) -> Measured:
    url = f"http://{HOST}:{port}{path}"
    timeout = cfg.duration + 60 if load.tool == "wrk" else cfg.ab_cap + AB_REQUEST_TIMEOUT_S + 30
    cmd = load_command(load, cfg, url)
    code, out = run_capture(cmd, timeout)
    parse = parse_wrk if load.tool == "wrk" else parse_ab
    raw = out[-RAW_OUTPUT_CHARS:]
    try:
        return Measured(parse(out), "", " ".join(cmd), raw)
    except ValueError as exc:
        return Measured(None, f"{load.tool} exit {code}: {exc}", " ".join(cmd), raw)


def progress_suffix(result: LoadResult | None, error: str) -> str:
    if result is None:
        return f"FAILED: {error}"
    text = f"{fmt_rate(result['rps'])} req/s"
    if error_total(result["errors"]):
        text += f" (errors: {describe_errors(result['errors'])})"
    return text


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    round: int
    position: int
    group: Group
    server: str


def supported(server: str, grp: Group) -> bool:
    return peers.SERVER_BY_NAME[server].supports(grp.mode.listener, grp.mode.front)


def schedule(cfg: Config, servers: Sequence[str]) -> list[Visit]:
    """Each round, each group, every server that supports its mode once, shuffled."""
    rng = random.Random(cfg.seed)
    visits: list[Visit] = []
    for rnd in range(1, cfg.rounds + 1):
        for grp in cfg.plan:
            order = [s for s in servers if supported(s, grp)]
            rng.shuffle(order)
            visits += [Visit(rnd, i, grp, s) for i, s in enumerate(order)]
    return visits


def record(visit: Visit, load: Load, rep: int, got: Measured, rss_kb: int) -> RunRecord:
    return RunRecord(
        round=visit.round,
        position=visit.position,
        rep=rep,
        app=visit.group.app.name,
        mode=visit.group.mode.name,
        load=load.name,
        server=visit.server,
        ok=got.result is not None,
        error=got.error,
        result=got.result,
        rss_kb=rss_kb,
        command=got.command,
        output=got.output,
    )


def run_visit(visit: Visit, number: int, total: int, cfg: Config, tmp: Path) -> tuple[list[RunRecord], str]:
    """Start the server once, run the group's loads in order; (records, start error)."""
    grp = visit.group
    head = f"[round {visit.round}/{cfg.rounds} · {number}/{total}] {grp.name} {visit.server}"
    records: list[RunRecord] = []
    with running_server(visit.server, grp, cfg, tmp, f"visit-{number}") as srv:
        if srv.error:
            log(f"{head}: FAILED to start: {srv.error}")
            return records, srv.error
        for load in grp.loads:
            reps = load_repeats(load, cfg)
            for rep in range(1, reps + 1):
                rep_text = f" #{rep}/{reps}" if reps > 1 else ""
                log(f"{head} {load.name}{rep_text} ...", end=" ")
                got = run_load(load, cfg, srv.port, grp.app.path)
                log(progress_suffix(got.result, got.error))
                records.append(record(visit, load, rep, got, session_peak_rss_kb(srv.pid)))
    return records, ""


def preflight(server: str, cfg: Config, tmp: Path) -> Preflight:
    """Start once on the plan's first app, standalone: fail fast, probe keep-alive fairness."""
    grp = Group(cfg.plan[0].app, MODE_BY_NAME["standalone"], ())
    with running_server(server, grp, cfg, tmp, f"preflight-{server}") as srv:
        if srv.error:
            return Preflight(ok=False, error=srv.error, fairness=None)
        return Preflight(ok=True, error="", fairness=probe.fairness_probe(srv.port, grp.app.path))


def run_preflights(cfg: Config, servers: Sequence[str], tmp: Path) -> dict[str, Preflight]:
    results: dict[str, Preflight] = {}
    for server in servers:
        log(f"[preflight] {server} ...", end=" ")
        pre = preflight(server, cfg, tmp)
        log("ok" if pre["ok"] else f"FAILED: {pre['error']}")
        for flag in pre["fairness"]["flags"] if pre["fairness"] else []:
            log(f"    flag: {flag}")
        results[server] = pre
    return results


def prepare_database(cfg: Config, tmp: Path) -> str:
    """Create the Django project's SQLite table once, before any server imports it."""
    if not any(g.app.name.startswith("django") for g in cfg.plan):
        return ""
    code, out = run_capture(
        [str(peers.venv_python()), "-c", "import djbench.wsgi"],
        120,
        cwd=APPS_DIR,
    )
    return "" if code == 0 else last_line(out)


def execute(cfg: Config, doc: dict[str, Any], servers: list[str], tmp: Path) -> None:
    db_error = prepare_database(cfg, tmp)
    if db_error:
        log(f"django apps skipped: {db_error}")
        doc["skipped_apps"].update(dict.fromkeys(["django", "django-sql"], db_error))
        cfg = replace(cfg, plan=tuple(g for g in cfg.plan if not g.app.name.startswith("django")))
    doc["preflight"] = run_preflights(cfg, servers, tmp)
    runnable = [s for s in servers if doc["preflight"][s]["ok"]]
    visits = schedule(cfg, runnable)
    broken: dict[tuple[str, str], str] = {}
    for number, visit in enumerate(visits, 1):
        key = (visit.server, visit.group.name)
        if key in broken:
            continue
        records, error = run_visit(visit, number, len(visits), cfg, tmp)
        doc["runs"] += records
        if error:
            broken[key] = error
            doc["dropped"].append({"server": visit.server, "group": visit.group.name, "error": error})


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


def read_sys(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unknown"


def machine_info(cfg: Config) -> dict[str, Any]:
    nginx = front.nginx_binary()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory": mem_total(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "os": next(
            (
                line.split("=", 1)[1].strip('"')
                for line in read_sys("/etc/os-release").splitlines()
                if line.startswith("PRETTY_NAME=")
            ),
            "unknown",
        ),
        "python_harness": platform.python_version(),
        "wrk": tool_version(["wrk", "-v"]).split(" Copyright")[0],
        "ab": tool_version(["ab", "-V"]).removeprefix("This is "),
        "nginx": tool_version([nginx, "-v"]) if nginx else "not installed",
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "somaxconn": read_sys("/proc/sys/net/core/somaxconn"),
        "server_cpus": cfg.server_cpus,
        "load_cpus": cfg.load_cpus,
    }


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def results_stem(doc: dict[str, Any]) -> str:
    tag = doc["config"].get("tag", "")
    return f"{doc['date']}-{doc['machine']['hostname']}" + (f"-{tag}" if tag else "")


def make_charts(json_path: Path, out_dir: Path) -> tuple[list[str], str]:
    """Render the PNG charts with matplotlib from the peers venv; (files, error)."""
    script = Path(__file__).resolve().parent / "charts.py"
    code, out = run_capture(
        [str(peers.venv_python()), str(script), str(json_path), str(out_dir)], CHARTS_TIMEOUT_S
    )
    if code:
        return [], f"charts failed (exit {code}): {last_line(out)}"
    files = [line.strip() for line in out.splitlines() if line.strip().endswith(".png")]
    return files, ""


def write_results(doc: dict[str, Any], cfg: Config) -> tuple[Path, Path]:
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    stem = results_stem(doc)
    json_path, md_path = cfg.out_dir / f"{stem}.json", cfg.out_dir / f"{stem}.md"
    write_atomic(json_path, json.dumps(doc, indent=1) + "\n")
    if cfg.charts:
        files, error = make_charts(json_path, cfg.out_dir)
        doc["charts"] = [Path(f).name for f in files]
        doc["charts_error"] = error
        if error:
            log(error)
        write_atomic(json_path, json.dumps(doc, indent=1) + "\n")
    write_atomic(md_path, render_markdown(doc))
    return json_path, md_path


# --------------------------------------------------------------------------
# Self-test of the parsers (no processes)
# --------------------------------------------------------------------------


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
    assert probe.response_end(body) == (len(body) - 1, False)
    log("selftest: wrk/ab/HTTP parsers ok")


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="the 2-minute plan: 1 round, 1 s wrk, small ab")
    add("--selftest", action="store_true", help="parsers check and the fastest run (seconds)")
    add("--servers", help=f"comma list (default all): {','.join(peers.ALL_SERVERS)}")
    add("--apps", help=f"keep only these apps of the plan: {','.join(a.name for a in APPS)}")
    add("--modes", help=f"keep only these modes of the plan: {','.join(m.name for m in MODES)}")
    add("--loads", help=f"keep only these loads of the plan: {','.join(ALL_LOADS)}")
    add("--matrix", action="store_true", help="every app x mode x load combination, not the plan")
    add("--rounds", type=int, help="rounds (default 2; quick/selftest 1)")
    add("--duration", type=int, help="seconds per wrk run (default 3; quick/selftest 1)")
    add("--ab-scale", type=float, help="multiply ab -n (default 1 = the seed's; quick 0.2)")
    add("--ab-repeat", type=int, help="runs of ab -c 20 per visit (default 5 as the seed; quick 2)")
    add("--ab-cap", type=int, help="ab -t: seconds cap per ab run (default 30; quick 10)")
    add("--workers", type=int, default=1, help="worker processes per server (cores permitting)")
    add("--seed", type=int, default=DEFAULT_SEED, help="shuffle seed")
    add("--tag", default="", help="suffix of the results' file names: <date>-<host>-<tag>")
    add("--out", type=Path, help=f"results directory (default {DEFAULT_OUT})")
    add("--venv", type=Path, help="peers virtualenv (default bench/.venv-peers)")
    add("--rapidwsgi-python", help="run rapidwsgi with this interpreter instead of the peers venv's")
    add("--no-charts", action="store_true", help="skip the PNG charts")
    add("--markdown-only", type=Path, metavar="FILE.json", help="re-render the markdown and exit")
    add("--charts-only", type=Path, metavar="FILE.json", help="re-render the charts and markdown and exit")
    return parser.parse_args(argv)


def split_names(value: str | None, known: Sequence[str], what: str) -> tuple[str, ...]:
    if not value:
        return tuple(known)
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def build_plan(args: argparse.Namespace, profile: str) -> tuple[Group, ...]:
    apps = split_names(args.apps, [a.name for a in APPS], "app")
    modes = split_names(args.modes, [m.name for m in MODES], "mode")
    loads = split_names(args.loads, ALL_LOADS, "load")
    if args.matrix:
        base = tuple(group(a, m, ALL_LOADS) for a in apps for m in modes)
    else:
        base = PLANS[profile]
    plan = []
    for grp in base:
        kept = tuple(ld for ld in grp.loads if ld.name in loads)
        if grp.app.name in apps and grp.mode.name in modes and kept:
            plan.append(replace(grp, loads=kept))
    if not plan:
        raise SystemExit("--apps/--modes/--loads leave nothing of the plan (try --matrix)")
    return tuple(plan)


def build_config(args: argparse.Namespace) -> Config:
    profile = "selftest" if args.selftest else "quick" if args.quick else "full"
    small = profile != "full"
    server_cpus, load_cpus = split_cpus(args.workers)
    cfg = Config(
        servers=split_names(args.servers, peers.ALL_SERVERS, "server"),
        plan=build_plan(args, profile),
        rounds=args.rounds or (1 if small else 2),
        duration=args.duration or (1 if small else 3),
        ab_scale=args.ab_scale or (0.2 if small else 1.0),
        ab_repeat=args.ab_repeat or (1 if profile == "selftest" else 2 if small else 5),
        ab_cap=args.ab_cap or (10 if small else 30),
        seed=args.seed,
        out_dir=(args.out or DEFAULT_OUT).resolve(),
        write=not args.selftest or args.out is not None,
        charts=not args.no_charts,
        profile=profile,
        workers=args.workers,
        server_cpus=server_cpus,
        load_cpus=load_cpus,
        rapidwsgi_python=args.rapidwsgi_python or "",
        tag=args.tag,
    )
    if cfg.rounds < 1 or cfg.duration < 1 or cfg.ab_scale <= 0 or cfg.ab_repeat < 1 or cfg.workers < 1:
        raise SystemExit("--rounds, --duration, --ab-scale, --ab-repeat and --workers must be positive")
    return cfg


def config_json(cfg: Config) -> dict[str, Any]:
    return {
        "profile": cfg.profile,
        "servers": list(cfg.servers),
        "plan": [
            {"app": g.app.name, "mode": g.mode.name, "loads": [ld.name for ld in g.loads]} for g in cfg.plan
        ],
        "apps": {a.name: f"{a.target} GET {a.path}: {a.description}" for a in APPS},
        "modes": {m.name: m.label for m in MODES},
        "loads": {ld.name: " ".join(load_command(ld, cfg, "URL")[3:]) for ld in LOADS},
        "load_repeats": {ld.name: load_repeats(ld, cfg) for ld in LOADS},
        "ab_requests": {ld.name: ab_requests(ld, cfg) for ld in LOADS if ld.tool == "ab"},
        "server_commands": {
            s.name: {
                lst: f"taskset -c {cfg.server_cpus} {s.template(lst)}"
                for lst in ("http", "uwsgi", "fastcgi")
                if s.template(lst)
            }
            for s in peers.SERVERS
            if s.name in cfg.servers
        },
        "server_notes": {s.name: s.note for s in peers.SERVERS if s.name in cfg.servers and s.note},
        "server_labels": {s.name: s.label for s in peers.SERVERS},
        "single_process": [s.name for s in peers.SERVERS if not s.multiprocess],
        "rounds": cfg.rounds,
        "duration": cfg.duration,
        "ab_scale": cfg.ab_scale,
        "ab_repeat": cfg.ab_repeat,
        "ab_cap": cfg.ab_cap,
        "workers": cfg.workers,
        "seed": cfg.seed,
        "rapidwsgi_python": cfg.rapidwsgi_python,
        "tag": cfg.tag,
    }


def new_doc(cfg: Config) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "date": dt.date.today().isoformat(),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": config_json(cfg),
        "machine": machine_info(cfg),
        "versions": peers.peer_versions(cfg.rapidwsgi_python),
        "granian_defaults": peers.granian_defaults(),
        "install_failures": {},
        "skipped": {},
        "skipped_apps": {},
        "dropped": [],
        "preflight": {},
        "runs": [],
    }


def skip_apps(cfg: Config, reasons: dict[str, str]) -> dict[str, str]:
    """Apps whose modules do not import in the peers venv (name -> reason)."""
    skipped: dict[str, str] = {}
    for grp in cfg.plan:
        app = grp.app
        if app.name in skipped or not app.needs:
            continue
        broken = {m: e for m, e in peers.import_check(app.needs).items() if e}
        dist_reason = next((reasons[d] for d in ("django", "flask") if d in app.needs and reasons.get(d)), "")
        if broken or dist_reason:
            skipped[app.name] = dist_reason or "; ".join(f"import {m}: {e}" for m, e in broken.items())
            log(f"  SKIP app {app.name}: {skipped[app.name]}")
    return skipped


def choose_selftest_servers(cfg: Config, skipped: dict[str, str], explicit: bool) -> Config:
    """With --selftest and no --servers: the first available of SELFTEST_PREFERENCE."""
    if explicit:
        return cfg
    pool = [s for s in SELFTEST_PREFERENCE if s not in skipped]
    if not pool:
        raise SystemExit("selftest: no server available")
    return replace(cfg, servers=(pool[0],))


def benchmark(cfg: Config, explicit_servers: bool) -> dict[str, Any]:
    extra = [d for d in ("django", "flask") if any(d in g.app.needs for g in cfg.plan)]
    extra += ["matplotlib"] if cfg.charts else []
    servers = cfg.servers
    if cfg.profile == "selftest" and not explicit_servers:
        servers = SELFTEST_PREFERENCE
    reasons = peers.prepare(servers, extra, cfg.rapidwsgi_python)
    skipped = peers.server_skips(servers, reasons)
    if cfg.profile == "selftest":
        cfg = choose_selftest_servers(replace(cfg, servers=tuple(servers)), skipped, explicit_servers)
    skipped_apps = skip_apps(cfg, reasons)
    cfg = replace(cfg, plan=tuple(g for g in cfg.plan if g.app.name not in skipped_apps))
    if not front.nginx_binary():
        gone = [g.name for g in cfg.plan if g.mode.front]
        if gone:
            log(f"  nginx not installed: skipping {', '.join(gone)}")
        cfg = replace(cfg, plan=tuple(g for g in cfg.plan if not g.mode.front))
    if not cfg.plan:
        raise SystemExit("nothing left to run (see the skips above)")
    raise_nofile_limit()
    pin_self(cfg.load_cpus)
    doc = new_doc(cfg)
    doc["install_failures"] = {d: why for d, why in reasons.items() if why}
    doc["skipped"] = {s: why for s, why in skipped.items() if s in cfg.servers}
    doc["skipped_apps"] = skipped_apps
    servers_ok = [s for s in cfg.servers if s not in skipped]
    with tempfile.TemporaryDirectory(prefix="rapidwsgi-bench-") as tmp:
        os.chmod(tmp, 0o755)
        try:
            execute(cfg, doc, servers_ok, Path(tmp))
        except KeyboardInterrupt:
            log("\ninterrupted: keeping the runs done so far")
            doc["interrupted"] = True
    doc["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return doc


def rerender(path: Path, charts: bool) -> int:
    doc = json.loads(path.read_text())
    if charts:
        files, error = make_charts(path, path.parent)
        doc["charts"], doc["charts_error"] = [Path(f).name for f in files], error
        write_atomic(path, json.dumps(doc, indent=1) + "\n")
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
    if args.venv:
        peers.set_venv(args.venv)
    if args.markdown_only or args.charts_only:
        return rerender(args.markdown_only or args.charts_only, charts=bool(args.charts_only))
    cfg = build_config(args)
    missing = check_tools(need_nginx=False)
    if missing:
        log(f"missing tools: {', '.join(missing)}; install them with: {peers.APT_HINT}")
        return 2
    if cfg.profile == "selftest":
        check_parsers()
    started = time.monotonic()
    doc = benchmark(cfg, explicit_servers=args.servers is not None)
    doc["wall_seconds"] = round(time.monotonic() - started)
    if cfg.write:
        json_path, md_path = write_results(doc, cfg)
        log(f"wrote {json_path}, {md_path} and {len(doc.get('charts', []))} chart(s)")
    print(render_markdown(doc))
    if doc.get("interrupted"):
        return 130
    return 0 if any(r["ok"] for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
