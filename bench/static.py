"""Static files: rapidwsgi ``--static`` against nginx (the ceiling), uWSGI
``--static-map``, granian ``--static-path-mount`` and WhiteNoise inside the application
(under rapidwsgi and under gunicorn).

Three files (1 KiB, 100 KiB, 10 MiB) in one directory, mounted at ``/static/`` on every
server; one server process pinned to core 0, ``wrk -t1`` on core 1 (``--server-cpus`` /
``--load-cpus``), ``-c20`` and ``-c500`` keep-alive, plus the 304 of a conditional
request (``If-None-Match`` with the server's own ETag, else ``If-Modified-Since`` with
its Last-Modified) for the 1 KiB and 100 KiB files at ``-c20``. Servers are interleaved
in a new random order every round; the report gives medians and ratios (to nginx, and
rapidwsgi to each peer). Every server's answers are checked first: the bytes of each
file, exactly.

    python3 bench/static.py                  # 3 rounds (~15 min on 2 cores)
    python3 bench/static.py --rounds 1 --duration 3 --servers rapidwsgi,nginx
    make bench-static

Writes ``bench/results/<date>-<host>-static.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import cast

import front
import peers
from common import APPS_DIR, HOST, free_port, log, parse_wrk, spawn_logged, write_atomic
from run import server_env, stop_server, wait_ready

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIZES = {"1k": ("f1k.css", 1024), "100k": ("f100k.js", 100 * 1024), "10m": ("f10m.bin", 10 * 1024 * 1024)}
LOADS = {"c20": 20, "c500": 500}
CONDITIONAL_SIZES = ("1k", "100k")
SERVERS = ("rapidwsgi", "nginx", "uwsgi", "granian", "whitenoise-rapidwsgi", "whitenoise-gunicorn")
LABELS = {
    "rapidwsgi": "rapidwsgi --static",
    "nginx": "nginx (location alias, sendfile, open_file_cache)",
    "uwsgi": "uWSGI --static-map (--http-socket)",
    "granian": "granian --static-path-mount",
    "whitenoise-rapidwsgi": "WhiteNoise in the app, under rapidwsgi",
    "whitenoise-gunicorn": "WhiteNoise in the app, under gunicorn gthread (4 threads)",
}
NOTES = {
    "uwsgi": "--http-socket closes the connection after each response (wrk reconnects; its "
    "read errors are those closes); --http11-socket starved connections here (BENCH-NOTES.md)",
}
NGINX_CONF = (
    front.PREAMBLE
    + """
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    open_file_cache max=1000 inactive=60s;
    types {{ text/css css; text/javascript js; application/octet-stream bin; }}
    server {{
        listen {host}:{port} backlog=4096;
        location /static/ {{ alias {root}/; expires 60s; }}
    }}
}}
"""
)


@dataclass
class Cell:
    server: str
    size: str
    load: str  # c20, c500, or 304-c20
    rps: list[float]
    errors: list[int]


def make_files(root: Path) -> dict[str, str]:
    """The three files (random bytes, so no compression helps anyone); name -> sha256."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    digests = {}
    for name, size in SIZES.values():
        data = rng.randbytes(size)
        (root / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def argv_for(
    server: str, port: int, root: Path, tmp: Path, rapid_py: str
) -> tuple[list[str], dict[str, str]]:
    bind = f"{HOST}:{port}"
    env = server_env(tmp)
    env["BENCH_STATIC_DIR"] = str(root)
    rapid = [
        rapid_py,
        "-m",
        "rapidwsgi",
        "--workers",
        "1",
        "--threads",
        "1",
        "--log-level",
        "warning",
        "--bind",
        bind,
    ]
    venv = peers.venv_dir() / "bin"
    if server == "rapidwsgi":
        return [*rapid, "--static", f"/static/={root}", "hello:app"], env
    if server == "whitenoise-rapidwsgi":
        return [*rapid, "static_whitenoise:app"], env
    if server == "whitenoise-gunicorn":
        gunicorn = [str(venv / "gunicorn"), "-w", "1", "-k", "gthread", "--threads", "4", "-b", bind]
        return [*gunicorn, "--log-level", "warning", "static_whitenoise:app"], env
    if server == "uwsgi":
        return [
            str(venv / "uwsgi"),
            *("--master", "--processes", "1", "--http-socket", bind, "--module", "hello:app"),
            *(
                "--pythonpath",
                str(APPS_DIR),
                "--static-map",
                f"/static={root}",
                "--disable-logging",
                "--die-on-term",
            ),
        ], env
    if server == "granian":
        return [
            str(venv / "granian"),
            *("--interface", "wsgi", "--host", HOST, "--port", str(port), "--workers", "1"),
            *("--log-level", "warning", "--static-path-route", "/static", "--static-path-mount", str(root)),
            "hello:app",
        ], env
    if server == "nginx":
        conf_dir = tmp / "nginx"
        conf_dir.mkdir(parents=True, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        conf = NGINX_CONF.format(user=user, workers=1, tmp=conf_dir, host=HOST, port=port, root=root)
        (conf_dir / "nginx.conf").write_text(conf)
        return [
            front.nginx_binary(),
            "-p",
            str(conf_dir),
            "-c",
            str(conf_dir / "nginx.conf"),
            "-g",
            "daemon off;",
        ], env
    raise ValueError(server)


def fetch(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def check_answers(port: int, digests: dict[str, str]) -> str:
    """'' when every file comes back exactly; else what is wrong."""
    for name, digest in digests.items():
        status, _, body = fetch(port, f"/static/{name}")
        if status != 200 or hashlib.sha256(body).hexdigest() != digest:
            return f"/static/{name}: status {status}, {len(body)} bytes, not the file"
    return ""


def conditional_header(port: int, name: str) -> str | None:
    """The header that makes this server answer 304 for the file, or None."""
    _, headers, _ = fetch(port, f"/static/{name}")
    for field, validator in (
        ("If-None-Match", headers.get("etag")),
        ("If-Modified-Since", headers.get("last-modified")),
    ):
        if validator:
            status, _, _ = fetch(port, f"/static/{name}", {field: validator})
            if status == 304:
                return f"{field}: {validator}"
    return None


@contextlib.contextmanager
def running(server: str, root: Path, tmp: Path, cfg: argparse.Namespace) -> Iterator[tuple[int, str]]:
    port = free_port()
    argv, env = argv_for(server, port, root, tmp, cfg.rapidwsgi_python or str(peers.venv_python()))
    argv = ["taskset", "-c", cfg.server_cpus, *argv]
    logfile = tmp / f"{server}.log"
    proc = spawn_logged(argv, logfile, env)
    try:

        def check() -> str:
            try:
                status = fetch(port, f"/static/{SIZES['1k'][0]}")[0]
            except OSError as exc:
                return str(exc)
            return "" if status == 200 else f"HTTP {status}"

        error = wait_ready(proc, check, server, timeout=60)
        if error:
            error += "; log: " + logfile.read_text(errors="replace")[-300:]
        yield port, error
    finally:
        stop_server(proc)


def wrk(
    cfg: argparse.Namespace, port: int, path: str, connections: int, header: str | None
) -> tuple[float, int]:
    cmd = [
        "taskset",
        "-c",
        cfg.load_cpus,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{cfg.duration}s",
        "--latency",
    ]
    cmd += ["--timeout", "10s"]
    if header:
        cmd += ["-H", header]
    cmd.append(f"http://{HOST}:{port}{path}")
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=cfg.duration + 60).stdout
    result = parse_wrk(out)
    # wrk's "read" errors are a server closing after the response (uWSGI --http-socket).
    counts = cast(dict[str, int], result["errors"])
    errors = sum(v for k, v in counts.items() if k != "read")
    return result["rps"], errors


def run_round(
    cfg: argparse.Namespace,
    root: Path,
    tmp: Path,
    digests: dict[str, str],
    cells: dict[str, Cell],
    skipped: dict[str, str],
    order: list[str],
) -> None:
    for server in order:
        if server in skipped:
            continue
        with running(server, root, tmp, cfg) as (port, started):
            error = started or check_answers(port, digests)
            if error:
                skipped[server] = error
                log(f"  SKIP {server}: {error}")
                continue
            plan: list[tuple[str, str, int, str | None]] = [
                (size, load, LOADS[load], None) for size in cfg.sizes for load in cfg.loads
            ]
            for size in CONDITIONAL_SIZES:
                if size in cfg.sizes:
                    header = conditional_header(port, SIZES[size][0])
                    if header is not None:
                        plan.append((size, "304-c20", 20, header))
            for size, load, connections, header in plan:
                rps, errors = wrk(cfg, port, f"/static/{SIZES[size][0]}", connections, header)
                key = f"{server} {size} {load}"
                cell = cells.setdefault(key, Cell(server, size, load, [], []))
                cell.rps.append(rps)
                cell.errors.append(errors)
                log(f"  {server:22} {size:5} {load:8} {rps:>10.0f} req/s  errors {errors}")


def report(
    cells: dict[str, Cell], cfg: argparse.Namespace, skipped: dict[str, str], meta: dict[str, object]
) -> str:
    # A run with no response at all is a failure, not a rate: medians are over the rest.
    med = {key: statistics.median(ok) for key, c in cells.items() if (ok := [r for r in c.rps if r > 0])}
    servers = [s for s in cfg.servers if any(c.server == s for c in cells.values())]
    loads = [*cfg.loads, "304-c20"]
    lines = [
        f"# Static files, {meta['date']} ({meta['machine']})",
        "",
        f"One server process on core {cfg.server_cpus}, `wrk -t1` on core {cfg.load_cpus}, "
        f"{cfg.duration} s per run, {cfg.rounds} interleaved round(s), medians in requests/s; "
        "`x nginx` is the ratio to nginx in the same run. 304: a conditional GET with the "
        "server's own validator (ETag, else Last-Modified).",
        "",
        "| file | load | " + " | ".join(servers) + " |",
        "|---|---|" + "---:|" * len(servers),
    ]
    for size in cfg.sizes:
        for load in loads:
            if not any(c.size == size and c.load == load for c in cells.values()):
                continue
            row = [size, load]
            base = med.get(f"nginx {size} {load}")
            for server in servers:
                cell = cells.get(f"{server} {size} {load}")
                value = med.get(f"{server} {size} {load}")
                if cell is None:
                    row.append("-")
                    continue
                text = "no response" if value is None else f"{value:,.0f}"
                if value is not None and base and server != "nginx":
                    text += f" ({value / base:.2f}x nginx)"
                failed = sum(1 for r in cell.rps if r <= 0)
                if failed:
                    text += f" ⚠ no response in {failed} of {len(cell.rps)} runs"
                errs = sum(cell.errors)
                if errs:
                    text += f" ⚠{errs} errors"
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "rapidwsgi against each peer (median ratio, > 1: rapidwsgi faster):", ""]
    lines += ["| file | load | " + " | ".join(s for s in servers if s != "rapidwsgi") + " |"]
    lines += ["|---|---|" + "---:|" * (len(servers) - 1)]
    for size in cfg.sizes:
        for load in loads:
            mine = med.get(f"rapidwsgi {size} {load}")
            if mine is None:
                continue
            row = [size, load]
            for server in servers:
                if server == "rapidwsgi":
                    continue
                other = med.get(f"{server} {size} {load}")
                row.append(f"{mine / other:.2f}x" if other else "-")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Servers:", ""]
    lines += [f"- `{s}`: {LABELS[s]}" + (f" — {NOTES[s]}" if s in NOTES else "") for s in servers]
    for server, why in skipped.items():
        lines.append(f"- `{server}` skipped: {why}")
    lines += ["", f"Versions: {json.dumps(meta.get('versions', {}), sort_keys=True)}", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--loads", default=",".join(LOADS))
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--rapidwsgi-python", default="", help="run rapidwsgi with this interpreter")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="static")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, metavar="FILE.json", help="only rewrite the report of a run")
    args = parser.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.loads = [s for s in args.loads.split(",") if s]
    for name, allowed in (("servers", SERVERS), ("sizes", SIZES), ("loads", LOADS)):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            parser.error(f"unknown {name}: {', '.join(bad)}")
    return args


def rewrite_report(cfg: argparse.Namespace) -> int:
    data = json.loads(cfg.report.read_text())
    cells = {f"{c['server']} {c['size']} {c['load']}": Cell(**c) for c in data["cells"]}
    cfg.rounds = data["meta"]["rounds"]
    cfg.duration = data["meta"]["duration_s"]
    markdown = report(cells, cfg, data["skipped"], data["meta"])
    write_atomic(cfg.report.with_suffix(".md"), markdown)
    print(markdown)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.report is not None:
        return rewrite_report(cfg)
    missing = [t for t in ("wrk", "taskset") if shutil.which(t) is None]
    if "nginx" in cfg.servers and not front.nginx_binary():
        missing.append("nginx")
    if missing:
        log(f"missing tools: {', '.join(missing)} (apt-get install -y wrk nginx)")
        return 2
    python_peers = [s for s in ("uwsgi", "granian") if s in cfg.servers]
    if any(s.startswith("whitenoise-gunicorn") for s in cfg.servers):
        python_peers.append("gunicorn")
    extra = ["whitenoise"] if any(s.startswith("whitenoise") for s in cfg.servers) else []
    if "rapidwsgi" in cfg.servers or "whitenoise-rapidwsgi" in cfg.servers:
        python_peers.append("rapidwsgi")
    reasons = peers.prepare(python_peers, extra, cfg.rapidwsgi_python)
    skipped: dict[str, str] = {}
    needs = {
        "uwsgi": ["uwsgi"],
        "granian": ["granian"],
        "whitenoise-gunicorn": ["gunicorn", "whitenoise"],
        "whitenoise-rapidwsgi": ["rapidwsgi", "whitenoise"],
        "rapidwsgi": ["rapidwsgi"],
    }
    for server, dists in needs.items():
        why = [f"{d}: {reasons[d]}" for d in dists if reasons.get(d)]
        if server in cfg.servers and why:
            skipped[server] = "; ".join(why)
    if cfg.rapidwsgi_python and "whitenoise-rapidwsgi" in cfg.servers:
        code = subprocess.run(
            [cfg.rapidwsgi_python, "-c", "import whitenoise"], check=False, capture_output=True
        ).returncode
        if code:
            skipped["whitenoise-rapidwsgi"] = f"whitenoise is not installed for {cfg.rapidwsgi_python}"
    rng = random.Random(cfg.seed)
    cells: dict[str, Cell] = {}
    with tempfile.TemporaryDirectory(prefix="rapidwsgi-static-bench-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)  # nginx workers (root or not) must read the files
        root = tmp / "files"
        digests = make_files(root)
        for i in range(cfg.rounds):
            order = list(cfg.servers)
            rng.shuffle(order)
            log(f"round {i + 1}/{cfg.rounds}: {', '.join(order)}")
            run_round(cfg, root, tmp, digests, cells, skipped, order)
    date = datetime.date.today().isoformat()
    host = socket.gethostname().split(".")[0]
    meta: dict[str, object] = {
        "date": date,
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}",
        "versions": peers.peer_versions(cfg.rapidwsgi_python),
        "duration_s": cfg.duration,
        "rounds": cfg.rounds,
    }
    markdown = report(cells, cfg, skipped, meta)
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem = cfg.out / f"{date}-{host}-{cfg.tag}"
    data = {"meta": meta, "skipped": skipped, "cells": [c.__dict__ for c in cells.values()]}
    write_atomic(stem.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown)
    print(markdown)
    log(f"wrote {stem}.json and .md")
    return 0 if cells else 1


if __name__ == "__main__":
    sys.exit(main())
