"""Adaptive worker count (``--workers-min`` / ``--workers-max``), end to end.

Real masters and workers: requests held in the application (``/stuck?marker=PATH`` of
tests/opsapp.py, released by removing the marker file; the file holds the PID of the
worker that runs the request) make every worker busy, and the master's log lines and
metrics say what it decided, exactly. Scaling checks come once a second; the tests set
``--workers-scale-up-after 1 --workers-idle-timeout 2`` so that each decision takes
seconds, and they wait for the log line that reports it, never for a guessed time. The
contract is docs/process.md, "Adaptive worker count".
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from rapidwsgi.config import Config
from rapidwsgi.errors import ConfigError
from tests.conftest import ServerProcess
from tests.rawhttp import RawConnectionExtras, get, wait_until
from tests.test_metrics_server import metrics_port, scrape, stats_json, value
from tests.test_supervisor import KeepAliveLoad, live_workers, log_pids, wait_workers

Start = type[ServerProcess]
APP = "opsapp:app"
#: Quick decisions (the defaults are 3 s and 30 s).
QUICK = ("--workers-scale-up-after", "1", "--workers-idle-timeout", "2")
ADDED = r"Adding worker \((?:the only worker|all \d+ workers) busy for 1s, (\d+) -> (\d+)\)"
RETIRED = r"Retiring idle worker (\d+) \(at least one worker idle for 2s, (\d+) -> (\d+)\)"


def hold(server: ServerProcess, marker: Path) -> RawConnectionExtras:
    """A connection whose request stays in the application until ``marker`` is removed."""
    conn = RawConnectionExtras(server.address, timeout=30.0)
    conn.send(get(f"/stuck?marker={marker}"))
    return conn


def holder(marker: Path) -> int:
    """The worker that runs the held request of ``marker`` (once it runs)."""
    assert wait_until(marker.exists, 10.0), f"{marker} never appeared"
    return int(marker.read_text())


def release(markers: list[Path], held: list[RawConnectionExtras]) -> None:
    for marker in markers:
        marker.unlink(missing_ok=True)
    for conn in held:
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"late")
        conn.close()


def decisions(server: ServerProcess) -> list[str]:
    return re.findall(r"(Adding worker .*|Retiring idle worker .*|Not adding a worker .*)", server.stderr)


def hold_every_worker_threaded(
    server: ServerProcess,
    tmp_path: Path,
    per_worker: int,
    markers: list[Path],
    held: list[RawConnectionExtras],
) -> None:
    """Threaded mode: hold requests until every live worker runs ``per_worker`` of them.

    Any worker's loop may accept a new connection, so a request can land on a worker
    that is full already: with --backlog-requests 0 it is answered 503 at once (and
    tried again), so each request either runs (its marker appears) or is refused.
    """
    for _ in range(20):
        running: dict[int, int] = {}
        for marker in markers:
            pid = int(marker.read_text())
            running[pid] = running.get(pid, 0) + 1
        workers = live_workers(server)
        if all(running.get(pid, 0) >= per_worker for pid in workers):
            return
        marker = tmp_path / f"held-{len(markers)}-{len(held)}"
        conn = hold(server, marker)

        def settled(marker: Path = marker, conn: RawConnectionExtras = conn) -> bool:
            return marker.exists() or conn.data_within(0.02)

        assert wait_until(settled, 10.0)
        if marker.exists():
            markers.append(marker)
            held.append(conn)
        else:
            response = conn.read_response()
            assert response.status == 503, response
            conn.close()
    raise AssertionError(f"could not fill every worker: {server.stderr}")


# ---------------------------------------------------------------------- scaling up and down


def test_inline_workers_all_busy_add_one_up_to_max_then_idle_ones_retire_to_min_with_no_failure(
    start_server: Start, tmp_path: Path
) -> None:
    server = start_server(
        APP, "--workers-min", "1", "--workers-max", "3", *QUICK, "--metrics-bind", "127.0.0.1:0",
        "--log-level", "debug",
    )  # fmt: skip
    port = metrics_port(server)
    assert "Using 1 worker, adaptive 1..3" in server.stderr
    (first,) = wait_workers(server, 1)
    markers: list[Path] = []
    held: list[RawConnectionExtras] = []
    # One keep-alive client throughout: it stalls while its worker is held (an inline
    # worker runs one request at a time), and must never fail.
    with KeepAliveLoad(
        server.address, clients=1, path="/pid", per_client=10**7, max_seconds=60, timeout=40
    ) as load:
        load.wait_for(50)
        for count in (1, 2, 3):
            # A new connection goes to a worker whose loop is free: the newest one.
            marker = tmp_path / f"held-{count}"
            held.append(hold(server, marker))
            markers.append(marker)
            assert holder(marker) in live_workers(server)
            if count < 3:
                server.wait_for_log(ADDED.replace(r"(\d+) -> (\d+)", f"{count} -> {count + 1}"), timeout=15)
                wait_workers(server, count + 1)
        assert {holder(m) for m in markers} == live_workers(server)
        assert holder(markers[0]) == first
        # All three busy: the master stays at the maximum, and says so.
        server.wait_for_log(r"Not adding a worker \(all 3 workers busy for 1s\): at --workers-max 3", 15)
        assert len(live_workers(server)) == 3
        samples = scrape(port)
        assert value(samples, "rapidwsgi_workers_target") == 3
        assert value(samples, "rapidwsgi_worker_scaling_total", direction="up") == 2
        assert value(samples, "rapidwsgi_worker_scaling_total", direction="down") == 0
        release(markers, held)
        # Idle again: retired one at a time, down to the minimum, gracefully.
        server.wait_for_log(RETIRED.replace(r"(\d+) -> (\d+)\)", r"2 -> 1\)"), timeout=20)
        load.wait_for(load.total_ok + 50)
        load.stop()
    assert load.failures == []
    wait_workers(server, 1)
    # The last worker, idle, stays: the minimum holds.
    server.wait_for_log(r"Not retiring a worker \(the only worker idle for 2s\): at --workers-min 1", 15)
    assert len(live_workers(server)) == 1
    assert decisions(server) == [
        "Adding worker (the only worker busy for 1s, 1 -> 2)",
        "Adding worker (all 2 workers busy for 1s, 2 -> 3)",
        "Not adding a worker (all 3 workers busy for 1s): at --workers-max 3",
        *[line for line in decisions(server) if line.startswith("Retiring")],
    ]
    retired = re.findall(RETIRED, server.stderr)
    assert [(old, new) for _, old, new in retired] == [("3", "2"), ("2", "1")]
    for pid, _, _ in retired:
        # Stopped like any graceful stop: it finished and exited with status 0.
        server.wait_for_log(rf"Worker {pid} exited \(exit code 0 \(OK\)\)", timeout=10)
    assert "died unexpectedly" not in server.stderr
    samples = scrape(port)
    assert value(samples, "rapidwsgi_workers_target") == 1
    assert value(samples, "rapidwsgi_worker_scaling_total", direction="up") == 2
    assert value(samples, "rapidwsgi_worker_scaling_total", direction="down") == 2
    assert value(samples, "rapidwsgi_worker_restarts_total", cause="scale_down") == 2
    master = stats_json(port)["master"]
    assert (master["workers_wanted"], master["workers_min"], master["workers_max"]) == (1, 1, 3)
    assert master["scaling"] == {"up": 2, "down": 2}
    (worker,) = stats_json(port)["workers"]
    assert worker["load"] in ("idle", "busy")


def test_threaded_workers_are_full_when_all_their_threads_run_requests(
    start_server: Start, tmp_path: Path
) -> None:
    server = start_server(
        APP, "--threads", "2", "--backlog-requests", "0", "--workers-min", "1", "--workers-max", "2",
        *QUICK, "--metrics-bind", "127.0.0.1:0",
    )  # fmt: skip
    port = metrics_port(server)
    markers: list[Path] = []
    held: list[RawConnectionExtras] = []
    # One request in the application is not enough: a thread is free.
    markers.append(tmp_path / "one")
    held.append(hold(server, markers[0]))
    holder(markers[0])
    hold_every_worker_threaded(server, tmp_path, 2, markers, held)
    server.wait_for_log(ADDED.replace(r"(\d+) -> (\d+)", "1 -> 2"), timeout=15)
    wait_workers(server, 2)
    hold_every_worker_threaded(server, tmp_path, 2, markers, held)
    server.wait_for_log(r"Not adding a worker \(all 2 workers busy for 1s\): at --workers-max 2", 15)
    assert len(live_workers(server)) == 2
    doc = stats_json(port)
    assert [w["load"] for w in doc["workers"]] == ["full", "full"]
    release(markers, held)
    with KeepAliveLoad(server.address, clients=1, path="/pid", per_client=10**7, max_seconds=30) as load:
        server.wait_for_log(RETIRED.replace(r"(\d+) -> (\d+)\)", r"2 -> 1\)"), timeout=20)
        load.wait_for(load.total_ok + 50)
    assert load.failures == []
    wait_workers(server, 1)
    assert decisions(server) == [
        "Adding worker (the only worker busy for 1s, 1 -> 2)",
        "Not adding a worker (all 2 workers busy for 1s): at --workers-max 2",
        *re.findall(r"Retiring idle worker \d+ \(at least one worker idle for 2s, 2 -> 1\)", server.stderr),
    ]
    assert len(re.findall(RETIRED, server.stderr)) == 1
    samples = scrape(port)
    assert value(samples, "rapidwsgi_worker_scaling_total", direction="up") == 1
    assert value(samples, "rapidwsgi_worker_scaling_total", direction="down") == 1
    assert value(samples, "rapidwsgi_workers_target") == 1


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_a_reload_starts_the_current_target_count(start_server: Start, tmp_path: Path, preload: bool) -> None:
    extra = ("--preload",) if preload else ()
    server = start_server(
        APP, "--workers-min", "1", "--workers-max", "3", "--workers-scale-up-after", "1",
        "--workers-idle-timeout", "600", *extra,
    )  # fmt: skip
    marker = tmp_path / "held"
    conn = hold(server, marker)
    holder(marker)
    server.wait_for_log(ADDED.replace(r"(\d+) -> (\d+)", "1 -> 2"), timeout=15)
    old = wait_workers(server, 2)
    release([marker], [conn])
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Worker generation 2 serving; stopping generation 1", timeout=20)
    booted = log_pids(server, r"Booting worker (\d+) \(generation 2\)")
    assert len(booted) == 2
    assert wait_until(lambda: live_workers(server) == set(booted), 15)
    assert not old & set(booted)


def test_max_requests_replacements_keep_the_count_and_take_no_decision(start_server: Start) -> None:
    server = start_server(
        APP, "--workers-min", "1", "--workers-max", "3", *QUICK, "--max-requests", "200",
        "--metrics-bind", "127.0.0.1:0",
    )  # fmt: skip
    port = metrics_port(server)
    # One client: never a queue, so never full; its worker is replaced every 200 requests.
    retired = r"Worker (\d+) exited \(exit code 0"
    with KeepAliveLoad(server.address, clients=1, path="/pid", per_client=10**7, max_seconds=40) as load:
        assert wait_until(lambda: len(log_pids(server, retired)) >= 3, 30), server.stderr
    assert load.failures == []
    assert len(log_pids(server, r"Stopping worker (\d+) \(served its --max-requests\)")) >= 3
    wait_workers(server, 1)
    assert decisions(server) == []
    samples = scrape(port)
    assert value(samples, "rapidwsgi_workers_target") == 1
    assert value(samples, "rapidwsgi_worker_scaling_total", direction="up") == 0


def test_sigttin_and_sigttou_move_the_whole_range(start_server: Start) -> None:
    server = start_server(APP, "--workers-min", "1", "--workers-max", "2", "--workers-idle-timeout", "600")
    server.signal(signal.SIGTTIN)
    server.wait_for_log(r"SIGTTIN: 2 workers \(adaptive 2\.\.3\)")
    wait_workers(server, 2)
    server.signal(signal.SIGTTOU)
    server.wait_for_log(r"SIGTTOU: 1 worker \(adaptive 1\.\.2\)")
    wait_workers(server, 1)
    server.signal(signal.SIGTTOU)  # never below one worker
    server.wait_for_log(r"SIGTTOU: 1 worker \(adaptive 1\.\.1\)")
    assert len(live_workers(server)) == 1
    assert decisions(server) == []


# ---------------------------------------------------------------------- settings


def test_the_start_count_is_workers_raised_to_the_minimum() -> None:
    def start(*argv: str) -> tuple[bool, tuple[int, int]]:
        config = Config.load([*argv, "m:app"], environ={})
        return config.adaptive, config.workers_range

    assert start() == (False, (1, 0))
    assert start("--workers-max", "4") == (True, (1, 4))
    assert start("--workers-min", "2", "--workers-max", "4", "--workers", "3") == (True, (2, 4))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers-min", "3", "--workers-max", "2"], "--workers-min 3 is above --workers-max 2"),
        (["--workers-min", "2"], "--workers-min 2 needs --workers-max (the upper end of the range)"),
        (["--workers", "5", "--workers-max", "3"], "--workers 5 is above --workers-max 3"),
        (["--workers-max", "-1"], "--workers-max: must be >= 0 (got -1)"),
        (["--workers-min", "-1", "--workers-max", "2"], "--workers-min: must be >= 0 (got -1)"),
        (["--workers-scale-up-after", "0"], "--workers-scale-up-after: must be > 0 (got 0)"),
        (["--workers-idle-timeout", "-5"], "--workers-idle-timeout: must be > 0 (got -5)"),
        (["--workers-max", "two"], "--workers-max: 'two' is not an integer"),
    ],
)
def test_adaptive_settings_are_validated_with_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.load([*argv, "m:app"], environ={})
    assert str(info.value) == message


def test_a_bad_range_stops_the_server_with_a_usage_error(start_server: Start) -> None:
    server = start_server(APP, "--workers-min", "4", "--workers-max", "2", wait=False)
    assert server.wait() == 2
    assert "rapidwsgi: error: --workers-min 4 is above --workers-max 2\n" in server.stderr
