"""Adaptive worker count under a stepped load: the worker count over time, and each decision.

One rapidwsgi master with ``--workers-min 1 --workers-max 4`` (inline workers) serves
``/sleep?s=0.05`` (bench/apps/sleepy.py: one worker answers at most 20 requests/s). A
closed-loop Python load steps its concurrency: 2 clients, then 20, then 2 again. Each
client sends keep-alive GETs and opens a new connection every ``--per-connection``
requests, as a connection pool that recycles its connections does (a worker added under
load only gets the connections opened after it serves: existing keep-alive connections
stay where they are).

Recorded: the master's worker count every 0.25 s (its children, from /proc), the
master's scaling log lines with the moment the benchmark saw them, and per phase the
requests answered, failed requests and latency percentiles. Bounded: the three phases
take ``--phases`` seconds (default 15,20,20), plus a few seconds to start and stop.

    python3 bench/adaptive.py
    make bench-adaptive

Writes ``bench/results/<date>-<host>-adaptive.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import HOST, KeepAliveClient, children, free_port, log, percentile, spawn_logged, write_atomic
from run import server_env, stop_server, wait_ready

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_ARGS = (
    "--workers-min",
    "1",
    "--workers-max",
    "4",
    "--workers-scale-up-after",
    "2",
    "--workers-idle-timeout",
    "5",
)
TARGET = "/sleep?s=0.05"
CONCURRENCY = (2, 20, 2)
#: The master's scaling decisions (supervisor.Master._scale).
DECISION = re.compile(r"\] (Adding worker \(.*\)|Retiring idle worker \d+ \(.*\)|Not adding a worker .*)$")


class Phase:
    """What the clients of one phase saw."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.ok = 0
        self.failed: list[str] = []
        self.latencies: list[float] = []
        self.lock = threading.Lock()


def run_phase(port: int, phase: Phase, seconds: float, per_connection: int) -> None:
    """``phase.clients`` closed-loop clients for ``seconds``."""
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = KeepAliveClient(port, per_connection)
        while time.monotonic() < deadline:
            try:
                status, took = conn.request(TARGET)
            except OSError as exc:
                conn.close()
                with phase.lock:
                    phase.failed.append(repr(exc))
                continue
            with phase.lock:
                if status == 200:
                    phase.ok += 1
                    phase.latencies.append(took)
                else:
                    phase.failed.append(f"HTTP {status}")
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(phase.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="15,20,20", help="seconds of each phase (c=2, c=20, c=2)")
    parser.add_argument("--per-connection", type=int, default=10, help="requests per connection")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--out", help="results file stem (default bench/results/<date>-<host>-adaptive)")
    cfg = parser.parse_args(argv)
    seconds = [float(s) for s in cfg.phases.split(",")]
    if len(seconds) != len(CONCURRENCY):
        parser.error(f"--phases: give {len(CONCURRENCY)} durations")
    port = free_port()
    phases = [Phase(c) for c in CONCURRENCY]
    counts: list[tuple[float, int]] = []
    decisions: list[tuple[float, str]] = []
    boundaries: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-adaptive-") as tmpdir:
        tmp = Path(tmpdir)
        logfile = tmp / "server.log"
        argv_server = [cfg.python, "-m", "rapidwsgi", "--bind", f"{HOST}:{port}", *SERVER_ARGS, "sleepy:app"]
        proc = spawn_logged(argv_server, logfile, server_env(tmp))
        try:

            def check() -> str:
                # A worker answers (the master's socket accepts before any worker serves).
                try:
                    with socket.create_connection((HOST, port), timeout=5.0) as sock:
                        sock.sendall(b"GET /sleep?s=0 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                        answer = sock.recv(64)
                except OSError as exc:
                    return str(exc)
                return "" if answer.startswith(b"HTTP/1.1 200") else f"answer {answer!r}"

            error = wait_ready(proc, check, "rapidwsgi", timeout=60)
            if error:
                raise SystemExit(f"rapidwsgi did not start: {error}")
            stop = threading.Event()
            start = time.monotonic()

            def sample() -> None:
                seen = 0
                while True:
                    now = round(time.monotonic() - start, 2)
                    counts.append((now, len(children(proc.pid))))
                    lines = logfile.read_text(errors="replace").splitlines()
                    for line in lines[seen:]:
                        m = DECISION.search(line)
                        if m:
                            decisions.append((now, m.group(1)))
                    seen = len(lines)
                    if stop.wait(0.25):
                        return

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            for phase, duration in zip(phases, seconds, strict=True):
                boundaries.append(round(time.monotonic() - start, 2))
                log(f"phase: {phase.clients} clients for {duration:g}s")
                run_phase(port, phase, duration, cfg.per_connection)
            boundaries.append(round(time.monotonic() - start, 2))
            time.sleep(0.5)  # the last decisions reach the log
            stop.set()
            sampler.join(5)
        finally:
            stop_server(proc)
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}",
        "server": [*SERVER_ARGS, "sleepy:app"],
        "load": f"closed-loop clients, GET {TARGET}, a new connection every {cfg.per_connection} requests",
        "phases": [
            {
                "clients": p.clients,
                "start": boundaries[i],
                "end": boundaries[i + 1],
                "requests_ok": p.ok,
                "requests_per_second": round(p.ok / max(boundaries[i + 1] - boundaries[i], 1e-9), 1),
                "failed": len(p.failed),
                "failures": p.failed[:10],
                "latency_ms": {
                    "p50": round(percentile(p.latencies, 0.50) * 1e3, 1),
                    "p99": round(percentile(p.latencies, 0.99) * 1e3, 1),
                },
                "workers_max_seen": max(
                    (n for t, n in counts if boundaries[i] <= t < boundaries[i + 1]), default=0
                ),
                "workers_at_end": next((n for t, n in reversed(counts) if t < boundaries[i + 1]), 0),
            }
            for i, p in enumerate(phases)
        ],
        "decisions": decisions,
        "worker_count": counts,
    }
    failed = sum(p["failed"] for p in result["phases"])
    counts_seen = [n for _, n in counts]
    result["bar_met"] = (
        failed == 0 and max(counts_seen, default=0) <= 4 and min(counts_seen[1:], default=1) >= 1
    )
    stem = (
        Path(cfg.out) if cfg.out else RESULTS_DIR / f"{result['date']}-{platform.node() or 'host'}-adaptive"
    )
    write_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(result))
    sys.stdout.write(markdown(result))
    return 0 if result["bar_met"] else 1


def timeline(counts: list[tuple[float, int]]) -> str:
    """The worker count as ``t=0.0s: 1, t=4.3s: 2, ...``: only its changes."""
    parts, last = [], -1
    for t, n in counts:
        if n != last:
            parts.append(f"{t:.1f}s: {n}")
            last = n
    return ", ".join(parts)


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Adaptive worker count under a stepped load ({r['date']}, {r['host']})",
        "",
        f"Machine: {r['machine']}. Server: `{' '.join(r['server'])}` (inline workers; one "
        f"answers at most 20 requests/s); load: {r['load']}.",
        "",
        "| phase | clients | seconds | requests/s | failed | p50 / p99 ms | most workers | workers at end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(r["phases"], 1):
        lines.append(
            f"| {i} | {p['clients']} | {p['start']:.1f}-{p['end']:.1f} | {p['requests_per_second']} | "
            f"{p['failed']} | {p['latency_ms']['p50']} / {p['latency_ms']['p99']} | "
            f"{p['workers_max_seen']} | {p['workers_at_end']} |"
        )
    lines += ["", f"Worker count (changes): {timeline(r['worker_count'])}.", "", "Decisions (seen at):", ""]
    lines += [f"- {t:.1f}s: {text}" for t, text in r["decisions"]] or ["- none"]
    lines += ["", f"Bar met (no failed request, 1..4 workers throughout): {r['bar_met']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
