"""Production operations against real servers: load shedding, the bounded thread queue,
``--limit-connections``, ``--max-worker-memory``, ``--request-timeout``,
``--health-path`` and ``--shutdown-delay``.

Every answer is checked to the byte where the server writes it itself (503, 504, the
health path); replacements are checked in the log's order (the new worker serves before
the old one is stopped) and with the metrics' exact counts; the load tests count every
failed request and require none.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.rawhttp import RawConnection, RawConnectionExtras, fetch, get, head, wait_until
from tests.test_metrics_server import metrics_port, scrape, stats_json, value
from tests.test_supervisor import KeepAliveLoad

Start = type[ServerProcess]
APP = "opsapp:app"


def hold(server: ServerProcess, marker: Path, extra: str = "") -> RawConnectionExtras:
    """A connection whose request waits in the application until ``marker`` is removed."""
    conn = RawConnectionExtras(server.address, timeout=15.0)
    conn.send(get(f"/stuck?marker={marker}{extra}"))
    return conn


def log_position(server: ServerProcess, pattern: str) -> int:
    m = re.search(pattern, server.stderr)
    assert m, f"{pattern!r} not in the log:\n{server.stderr}"
    return m.start()


# ---------------------------------------------------------------------- health path


@pytest.mark.parametrize("threads", ["1", "4"], ids=["inline", "threaded"])
def test_the_health_path_is_answered_by_the_server_with_exact_bytes_and_other_paths_go_to_the_app(
    start_server: Start, threads: str
) -> None:
    server = start_server(APP, "--threads", threads, "--health-path", "/healthz", "--no-date-header")
    with RawConnection(server.address) as conn:
        conn.send(get("/healthz"))
        raw = conn.sock.recv(65536)
    assert raw == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
        b"Server: rapidwsgi\r\nContent-Length: 7\r\n\r\n200 OK\n"
    )
    status, headers, body = fetch(server, "/healthz", "HEAD")
    assert (status, headers["Content-Length"], body) == (200, "7", b"")
    # A query does not change the answer; another method, or another path, is the app's.
    assert fetch(server, "/healthz?probe=1")[0] == 200
    assert fetch(server, "/healthz", "POST")[2] == b"nope"
    assert fetch(server, "/healthz/x")[2] == b"nope"
    assert fetch(server, "/pid")[2] == str(server.worker_pid).encode()


def test_health_path_must_be_a_path(start_server: Start) -> None:
    server = start_server(APP, "--health-path", "healthz", wait=False)
    assert server.wait() == 2
    assert (
        "rapidwsgi: error: --health-path: must be an ASCII path starting with /, without a query or "
        "spaces (got healthz)" in server.stderr
    )


# ---------------------------------------------------------------------- shutdown delay


@pytest.mark.parametrize("threads", ["1", "4"], ids=["inline", "threaded"])
def test_sigterm_with_shutdown_delay_turns_health_503_at_once_and_serves_on_until_the_delay_ends(
    start_server: Start, threads: str
) -> None:
    server = start_server(
        APP, "-w", "2", "--threads", threads, "--health-path", "/healthz", "--shutdown-delay", "2"
    )
    with KeepAliveLoad(server.address, clients=4, path="/pid", max_seconds=30) as load:
        load.wait_for(200)
        assert fetch(server, "/healthz")[0] == 200
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        assert wait_until(lambda: fetch(server, "/healthz")[0] == 503, 1.0)
        status, headers, body = fetch(server, "/healthz")
        assert (status, body, headers["Cache-Control"]) == (503, b"503 Service Unavailable\n", "no-store")
        # New connections are accepted and served, each closed after its response
        # (Connection: close), so a front-end's pool of connections is used up cleanly
        # before the drain; the load's keep-alive clients reconnect without a failure.
        before = load.total_ok
        fresh = []
        while time.monotonic() - signalled < 1.5:
            status, headers, _ = fetch(server, "/pid")
            fresh.append((status, headers.get("Connection")))
        load.wait_for(before + 100)
        load.stop()
    assert set(fresh) == {(200, "close")}
    assert load.failures == []
    assert server.wait(20) == 0
    log = server.stderr
    assert log.index("stopping in 2s (--shutdown-delay)") < log.index(
        "Shutting down (SIGTERM, after --shutdown-delay)"
    )
    assert "died unexpectedly" not in log


def test_during_the_shutdown_delay_an_open_keep_alive_connection_closes_after_its_next_response(
    start_server: Start,
) -> None:
    """The front-end's pooled connections (opened before the SIGTERM, idle now) are not
    closed under it: each is answered once more, with close, then closed by us."""
    server = start_server(APP, "--health-path", "/healthz", "--shutdown-delay", "3", "--no-date-header")
    with RawConnectionExtras(server.address) as pooled:
        first = pooled.request(get("/pid"))
        assert (first.status, first.header("connection")) == (200, None)
        server.signal(signal.SIGTERM)
        server.wait_for_log(r"stopping in 3s \(--shutdown-delay\)")
        assert wait_until(lambda: fetch(server, "/healthz")[0] == 503, 1.0)
        # Still idle and open: the stop announced does not close it under the client.
        assert not pooled.closed_within(0.3)
        again = pooled.request(get("/pid"))
        assert (again.status, again.header("connection"), again.body) == (200, "close", first.body)
        assert pooled.closed_within(2.0)
    assert server.wait(20) == 0


def test_a_worker_started_during_the_shutdown_delay_is_told_too(start_server: Start) -> None:
    server = start_server(APP, "--health-path", "/healthz", "--shutdown-delay", "3")
    first = server.worker_pid
    server.signal(signal.SIGTERM)
    assert wait_until(lambda: fetch(server, "/healthz")[0] == 503, 1.0)
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: bool(server.worker_pids) and server.worker_pids != [first], 5.0)
    server.wait_for_log(rf"Worker (?!{first})\d+ serving", timeout=5)
    # The replacement answers the health path with 503 as well.
    status, _, _ = fetch(server, "/healthz")
    assert status == 503
    assert fetch(server, "/pid")[0] == 200
    assert server.wait(20) == 0


# ---------------------------------------------------------------------- load shedding


def test_beyond_limit_concurrency_a_request_gets_503_with_retry_after_without_the_app_or_its_body(
    start_server: Start, tmp_path: Path
) -> None:
    server = start_server(
        APP,
        "--threads",
        "4",
        "--limit-concurrency",
        "2",
        "--backlog-requests",
        "0",
        "--health-path",
        "/healthz",
        "--metrics-bind",
        "127.0.0.1:0",
        "--no-date-header",
    )
    port = metrics_port(server)
    markers = [tmp_path / "a", tmp_path / "b"]
    held = [hold(server, m) for m in markers]
    assert wait_until(lambda: all(m.exists() for m in markers), 5.0)
    # Two requests are in the application: a third is refused at once, keep-alive.
    with RawConnectionExtras(server.address) as conn:
        conn.send(get("/pid"))
        raw = conn.sock.recv(65536)
        assert raw == (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Retry-After: 1\r\nServer: rapidwsgi\r\nContent-Length: 24\r\n\r\n503 Service Unavailable\n"
        )
        # A HEAD gets the head only; the health path is still answered 200.
        response = conn.request(head("/pid"), head=True)
        assert (response.status, response.body) == (503, b"")
        assert conn.request(get("/healthz")).status == 200
        # A request that announces a 1 MiB body is answered before any of it is sent,
        # and that connection closes after the answer.
        conn.send(b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n")
        response = conn.read_response()
        assert (response.status, response.header("connection")) == (503, "close")
        assert conn.closed_within(5.0)
    for marker in markers:
        marker.unlink()
    for conn in held:
        assert conn.read_response().body == b"late"
        conn.close()
    # Threads free again: served.
    assert fetch(server, "/pid")[0] == 200
    assert fetch(server, "/post")[0] == 200
    samples = scrape(port)
    assert value(samples, "rapidwsgi_requests_shed_total") == 3
    assert value(samples, "rapidwsgi_requests_total", protocol="http", method="GET", status="5xx") == 1
    assert value(samples, "rapidwsgi_requests_total", protocol="http", method="POST", status="5xx") == 1
    assert value(samples, "rapidwsgi_requests_total", protocol="http", method="HEAD", status="5xx") == 1


def test_backlog_requests_bounds_the_queue_for_a_thread(start_server: Start, tmp_path: Path) -> None:
    server = start_server(APP, "--threads", "2", "--backlog-requests", "1", "--metrics-bind", "127.0.0.1:0")
    port = metrics_port(server)
    running = [tmp_path / "a", tmp_path / "b"]
    queued = tmp_path / "c"
    held = [hold(server, m) for m in running]
    assert wait_until(lambda: all(m.exists() for m in running), 5.0)
    waiting = hold(server, queued)
    # The gauge (sampled every second) shows it waiting for a thread.
    assert wait_until(lambda: stats_json(port)["requests_waiting"] == 1, 5.0)
    assert not queued.exists()
    status, headers, _ = fetch(server, "/pid")
    assert (status, headers["Retry-After"]) == (503, "1")
    running[0].unlink()
    assert held[0].read_response().body == b"late"
    assert wait_until(queued.exists, 5.0)  # its turn came
    queued.unlink()
    running[1].unlink()
    assert waiting.read_response().body == b"late"
    assert held[1].read_response().body == b"late"
    for conn in (*held, waiting):
        conn.close()
    assert value(scrape(port), "rapidwsgi_requests_shed_total") == 1


def test_under_a_flood_every_answer_is_200_or_503_and_nothing_fails(start_server: Start) -> None:
    """60 keep-alive clients against 2 threads and a queue of 4: each answer is a 200 or a
    503, no connection fails, and the health path answers throughout."""
    server = start_server(APP, "--threads", "2", "--backlog-requests", "4", "--health-path", "/healthz")
    import threading
    from collections import Counter

    statuses: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + 4.0

    def client() -> None:
        try:
            with RawConnection(server.address, timeout=10.0) as conn:
                for _ in range(2000):
                    if time.monotonic() > stop:
                        return
                    response = conn.request(get("/sleep?s=0.05"))
                    with lock:
                        statuses[response.status] += 1
        except Exception as exc:
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(60)]
    for t in threads:
        t.start()
    health = []
    while time.monotonic() < stop:
        health.append(fetch(server, "/healthz")[0])
        time.sleep(0.1)
    for t in threads:
        t.join(30)
    assert errors == []
    assert set(statuses) == {200, 503}
    assert statuses[200] > 0 and statuses[503] > 0
    assert set(health) == {200}


# ---------------------------------------------------------------------- connections


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_limit_connections_leaves_extra_connections_in_the_kernel_queue_until_one_closes(
    start_server: Start, loop: str
) -> None:
    server = start_server(APP, "--limit-connections", "2", "--loop", loop)
    first = RawConnectionExtras(server.address)
    second = RawConnectionExtras(server.address)
    assert first.request(get("/pid")).status == 200
    assert second.request(get("/pid")).status == 200
    third = RawConnectionExtras(server.address)  # the kernel completes the handshake
    third.send(get("/pid"))
    assert not third.data_within(1.0)  # not accepted: nobody reads it
    assert second.request(get("/pid")).status == 200  # the accepted ones are served
    first.close()
    response = third.read_response()
    assert response.status == 200
    for conn in (second, third):
        conn.close()


def test_a_graceful_stop_serves_the_connections_waiting_in_the_kernel_queue_instead_of_resetting_them(
    start_server: Start,
) -> None:
    """Closing a listening socket resets the connections in its queue, which completed
    their handshake and may have sent a request (a POST a front-end cannot retry): the
    worker accepts them first and answers each, with close. --limit-connections 1 holds
    them in the queue until the stop."""
    server = start_server(APP, "--limit-connections", "1", "--no-date-header")
    held = RawConnectionExtras(server.address)
    assert held.request(get("/pid")).status == 200
    waiting = [RawConnectionExtras(server.address) for _ in range(3)]
    for conn in waiting:
        conn.send(b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
    assert not waiting[0].data_within(0.5)  # queued: nobody has accepted them
    server.signal(signal.SIGTERM)
    for conn in waiting:
        response = conn.read_response()
        assert (response.status, response.header("connection"), response.body) == (200, "close", b"5")
        assert conn.closed_within(2.0)
        conn.close()
    held.close()
    assert server.wait(20) == 0


# ---------------------------------------------------------------------- memory


def test_a_worker_over_max_worker_memory_is_replaced_first_with_zero_failed_requests(
    start_server: Start,
) -> None:
    # 500 MiB: well above a worker's own size, also under AddressSanitizer (`make asan`:
    # about 180 MiB resident), so only the worker told to grow 600 MiB crosses it.
    server = start_server(APP, "-w", "2", "--max-worker-memory", "500", "--metrics-bind", "127.0.0.1:0")
    port = metrics_port(server)
    with KeepAliveLoad(server.address, clients=4, path="/pid", max_seconds=40) as load:
        load.wait_for(200)
        with RawConnection(server.address) as conn:
            assert conn.request(get("/pid")).status == 200
            victim = int(conn.request(get("/pid")).body)
            assert conn.request(get("/grow?mb=600")).body == b"grown"
        server.wait_for_log(
            rf"\[{victim}\] \[WARNING\] resident memory [\d.]+ MiB is over --max-worker-memory 500 MiB"
        )
        server.wait_for_log(rf"Worker {victim} exited", timeout=15)
        before = load.total_ok
        load.wait_for(before + 200)
        load.stop()
    assert load.failures == []
    log = server.stderr
    stopping = log_position(server, rf"Stopping worker {victim} \(over --max-worker-memory\)")
    replacement = re.findall(r"Worker (\d+) serving", log[:stopping])
    assert len(replacement) == 3  # the two at boot, then the replacement, before the stop
    assert victim not in server.worker_pids
    assert value(scrape(port), "rapidwsgi_worker_restarts_total", cause="memory") == 1


# ---------------------------------------------------------------------- stuck requests


def test_a_stuck_request_gets_504_its_stack_is_logged_and_the_worker_is_replaced_first(
    start_server: Start, tmp_path: Path
) -> None:
    server = start_server(
        APP, "--threads", "4", "--request-timeout", "1", "--metrics-bind", "127.0.0.1:0", "--no-date-header"
    )
    port = metrics_port(server)
    victim = server.worker_pid
    marker = tmp_path / "stuck"
    with KeepAliveLoad(server.address, clients=2, path="/pid", max_seconds=40) as load:
        load.wait_for(50)
        conn = hold(server, marker)
        raw, outcome = conn.read_to_end(10.0)
        assert (raw, outcome) == (
            b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Server: rapidwsgi\r\nContent-Length: 20\r\nConnection: close\r\n\r\n504 Gateway Timeout\n",
            "eof",
        )
        conn.close()
        server.wait_for_log(rf"Worker {victim} exited", timeout=45)
        before = load.total_ok
        load.wait_for(before + 50)
        load.stop()
    assert load.failures == []
    log = server.stderr
    m = re.search(
        rf"\[{victim}\] \[ERROR\] GET /stuck still running after [\d.]+s \(--request-timeout 1s\); "
        r"thread \d+ stack:\n(.*?)\n\[",
        log,
        re.S,
    )
    assert m, log
    assert 'opsapp.py", line' in m.group(1) and "in _wait_for_removal" in m.group(1)
    stopping = log_position(server, rf"Stopping worker {victim} \(a thread stuck past --request-timeout\)")
    assert len(re.findall(r"Worker \d+ serving", log[:stopping])) == 2
    assert f"[{victim}] [WARNING] exiting with 1 application thread(s) still running" in log
    samples = scrape(port)
    assert value(samples, "rapidwsgi_requests_stuck_total") == 1
    assert value(samples, "rapidwsgi_worker_restarts_total", cause="stuck") == 1
    marker.unlink()


def test_a_stuck_request_whose_response_started_is_reset(start_server: Start, tmp_path: Path) -> None:
    server = start_server(APP, "--threads", "2", "--request-timeout", "1")
    marker = tmp_path / "stuck"
    conn = hold(server, marker, "&stream=1")
    response = conn.read_head()
    assert (response.status, response.header("transfer-encoding")) == (200, "chunked")
    data, outcome = conn.read_to_end(10.0)
    assert data == b"5\r\nearly\r\n"  # never the last chunk: the client sees it cut short
    assert outcome in ("reset", "eof")
    conn.close()
    marker.unlink()


def test_request_timeout_does_not_touch_requests_that_finish_in_time(start_server: Start) -> None:
    server = start_server(APP, "--threads", "2", "--request-timeout", "2")
    pid = server.worker_pid
    for _ in range(3):
        assert fetch(server, "/sleep?s=0.6")[2] == b"slept"
    time.sleep(0.1)
    assert "still running" not in server.stderr
    assert server.worker_pids == [pid]


def test_stats_json_shows_shed_and_stuck_counters(start_server: Start) -> None:
    server = start_server(APP, "--threads", "2", "--metrics-bind", "127.0.0.1:0")
    doc = stats_json(metrics_port(server))
    assert (doc["shed"], doc["stuck"]) == (0, 0)
    json.dumps(doc)
