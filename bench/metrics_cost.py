"""What ``--metrics-bind`` costs: hello-world throughput with metrics on against off.

One rapidwsgi worker (plus its master) pinned to core 0, ``wrk -t1`` on core 1; each
round runs *off* and *on* in a random order, for each load (keep-alive ``-c50`` and
``-c500``, and ``-c50`` with ``Connection: close``: a new connection per request). The
report gives the median requests/s of each and their ratio (on / off). After each *on*
run, the endpoint's ``rapidwsgi_requests_total`` is read back and compared with wrk's
own count (the server's may exceed wrk's by the requests in flight when wrk stopped).

Throughput on a shared VM varies by 20% from run to run, more than the cost measured;
the report also gives the server's CPU time per request (master + worker, user + system,
from /proc), which varies far less.

    python3 bench/metrics_cost.py                 # 5 rounds x 3 loads x 2, 5 s each (~3 min)
    python3 bench/metrics_cost.py --rounds 1 --duration 2
    make bench-metrics

Writes ``bench/results/<date>-<host>-metrics.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path

import peers
from common import HOST, error_total, free_port, log, parse_wrk, spawn_logged, write_atomic
from run import server_env, stop_server, wait_ready

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOADS = {
    "keep-alive c50": (50, None),
    "keep-alive c500": (500, None),
    "new connection c50": (50, "Connection: close"),
}


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = HTTPConnection(HOST, port, timeout=5.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextmanager
def running(python: str, metrics: bool, tmp: Path, cpus: str) -> Iterator[tuple[int, int | None, list[int]]]:
    port = free_port()
    metrics_port = free_port() if metrics else None
    argv = ["taskset", "-c", cpus, python, "-m", "rapidwsgi", "--bind", f"{HOST}:{port}", "--workers", "1"]
    argv += ["--log-level", "warning"]
    if metrics_port is not None:
        argv += ["--metrics-bind", f"{HOST}:{metrics_port}"]
    argv.append("hello:app")
    proc = spawn_logged(argv, tmp / "server.log", server_env(tmp))
    try:

        def check() -> str:
            try:
                status = _get(port, "/")[0]
                if metrics_port is not None:
                    status = max(status, _get(metrics_port, "/metrics")[0])
            except OSError as exc:
                return str(exc)
            return "" if status == 200 else f"HTTP {status}"

        error = wait_ready(proc, check, "rapidwsgi", timeout=60)
        if error:
            raise SystemExit(f"rapidwsgi did not start: {error}")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        yield port, metrics_port, [proc.pid, *map(int, children)]
    finally:
        stop_server(proc)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (proc(5) stat fields 14 and 15)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def served(metrics_port: int) -> int:
    body = _get(metrics_port, "/metrics")[1].decode()
    return sum(int(float(v)) for v in re.findall(r"^rapidwsgi_requests_total\{[^}]*\} (\S+)$", body, re.M))


def wrk(cfg: argparse.Namespace, port: int, connections: int, header: str | None) -> tuple[float, int, int]:
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
    cmd.append(f"http://{HOST}:{port}/")
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=cfg.duration + 60).stdout
    result = parse_wrk(out)
    errors = error_total(result["errors"])
    return result["rps"], result["requests"], errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--python", help="the Python whose rapidwsgi runs (default: the peers venv's)")
    parser.add_argument("--out", help="results file stem (default bench/results/<date>-<host>-metrics)")
    cfg = parser.parse_args(argv)
    python = cfg.python or str(peers.venv_python())
    rng = random.Random()
    rates: dict[str, dict[str, list[float]]] = {load: {"off": [], "on": []} for load in LOADS}
    cpu: dict[str, dict[str, list[float]]] = {load: {"off": [], "on": []} for load in LOADS}
    checks: list[dict[str, object]] = []
    errors = 0
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmpdir:
        tmp = Path(tmpdir)
        for round_no in range(cfg.rounds):
            for load, (connections, header) in LOADS.items():
                order = ["off", "on"]
                rng.shuffle(order)
                for which in order:
                    with running(python, which == "on", tmp, cfg.server_cpus) as (port, metrics_port, pids):
                        before = served(metrics_port) if metrics_port else 0
                        cpu_before = cpu_seconds(pids)
                        rps, requests, errs = wrk(cfg, port, connections, header)
                        cpu[load][which].append((cpu_seconds(pids) - cpu_before) / max(requests, 1) * 1e6)
                        errors += errs
                        rates[load][which].append(rps)
                        if metrics_port is not None:
                            counted = served(metrics_port) - before
                            checks.append({"load": load, "wrk": requests, "server": counted})
                    log(f"round {round_no + 1} {load} metrics {which}: {rps:,.0f} req/s ({errs} errors)")
    result = {
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}",
        "rounds": cfg.rounds,
        "duration_s": cfg.duration,
        "errors": errors,
        "loads": {
            load: {
                "off": statistics.median(r["off"]),
                "on": statistics.median(r["on"]),
                "ratio": statistics.median(r["on"]) / statistics.median(r["off"]),
                # off and on of one round share the host's state: the median of the rounds'
                # own ratios is steadier than the ratio of the medians
                "paired_ratio": statistics.median(
                    on / off for on, off in zip(r["on"], r["off"], strict=True)
                ),
                "runs": r,
                "cpu_us_off": statistics.median(cpu[load]["off"]),
                "cpu_us_on": statistics.median(cpu[load]["on"]),
                "cpu_runs": cpu[load],
            }
            for load, r in rates.items()
        },
        "counts": checks,
    }
    stem = Path(cfg.out) if cfg.out else RESULTS_DIR / f"{result['date']}-{platform.node() or 'host'}-metrics"
    write_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(result))
    sys.stdout.write(markdown(result))
    return 0 if errors == 0 else 1


def markdown(result: dict[str, object]) -> str:
    loads = result["loads"]
    assert isinstance(loads, dict)
    lines = [
        f"# Metrics cost: hello world, --metrics-bind on vs off ({result['date']})",
        "",
        f"{result['machine']}; one worker on core 0, wrk -t1 on core 1; {result['rounds']} rounds "
        f"of {result['duration_s']} s, off and on in a random order each round; medians. "
        f"Errors: {result['errors']}.",
        "",
        "| load | metrics off (req/s) | metrics on (req/s) | on / off | median of the rounds' on / off"
        " | server CPU µs/request off | on | on / off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load, r in loads.items():
        lines.append(
            f"| {load} | {r['off']:,.0f} | {r['on']:,.0f} | {r['ratio']:.3f} | {r['paired_ratio']:.3f} "
            f"| {r['cpu_us_off']:.2f} "
            f"| {r['cpu_us_on']:.2f} | {r['cpu_us_on'] / r['cpu_us_off']:.3f} |"
        )
    counts = result["counts"]
    assert isinstance(counts, list)
    lines += [
        "",
        "Requests counted by the endpoint vs wrk's count (the server's may exceed wrk's by the "
        "requests in flight when wrk stopped):",
        "",
        "| load | wrk | rapidwsgi_requests_total |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c['load']} | {c['wrk']:,} | {c['server']:,} |" for c in counts]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
