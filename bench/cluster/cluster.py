"""The multi-host test bed (issue 14): 3 rapidwsgi hosts, each in its own network
namespace with 2 workers serving a Django app on one shared PostgreSQL, behind a real
HAProxy or nginx, under a mixed GET/POST load where every request is accounted for.

Scenarios (each under load; ``--scenario`` picks, default all):

- ``upgrade``: each host in turn gets a changed app (its version string) and SIGHUP;
  checked: zero failed requests; a host answers the new version only once it was told,
  the old one never after its reload finished, and the others keep answering the old
  one meanwhile (the switch goes host by host).
- ``restart``: each host in turn gets SIGTERM (``--shutdown-delay 2``), exits, and is
  started again; checked: zero failed requests.
- ``kill``: one host's processes are all SIGKILLed at once; ``linkdown``: its link is
  cut (``ip link set down``: no reset, packets vanish). Measured: how many requests
  failed and over what window after the fault, and checked: no POST applied twice.
- ``slow``: one host's link slowed (100 ms of tc netem delay; where the kernel has no
  netem, a 256 kbit/s token bucket queueing up to 100 ms); reported: its share of the
  requests and the p50/p99 before and during.

Every run checks the database against the load: the rows equal the 2xx POSTs (no
more, no less; for ``kill``/``linkdown`` a POST that failed may still have been
applied, and is counted), and no token is in the table twice.

    sudo python3 bench/cluster/cluster.py                    # everything, 3 runs of 1 and 2
    sudo python3 bench/cluster/cluster.py --scenario restart --balancer haproxy --runs 1
    make cluster

Writes ``bench/results/<date>-<host>-cluster.json`` and ``.md`` (``--out`` to change);
exit status 0 when every check held. Needs root, ``ip``/``tc`` (iproute2), PostgreSQL,
HAProxy, nginx and Django + psycopg in the Python that runs the hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bed import BALANCERS, Balancer, Bed, Host, free_port, wait_for
from load import Load, Record

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench" / "results"
SCENARIOS = ("upgrade", "restart", "kill", "linkdown", "slow")
#: The scenarios whose bar is zero failed requests (in every run).
ZERO_FAILURE = ("upgrade", "restart")


class Run:
    """One scenario run: the load's records, what the scenario did when (``events``,
    seconds since the load started) and the checks that failed (``problems``)."""

    def __init__(self, scenario: str, balancer: Balancer, bed: Bed, load: Load) -> None:
        self.scenario = scenario
        self.balancer = balancer
        self.bed = bed
        self.load = load
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str]] = []
        self.problems: list[str] = []
        self.extra: dict[str, Any] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> float:
        """Record ``text`` at the current time; returns that time (as ``now``)."""
        t = self.now()
        self.events.append((round(t, 3), text))
        return t

    def settle(self, seconds: float) -> None:
        """Load runs on unchanged for ``seconds`` (a bounded wait, not a guess: the
        scenarios need traffic before, between and after their steps)."""
        time.sleep(seconds)


def log_count(host: Host, pattern: str) -> int:
    return len(re.findall(pattern, host.log()))


# Predicates for wait_for, bound to their host here (not to a loop variable).
def logged(host: Host, pattern: str, count: int) -> Callable[[], bool]:
    return lambda: log_count(host, pattern) >= count


def draining(host: Host) -> Callable[[], bool]:
    return lambda: host.health() in (0, 503)


def in_balancer(balancer: Balancer, host: Host, up: bool) -> Callable[[], bool]:
    return lambda: balancer.up(host) == up


def upgrade(run: Run) -> None:
    run.settle(2)
    switched: dict[str, tuple[float, float]] = {}
    for host in run.bed.hosts:
        before = log_count(host, r"Worker generation 2 serving")
        exited = log_count(host, r"Worker \d+ exited")
        host.set_version("v2")
        told = run.event(f"{host.name}: v2 written, SIGHUP")
        host.signal(signal.SIGHUP)
        # Done: the new generation serves and both old workers have exited.
        wait_for(logged(host, r"Worker generation 2 serving", before + 1), 60, f"{host.name} generation 2")
        wait_for(logged(host, r"Worker \d+ exited", exited + 2), 60, f"{host.name} old workers")
        done = run.event(f"{host.name}: generation 2 serving, generation 1 exited")
        switched[host.name] = (told, done)
        run.settle(1)
    run.settle(1)
    run.extra["switched"] = switched


def check_upgrade(run: Run, records: list[Record]) -> None:
    switched: dict[str, tuple[float, float]] = run.extra.pop("switched")
    names = [h.name for h in run.bed.hosts]
    for i, name in enumerate(names):
        told, done = switched[name]
        mine = [r for r in records if r.host == name and r.ok]
        early = [r for r in mine if r.version == "v2" and r.done < told]
        late = [r for r in mine if r.version == "v1" and r.sent > done]
        if early:
            run.problems.append(f"{name} answered v2 {len(early)} times before it was told")
        if late:
            run.problems.append(f"{name} answered v1 {len(late)} times after its reload finished")
        if not any(r.version == "v2" for r in mine):
            run.problems.append(f"{name} never answered v2")
        # Host by host: while this host already served v2, the next one still served v1.
        if i + 1 < len(names):
            nxt = names[i + 1]
            nxt_told = switched[nxt][0]
            mixed = [r for r in records if r.host == nxt and r.version == "v1" and done < r.sent < nxt_told]
            if not mixed:
                run.problems.append(f"{nxt} answered no v1 between {name}'s switch and its own")
    run.extra["versions"] = {
        name: dict(Counter(r.version for r in records if r.host == name and r.ok)) for name in names
    }


def restart(run: Run) -> None:
    run.settle(2)
    downs: dict[str, float] = {}
    for host in run.bed.hosts:
        told = run.event(f"{host.name}: SIGTERM")
        host.signal(signal.SIGTERM)
        wait_for(draining(host), 10, f"{host.name} health 503")
        downs[host.name] = round(run.now() - told, 3)
        run.event(f"{host.name}: health path 503")
        wait_for(in_balancer(run.balancer, host, False), 30, f"{run.balancer.name} to take {host.name} out")
        run.event(f"{host.name}: out of the balancer")
        code = host.wait_exit(30)
        run.event(f"{host.name}: exited {code}")
        if code != 0:
            run.problems.append(f"{host.name} exited {code}")
        host.start()
        run.event(f"{host.name}: started again")
        wait_for(in_balancer(run.balancer, host, True), 30, f"{run.balancer.name} to take {host.name} back")
        run.event(f"{host.name}: back in the balancer")
        run.settle(1)
    run.settle(1)
    run.extra["health_503_after_s"] = downs


def fault(run: Run, how: str) -> None:
    run.settle(3)
    victim = run.bed.hosts[1]
    t = run.event(f"{victim.name}: {'SIGKILL (every process)' if how == 'kill' else 'link down'}")
    if how == "kill":
        victim.kill_all()
    else:
        victim.link(False)
    run.extra["fault_at"] = t
    wait_for(lambda: not run.balancer.up(victim), 30, f"{run.balancer.name} to take {victim.name} out")
    run.extra["out_after_s"] = round(run.now() - t, 3)
    run.event(f"{victim.name}: out of the balancer")
    run.settle(6)
    if how == "linkdown":
        victim.link(True)
        run.event(f"{victim.name}: link up")
        run.settle(1)


def check_fault(run: Run, records: list[Record]) -> None:
    t = run.extra.pop("fault_at")
    failed = [r for r in records if not r.ok]
    run.extra["failed_window_s"] = (
        [round(min(r.sent for r in failed) - t, 3), round(max(r.done for r in failed) - t, 3)]
        if failed
        else None
    )
    early = [r for r in failed if r.done < t]
    if early:
        run.problems.append(f"{len(early)} requests failed before the fault")
    # The bound: a request that fails was sent before the balancer had taken the host
    # out (its checks: fall 2 x inter 0.5 s for HAProxy; the first error, for nginx);
    # one sent later went to a live host and must not fail.
    out = run.extra["out_after_s"]
    late = [r for r in failed if r.sent - t > out + 0.1]
    run.extra["failed_sent_after_out"] = len(late)
    if late:
        run.problems.append(f"{len(late)} requests sent after the host was out failed")


def slow(run: Run) -> None:
    run.settle(4)
    victim = run.bed.hosts[0]
    run.extra["phase_at"] = run.now()
    run.extra["slowed_by"] = victim.delay(100)
    run.event(f"{victim.name}: link slowed ({run.extra['slowed_by']})")
    run.settle(8)
    victim.delay(None)
    run.event(f"{victim.name}: delay removed")


def check_slow(run: Run, records: list[Record]) -> None:
    t = run.extra.pop("phase_at")
    victim = run.bed.hosts[0].name
    phases = {}
    for phase, rows in (
        ("before", [r for r in records if r.sent < t]),
        ("during", [r for r in records if r.sent >= t]),
    ):
        ok = [r for r in rows if r.ok]
        share = sum(1 for r in ok if r.host == victim) / len(ok) if ok else 0.0
        phases[phase] = {"requests": len(rows), f"{victim}_share": round(share, 3), **latency(ok)}
    run.extra["phases"] = phases


SCENARIO_STEPS: dict[str, tuple[Callable[[Run], None], Callable[[Run, list[Record]], None] | None]] = {
    "upgrade": (upgrade, check_upgrade),
    "restart": (restart, None),
    "kill": (lambda run: fault(run, "kill"), check_fault),
    "linkdown": (lambda run: fault(run, "linkdown"), check_fault),
    "slow": (slow, check_slow),
}


def latency(records: list[Record]) -> dict[str, float]:
    if len(records) < 2:
        return {}
    ms = sorted((r.done - r.sent) * 1000 for r in records)
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 2)}


def account(run: Run, records: list[Record]) -> dict[str, Any]:
    """Every request against the database: the table must hold exactly the 2xx POSTs'
    tokens, each once (a failed POST may be in it too after a fault: counted)."""
    rows = run.bed.pg.rows_by_token()
    ok_posts = {r.token for r in records if r.method == "POST" and r.ok}
    sent_posts = {r.token for r in records if r.method == "POST"}
    failed = [r for r in records if not r.ok]
    duplicated = sorted(t for t, n in rows.items() if n > 1)
    missing = sorted(ok_posts - rows.keys())
    unknown = sorted(rows.keys() - sent_posts)
    applied_failed = sorted((rows.keys() & sent_posts) - ok_posts)
    if duplicated:
        run.problems.append(f"{len(duplicated)} POSTs applied twice")
    if missing:
        run.problems.append(f"{len(missing)} POSTs answered 2xx are not in the database")
    if unknown:
        run.problems.append(f"{len(unknown)} rows nobody sent")
    if run.scenario in ZERO_FAILURE and failed:
        run.problems.append(f"{len(failed)} failed requests")
    if run.scenario in ZERO_FAILURE and applied_failed:
        run.problems.append(f"{len(applied_failed)} failed POSTs were applied")
    by_error = Counter(r.error.split(":")[0] if r.error else f"HTTP {r.status}" for r in failed)
    duration = (records[-1].done - records[0].sent) if records else 0.0
    return {
        "requests": len(records),
        "duration_s": round(duration, 2),
        "rate_per_s": round(len(records) / duration, 1) if duration else 0.0,
        "gets": sum(1 for r in records if r.method == "GET"),
        "posts": len(sent_posts),
        "posts_2xx": len(ok_posts),
        "rows": sum(rows.values()),
        "rows_equal_2xx_posts": sum(rows.values()) == len(ok_posts),
        "duplicated_posts": len(duplicated),
        "failed": len(failed),
        "failed_by": dict(by_error),
        "failed_posts": sum(1 for r in failed if r.method == "POST"),
        "failed_posts_applied": len(applied_failed),
        "hosts": dict(Counter(r.host for r in records if r.ok)),
        **latency([r for r in records if r.ok]),
    }


def one_run(bed: Bed, balancer_name: str, scenario: str, clients: int) -> dict[str, Any]:
    bed.reset()
    for host in bed.hosts:
        host.start()
    balancer = BALANCERS[balancer_name](bed.root, bed.hosts, free_port())
    balancer.start()
    try:
        wait_for(lambda: all(balancer.up(h) for h in bed.hosts), 30, "every host up in the balancer")
        load = Load(balancer.port, clients=clients, max_seconds=180)
        run = Run(scenario, balancer, bed, load)
        load.start()
        steps, check = SCENARIO_STEPS[scenario]
        try:
            steps(run)
        finally:
            records = load.stop()
        for r in records:  # relative to the load's start, as the events and the report
            r.sent -= run.t0
            r.done -= run.t0
        if check is not None:
            check(run, records)
        result = {
            "scenario": scenario,
            "balancer": balancer_name,
            "clients": clients,
            **account(run, records),
        }
        result.update(run.extra)
        result["events"] = run.events
        result["failures"] = [
            {"t": round(r.sent, 3), "method": r.method, "status": r.status, "error": r.error, "host": r.host}
            for r in records
            if not r.ok
        ][:50]
        result["problems"] = run.problems
        result["passed"] = not run.problems
        return result
    finally:
        balancer.stop()


def report(results: list[dict[str, Any]], machine: str) -> str:
    lines = [f"# Cluster test bed ({datetime.date.today().isoformat()})", "", machine, ""]
    lines += [
        "| scenario | balancer | requests (req/s) | failed | POSTs 2xx = rows | duplicated "
        "| p50 / p99 ms | passed |",
        "|---|---|---:|---|---|---:|---|---|",
    ]
    for r in results:
        failed = str(r["failed"]) + (f" ({r['failed_by']})" if r["failed"] else "")
        if r.get("failed_window_s"):
            failed += f", {r['failed_window_s'][0]}..{r['failed_window_s'][1]} s after the fault"
        rows = (
            f"{r['posts_2xx']} = {r['rows']}"
            if r["rows_equal_2xx_posts"]
            else f"{r['posts_2xx']} != {r['rows']}"
        )
        if r["failed_posts_applied"]:
            rows += f" ({r['failed_posts_applied']} failed POSTs applied)"
        lines.append(
            f"| {r['scenario']} | {r['balancer']} | {r['requests']} ({r['rate_per_s']}) | {failed} | {rows} "
            f"| {r['duplicated_posts']} | {r.get('p50_ms', '-')} / {r.get('p99_ms', '-')} "
            f"| {'yes' if r['passed'] else 'NO: ' + '; '.join(r['problems'])} |"
        )
    slow_runs = [r for r in results if r["scenario"] == "slow"]
    if slow_runs:
        lines += ["", "Slow host (h1):", ""]
        for r in slow_runs:
            lines.append(f"- {r['balancer']} ({r['slowed_by']}): {json.dumps(r['phases'])}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--balancer", action="append", choices=sorted(BALANCERS))
    parser.add_argument("--runs", type=int, default=3, help="runs of upgrade and restart (the others: 1)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--out", help="results file stem (default bench/results/<date>-<host>-cluster)")
    parser.add_argument("--keep", help="work in this (new) directory and keep it: the logs of every piece")
    cfg = parser.parse_args(argv)
    scenarios = cfg.scenario or list(SCENARIOS)
    balancers = cfg.balancer or sorted(BALANCERS)
    machine = (
        f"Machine: {platform.machine()}, Linux {platform.release()}, Python {platform.python_version()}; "
        f"{cfg.hosts} hosts x 2 workers (inline), {cfg.clients} keep-alive clients, 1 POST in 4."
    )
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if cfg.keep:
            tmp = cfg.keep
            Path(tmp).mkdir(parents=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="rwcluster-"))
        bed = Bed(Path(tmp), cfg.python, cfg.hosts)
        try:
            bed.open()
            for scenario in scenarios:
                for balancer in balancers:
                    for n in range(cfg.runs if scenario in ZERO_FAILURE else 1):
                        print(f"cluster: {scenario} / {balancer} run {n + 1}", file=sys.stderr, flush=True)
                        result = one_run(bed, balancer, scenario, cfg.clients)
                        result["run"] = n + 1
                        results.append(result)
                        verdict = "ok" if result["passed"] else "FAILED: " + "; ".join(result["problems"])
                        print(
                            f"cluster:   {result['requests']} requests, {result['failed']} failed, "
                            f"{result['posts_2xx']} POSTs = {result['rows']} rows: {verdict}",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            bed.close()
    stem = Path(cfg.out) if cfg.out else RESULTS_DIR / f"{datetime.date.today().isoformat()}-vm-cluster"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=1) + "\n"
    )
    stem.with_suffix(".md").write_text(report(results, machine))
    print(report(results, machine))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
