"""Load shedding under a flood: ``wrk -c500`` against a ``/sleep?s=0.5`` application.

One rapidwsgi worker with ``--threads 4 --limit-concurrency 4 --backlog-requests 16
--health-path /healthz`` can answer 8 requests/s from the application; wrk's 500
keep-alive connections ask for thousands. What is checked (issue 13's bar):

- every answer is a 200 or a 503 (wrk's per-status counts, from a Lua script), and
  wrk reports no socket error and no timeout (``--timeout 10s``: a queued request waits
  at most 16 / 4 x 0.5 + 0.5 = 2.5 s);
- the 503s are fast: a probe on its own keep-alive connection (as wrk's clients) sends
  one ``/sleep`` request every 20 ms during the flood and times each answer; the p99 of
  the 503s it got (a second probe opens a new connection for each request);
- the health path keeps answering 200 (a second probe, every 100 ms, timed too);
- the server's memory stays flat: master + worker RSS sampled every 0.5 s.

    python3 bench/overload.py                  # 20 s flood
    python3 bench/overload.py --duration 5
    make bench-overload

Writes ``bench/results/<date>-<host>-overload.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    HOST,
    KeepAliveClient,
    free_port,
    log,
    parse_wrk,
    percentile,
    rss_kib,
    spawn_logged,
    write_atomic,
)
from run import server_env, stop_server, wait_ready

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_ARGS = ("--threads", "4", "--limit-concurrency", "4", "--backlog-requests", "16")
LUA = """
threads = {}
setup = function(thread)
  table.insert(threads, thread)
end
statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %d %d\\n", status, count))
    end
  end
  io.write(string.format("p99 %d\\n", latency:percentile(99)))
end
"""
# response() runs in each wrk thread's own Lua state: done() collects them (thread:get).


def one_request(port: int, target: str, timeout: float = 10.0) -> tuple[int, float]:
    """One GET on a new connection: (status, seconds until the whole answer came)."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    elapsed = time.perf_counter() - started
    return int(data.split(b" ", 2)[1]), elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--out", help="results file stem (default bench/results/<date>-<host>-overload)")
    cfg = parser.parse_args(argv)
    port = free_port()
    statuses: Counter[int] = Counter()
    probe: dict[int, list[float]] = {}
    fresh: dict[int, list[float]] = {}
    health: list[tuple[int, float]] = []
    probe_errors: list[str] = []
    rss: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmpdir:
        tmp = Path(tmpdir)
        script = tmp / "status.lua"
        script.write_text(LUA)
        argv_server = ["taskset", "-c", cfg.server_cpus, cfg.python, "-m", "rapidwsgi"]
        argv_server += ["--bind", f"{HOST}:{port}", "--workers", "1", "--log-level", "warning"]
        argv_server += [*SERVER_ARGS, "--health-path", "/healthz", "sleepy:app"]
        proc = spawn_logged(argv_server, tmp / "server.log", server_env(tmp))
        try:

            def check() -> str:
                try:
                    status = one_request(port, "/healthz")[0]
                except OSError as exc:
                    return str(exc)
                return "" if status == 200 else f"HTTP {status}"

            error = wait_ready(proc, check, "rapidwsgi", timeout=60)
            if error:
                raise SystemExit(f"rapidwsgi did not start: {error}")
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            pids = [proc.pid, *map(int, children)]
            stop = threading.Event()
            start = time.monotonic()

            def sample() -> None:
                while not stop.wait(0.5):
                    rss.append((round(time.monotonic() - start, 1), rss_kib(pids)))

            def probe_app() -> None:
                conn = KeepAliveClient(port)
                while not stop.wait(0.02):
                    try:
                        status, took = conn.request("/sleep?s=0.5")
                    except OSError as exc:
                        probe_errors.append(repr(exc))
                        conn = KeepAliveClient(port)
                        continue
                    probe.setdefault(status, []).append(took)

            def probe_fresh() -> None:
                while not stop.wait(0.05):
                    try:
                        status, took = one_request(port, "/sleep?s=0.5")
                    except OSError as exc:
                        probe_errors.append(repr(exc))
                        continue
                    fresh.setdefault(status, []).append(took)

            def probe_health() -> None:
                while not stop.wait(0.1):
                    try:
                        health.append(one_request(port, "/healthz"))
                    except OSError as exc:
                        probe_errors.append(repr(exc))

            rss.append((0.0, rss_kib(pids)))
            # The probes share the load's core, not the server's.
            os.sched_setaffinity(0, {int(c) for c in cfg.load_cpus.split(",")})
            probes = (sample, probe_app, probe_fresh, probe_health)
            threads = [threading.Thread(target=f, daemon=True) for f in probes]
            for t in threads:
                t.start()
            cmd = ["taskset", "-c", cfg.load_cpus, "wrk", "-t1", f"-c{cfg.connections}", f"-d{cfg.duration}s"]
            cmd += ["--timeout", "10s", "--latency", "-s", str(script), f"http://{HOST}:{port}/sleep?s=0.5"]
            log(f"flood: {' '.join(cmd[3:])}")
            out = subprocess.run(
                cmd, check=False, capture_output=True, text=True, timeout=cfg.duration + 60
            ).stdout
            stop.set()
            for t in threads:
                t.join(15)
            time.sleep(3.0)  # the queue drains: the memory after the flood
            rss.append((round(time.monotonic() - start, 1), rss_kib(pids)))
        finally:
            stop_server(proc)
    for status, count in re.findall(r"^status (\d+) (\d+)$", out, re.M):
        statuses[int(status)] = int(count)
    wrk_result = parse_wrk(out)
    shed = probe.get(503, [])
    shed_fresh = fresh.get(503, [])
    wrk_p99 = re.search(r"^p99 (\d+)$", out, re.M)
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}",
        "server": [*SERVER_ARGS, "--health-path", "/healthz"],
        "load": f"wrk -t1 -c{cfg.connections} -d{cfg.duration}s --timeout 10s /sleep?s=0.5",
        "wrk_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wrk_errors": wrk_result["errors"],
        "wrk_requests": wrk_result["requests"],
        "probe_statuses": {str(k): len(v) for k, v in sorted(probe.items())},
        "probe_503_ms": {
            "p50": round(percentile(shed, 0.50) * 1e3, 2),
            "p99": round(percentile(shed, 0.99) * 1e3, 2),
            "max": round(max(shed, default=0.0) * 1e3, 2),
        },
        "probe_200_ms_median": round(statistics.median(probe.get(200, [0.0])) * 1e3, 1),
        "wrk_p99_ms": round(int(wrk_p99.group(1)) / 1e3, 2) if wrk_p99 else None,
        "fresh_statuses": {str(k): len(v) for k, v in sorted(fresh.items())},
        "fresh_503_ms": {
            "p50": round(percentile(shed_fresh, 0.50) * 1e3, 2),
            "p99": round(percentile(shed_fresh, 0.99) * 1e3, 2),
        },
        "health_statuses": dict(Counter(str(s) for s, _ in health)),
        "health_ms": {
            "p50": round(percentile([t for _, t in health], 0.50) * 1e3, 2),
            "p99": round(percentile([t for _, t in health], 0.99) * 1e3, 2),
        },
        "probe_errors": probe_errors[:10],
        "rss_kib": rss,
    }
    errors = wrk_result["errors"]
    # (non_2xx counts the 503s, which are the point: the statuses are checked above)
    socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    ok = (
        set(statuses) <= {200, 503}
        and socket_errors == 0
        and result["health_statuses"].keys() == {"200"}
        and not probe_errors
        and result["probe_503_ms"]["p99"] < 50
    )
    result["bar_met"] = ok
    stem = (
        Path(cfg.out) if cfg.out else RESULTS_DIR / f"{result['date']}-{platform.node() or 'host'}-overload"
    )
    write_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(result))
    sys.stdout.write(markdown(result))
    return 0 if ok else 1


def markdown(r: dict[str, Any]) -> str:
    rss = r["rss_kib"]
    assert isinstance(rss, list)
    values = [kib for _, kib in rss]
    lines = [
        f"# Overload: load shedding ({r['date']}, {r['host']})",
        "",
        f"Machine: {r['machine']}. Server: `{' '.join(r['server'])}` (1 worker); load: `{r['load']}`.",
        "",
        "| what | value |",
        "|---|---|",
        f"| wrk answers by status | {r['wrk_statuses']} |",
        f"| wrk socket errors / timeouts | {r['wrk_errors']} |",
        f"| wrk latency p99 (all answers; the 200s are < 0.1% of them) | {r['wrk_p99_ms']} ms |",
        f"| keep-alive probe (a /sleep every 20 ms): answers by status | {r['probe_statuses']} |",
        f"| keep-alive probe 503s: p50 / p99 / max | {r['probe_503_ms']} ms |",
        f"| new-connection probe (every 50 ms): answers by status | {r['fresh_statuses']} |",
        f"| new-connection probe 503s: p50 / p99 (connect included) | {r['fresh_503_ms']} ms |",
        f"| probe 200s: median | {r['probe_200_ms_median']} ms |",
        f"| health path (every 100 ms): statuses | {r['health_statuses']} |",
        f"| health path latency p50 / p99 | {r['health_ms']} ms |",
        f"| RSS master + worker: start / max / end | {values[0]} / {max(values)} / {values[-1]} KiB |",
        f"| bar met | {r['bar_met']} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
