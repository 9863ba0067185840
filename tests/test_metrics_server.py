"""``--metrics-bind``, ``--statsd-host`` and ``rapidwsgi stats`` against real servers.

The totals are exact: every test counts what its clients were answered and compares
that with what the master reports, read with prometheus_client's own parser, across a
SIGHUP reload, a ``kill -9`` of a worker and ``--max-requests`` retirements, under load.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SOURCE_MODE, SRC, TESTS, ServerProcess
from tests.fuzz_gateway import uwsgi_packet
from tests.rawhttp import ConnectionClosedError, RawConnection, get, head, post, wait_until

Start = type[ServerProcess]
APP = "metricsapp:app"
_METRICS_AT = re.compile(r"Metrics at: http://127\.0\.0\.1:(\d+)")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_port(server: ServerProcess) -> int:
    return int(server.wait_for_log(_METRICS_AT.pattern).group(1))


def http_get(
    address: tuple[str, int] | str, target: str, method: str = "GET", headers: str = ""
) -> tuple[int, bytes]:
    with RawConnection(address) as conn:
        conn.send(f"{method} {target} HTTP/1.1\r\nHost: m\r\n{headers}\r\n".encode())
        response = conn.read_response(head=method == "HEAD")
        return response.status, response.body


def scrape(port: int) -> Samples:
    status, body = http_get(("127.0.0.1", port), "/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(body.decode()))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), f"a metric family is duplicated: {names}"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def stats_json(port: int) -> dict[str, Any]:
    import json

    status, body = http_get(("127.0.0.1", port), "/metrics?format=json")
    assert status == 200
    doc: dict[str, Any] = json.loads(body)
    return doc


def requests_of(samples: Samples, protocol: str = "http") -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples.items():
        d = dict(labels)
        if name == "rapidwsgi_requests_total" and d["protocol"] == protocol:
            out[d["method"], d["status"]] = int(value)
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# ---------------------------------------------------------------------- load


class Load:
    """Keep-alive clients sending a fixed mix; counts exactly what was answered.

    A request whose connection breaks before its response (a graceful close racing the
    request) is not counted: it is sent again on a new connection. ``quiesce(pid)``
    keeps worker ``pid`` idle while the others stay under load: the clients on its
    connections (and those opening a new one, which might land on it) wait, so that a
    ``kill -9`` of it cuts no request in flight, whose fate (answered or not, counted or
    not) no client could know."""

    MIX = (
        ("GET", "/hello", b"", 200, 5),
        ("GET", "/missing", b"", 404, 4),
        ("POST", "/post", b"0123456789", 200, 2),
        ("HEAD", "/hello", b"", 200, 0),
    )

    def __init__(self, address: tuple[str, int] | str, clients: int = 6, limit: int = 4000) -> None:
        self.address = address
        self.limit = limit  # requests per client at most
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.answered: Counter[tuple[str, str]] = Counter()
        self.body_in = 0
        self.body_out = 0
        self.total = 0
        self.unexpected: list[str] = []
        self._quiet_pid = 0
        self._resume = threading.Event()
        self._resume.set()
        #: Per client: the worker PID its request in flight went to (-1: a new
        #: connection, not known yet; 0: nothing in flight).
        self._sending_to: dict[int, int] = {}
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self._resume.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads)

    def wait_for(self, total: int, timeout: float = 30.0) -> None:
        assert wait_until(lambda: self.total >= total, timeout), f"only {self.total} answered"

    def quiesce(self, pid: int) -> None:
        """Return once no request is in flight to worker ``pid`` (see the class doc)."""
        with self.lock:
            self._quiet_pid = pid
            self._resume.clear()

        def quiet() -> bool:
            with self.lock:
                return not any(to in (pid, -1) for to in self._sending_to.values())

        assert wait_until(quiet, 20)

    def resume(self) -> None:
        with self.lock:
            self._quiet_pid = 0
            self._resume.set()

    def _client(self, index: int) -> None:
        conn: RawConnection | None = None
        worker = 0  # the PID behind conn
        deadline = time.monotonic() + 60
        for i in range(self.limit):
            if self.stop_event.is_set() or time.monotonic() > deadline:
                break
            with self.lock:
                quiet = self._quiet_pid
                # About to send on the quiet worker's connection, or on a new one (which
                # it may accept): wait instead.
                hold = bool(quiet) and (conn is None or worker == quiet)
                if not hold:
                    self._sending_to[index] = worker if conn is not None else -1
            if hold:
                if conn is not None:
                    conn.close()  # its worker is about to die: start afresh after
                    conn = None
                self._resume.wait(30)
                continue
            method, path, body, status, size = self.MIX[(i + index) % len(self.MIX)]
            if method == "POST":
                data = post(path, body)
            elif method == "HEAD":
                data = head(path)
            else:
                data = get(path)
            try:
                if conn is None:
                    conn = RawConnection(self.address)
                conn.send(data)
                response = conn.read_response(head=method == "HEAD")
            except (OSError, ConnectionClosedError, ValueError):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
                continue
            finally:
                with self.lock:
                    self._sending_to[index] = 0
            worker = int(response.header("x-worker") or 0)
            with self.lock:
                if response.status != status:
                    self.unexpected.append(f"{method} {path}: {response.status}")
                self.answered[method, f"{response.status // 100}xx"] += 1
                self.body_in += len(body)
                self.body_out += size
                self.total += 1
            if (response.header("connection") or "").lower() == "close":
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def _check_totals(samples: Samples, load: Load, extra: Counter[tuple[str, str]] | None = None) -> None:
    expected = load.answered + (extra or Counter())
    assert requests_of(samples) == expected
    count = sum(expected.values())
    assert value(samples, "rapidwsgi_request_duration_seconds_count", protocol="http") == count
    assert value(samples, "rapidwsgi_request_duration_seconds_bucket", protocol="http", le="+Inf") == count
    assert value(samples, "rapidwsgi_request_body_bytes_total", protocol="http") == load.body_in
    assert value(samples, "rapidwsgi_response_body_bytes_total", protocol="http") == load.body_out + sum(
        4 * n for (m, _), n in (extra or Counter()).items() if m != "HEAD"
    )
    assert value(samples, "rapidwsgi_responses_aborted_total") == 0


def _settled(server: ServerProcess, port: int, workers: int) -> dict[str, Any]:
    """Wait until ``workers`` workers serve and no other one is left."""
    doc: dict[str, Any] = {}

    def ok() -> bool:
        nonlocal doc
        doc = stats_json(port)
        states = [w["state"] for w in doc["workers"]]
        return states == ["serving"] * workers

    assert wait_until(ok, 30, 0.1), doc
    return doc


MODES = {
    "inline": (),
    "threaded": ("--threads", "4"),
    "preload": ("--preload",),
}


@pytest.mark.parametrize("mode", MODES)
def test_totals_are_exact_across_a_reload_a_kill_9_and_max_requests_under_load(
    start_server: Start, mode: str
) -> None:
    server = start_server(
        APP, "--workers", "3", "--metrics-bind", "127.0.0.1:0", "--max-requests", "400", *MODES[mode]
    )
    port = metrics_port(server)
    _settled(server, port, 3)
    with Load(server.address) as load:
        load.wait_for(300)
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Worker generation 2 serving")
        load.wait_for(load.total + 300)
        # --max-requests churns the workers under this load: the one picked may retire
        # and exit before the kill lands (then its exit is a clean one); pick another.
        for _ in range(20):
            serving = [w["pid"] for w in stats_json(port)["workers"] if w["state"] == "serving"]
            if not serving:
                time.sleep(0.05)
                continue
            victim = serving[0]
            load.quiesce(victim)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            end = server.wait_for_log(rf"Worker {victim} (died unexpectedly|exited)")
            if end.group(1) == "died unexpectedly":
                break
            load.resume()
        else:
            raise AssertionError("no serving worker to kill")
        load.resume()
        load.wait_for(load.total + 1500, timeout=60)
    assert load.unexpected == []
    doc = _settled(server, port, 3)
    samples = scrape(port)
    _check_totals(samples, load)
    assert doc["requests_total"] == load.total
    restarts = {k: v for k, v in doc["master"]["restarts"].items()}
    # The reload stops every generation-1 worker not already being stopped when
    # generation 2 serves: the 3, plus a replacement --max-requests had started in
    # generation 1 and not yet swapped in (its retiring worker is then stopped by the
    # reload too, not for its --max-requests).
    log = server.stderr
    before = log[: log.index("Worker generation 2 serving")]
    booted = set(re.findall(r"Booting worker (\d+) \(generation 1\)", before))
    gone = set(re.findall(r"Stopping worker (\d+)", before))
    assert restarts.get("reload") == len(booted - gone)
    assert restarts.get("crash") == 1
    assert restarts.get("max_requests", 0) >= 1  # 2100+ requests over 3 workers at 400 each
    assert value(samples, "rapidwsgi_worker_restarts_total", cause="crash") == 1
    assert value(samples, "rapidwsgi_reloads_total", outcome="completed") == 1
    assert value(samples, "rapidwsgi_workers", state="serving") == 3
    # The live workers' own counts are what their slots hold since they started.
    per_worker = sum(v for (n, _), v in samples.items() if n == "rapidwsgi_worker_requests_total")
    assert per_worker <= load.total
    assert all(w["generation"] == 2 for w in doc["workers"])


def test_a_worker_killed_while_idle_loses_no_count_and_none_is_counted_twice(start_server: Start) -> None:
    server = start_server(APP, "--workers", "2", "--metrics-bind", "127.0.0.1:0")
    port = metrics_port(server)
    _settled(server, port, 2)
    for _ in range(50):
        assert http_get(server.address, "/hello") == (200, b"hello")
    before = scrape(port)
    assert requests_of(before) == Counter({("GET", "2xx"): 50})
    for pid in [w["pid"] for w in stats_json(port)["workers"]]:
        os.kill(pid, signal.SIGKILL)
        server.wait_for_log(rf"Worker {pid} died unexpectedly")
    _settled(server, port, 2)
    after = scrape(port)
    assert requests_of(after) == Counter({("GET", "2xx"): 50})  # folded, not lost
    assert value(after, "rapidwsgi_worker_restarts_total", cause="crash") == 2
    assert all(w["requests"] == 0 for w in stats_json(port)["workers"])  # fresh slots
    for _ in range(7):
        assert http_get(server.address, "/hello") == (200, b"hello")
    assert requests_of(scrape(port)) == Counter({("GET", "2xx"): 57})


@pytest.mark.parametrize("mode", ["inline", "threaded"])
def test_a_running_request_shows_in_the_stats_with_its_method_path_and_age(
    start_server: Start, mode: str, tmp_path: Path
) -> None:
    args = ("--threads", "4") if mode == "threaded" else ()
    server = start_server(APP, "--workers", "1", "--metrics-bind", "127.0.0.1:0", *args)
    port = metrics_port(server)
    marker = tmp_path / "in-app"
    result: list[tuple[int, bytes]] = []
    client = threading.Thread(
        target=lambda: result.append(http_get(server.address, f"/slow?marker={marker}"))
    )
    client.start()
    try:
        assert wait_until(marker.exists, 10)
        doc: dict[str, Any] = {}

        def busy() -> list[dict[str, Any]]:
            nonlocal doc
            doc = stats_json(port)
            return list(doc["workers"][0]["busy"])

        assert wait_until(lambda: bool(busy()), 10)
        (record,) = busy()
        assert (record["method"], record["path"]) == ("GET", "/slow")  # never the query
        assert record["thread"] == (1 if mode == "threaded" else 0)
        assert 0 <= record["age"] < 20
        if mode == "threaded":
            assert wait_until(lambda: stats_json(port)["threads_busy"] == 1, 5)
        out = run_stats(str(port))
        assert out.returncode == 0, out.stderr
        assert re.search(
            rf"\n +{server.worker_pid} +1 serving .*\n +thread {record['thread']}: GET /slow for ", out.stdout
        )
    finally:
        marker.unlink(missing_ok=True)
        client.join(20)
    assert result == [(200, b"slow")]
    assert wait_until(lambda: stats_json(port)["workers"][0]["busy"] == [], 5)


def run_stats(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), str(SRC) if SOURCE_MODE else "") if p),
    }
    target = address if ":" in address else f"127.0.0.1:{address}"
    return subprocess.run(
        [sys.executable, "-m", "rapidwsgi", "stats", target, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def test_stats_watch_refreshes_and_json_prints_the_endpoints_document(start_server: Start) -> None:
    server = start_server(APP, "--workers", "2", "--metrics-bind", "127.0.0.1:0")
    port = metrics_port(server)
    _settled(server, port, 2)
    out = run_stats(str(port), "--watch", "0.1", "--iterations", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("rapidwsgi ") == 3  # three tables
    assert len(re.findall(r"^ +\d+ +1 serving ", out.stdout, re.M)) == 6
    out = run_stats(str(port), "--json")
    import json

    doc = json.loads(out.stdout)
    assert doc["master"]["pid"] == server.proc.pid
    assert sorted(w["pid"] for w in doc["workers"]) == sorted(server.worker_pids)


def test_stats_says_what_is_wrong_in_one_line() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    out = run_stats(str(port))
    assert out.returncode == 5  # ExitCode.BIND
    assert out.stdout == ""
    assert out.stderr.startswith(f"rapidwsgi stats: error: cannot read 127.0.0.1:{port}: ")
    assert out.stderr.count("\n") == 1
    out = subprocess.run(
        [sys.executable, "-m", "rapidwsgi", "stats"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "RAPIDWSGI_METRICS_BIND"},
        check=False,
    )
    assert out.returncode == 2
    assert "no address" in out.stderr


def test_errors_timeouts_and_gauges_are_counted(start_server: Start) -> None:
    server = start_server(
        APP, "--workers", "1", "--metrics-bind", "127.0.0.1:0", "--header-timeout", "1", "--keep-alive", "30"
    )
    port = metrics_port(server)
    # 400, 431 and 505 before the application; an exception in it (500).
    with RawConnection(server.address) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: m\r\nBad Header: x\r\n\r\n")
        assert conn.read_response().status == 400
    with RawConnection(server.address) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: m\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        assert conn.read_response().status == 431
    with RawConnection(server.address) as conn:
        conn.send(b"GET / HTTP/2.0\r\nHost: m\r\n\r\n")
        assert conn.read_response().status == 505
    assert http_get(server.address, "/raise")[0] == 500
    # A head that never completes: 408 after --header-timeout.
    with RawConnection(server.address) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost:")
        assert conn.read_response().status == 408
    # Idle keep-alive connections, seen at the next tick.
    idle = [RawConnection(server.address) for _ in range(3)]
    try:
        for conn in idle:
            conn.send(get("/hello"))
            assert conn.read_response().body == b"hello"
        assert wait_until(lambda: stats_json(port)["idle_connections"] == 3, 5)
        samples = scrape(port)
        assert value(samples, "rapidwsgi_connections") == 3
        assert value(samples, "rapidwsgi_connections_idle") == 3
    finally:
        for conn in idle:
            conn.close()
    assert value(samples, "rapidwsgi_parse_errors_total", status="400") == 1
    assert value(samples, "rapidwsgi_parse_errors_total", status="431") == 1
    assert value(samples, "rapidwsgi_parse_errors_total", status="505") == 1
    assert value(samples, "rapidwsgi_parse_errors_total", status="414") == 0
    assert value(samples, "rapidwsgi_timeouts_total", phase="header") == 1
    assert value(samples, "rapidwsgi_app_exceptions_total") == 1
    # Only what reached the application (or the server's own answer to it) is a request.
    assert requests_of(samples) == Counter({("GET", "5xx"): 1, ("GET", "2xx"): 3})
    assert wait_until(lambda: stats_json(port)["connections"] == 0, 5)


def test_the_duration_of_a_handed_over_request_includes_the_application_call(start_server: Start) -> None:
    # The C path calls the application, then hands a streaming result to the Python
    # exchange: the duration runs from the head, not from the hand-over.
    server = start_server(APP, "--workers", "1", "--metrics-bind", "127.0.0.1:0")
    port = metrics_port(server)
    assert http_get(server.address, "/late-stream") == (200, b"late")
    samples = scrape(port)
    assert value(samples, "rapidwsgi_request_duration_seconds_bucket", protocol="http", le="0.25") == 0
    assert value(samples, "rapidwsgi_request_duration_seconds_bucket", protocol="http", le="+Inf") == 1
    assert 0.3 <= value(samples, "rapidwsgi_request_duration_seconds_sum", protocol="http") < 5
    assert value(samples, "rapidwsgi_response_body_bytes_total", protocol="http") == 4


@pytest.mark.parametrize("protocol", ["uwsgi", "fastcgi"])
def test_gateway_requests_carry_their_protocol_label(start_server: Start, protocol: str) -> None:
    from tests.fuzz_gateway import fastcgi_request

    server = start_server(APP, "--workers", "1", "--metrics-bind", "127.0.0.1:0", "--protocol", protocol)
    port = metrics_port(server)
    variables = [
        (b"REQUEST_METHOD", b"POST"),
        (b"REQUEST_URI", b"/post"),
        (b"PATH_INFO", b"/post"),
        (b"QUERY_STRING", b""),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"SERVER_NAME", b"m"),
        (b"SERVER_PORT", b"80"),
        (b"REMOTE_ADDR", b"127.0.0.1"),
        (b"CONTENT_LENGTH", b"3"),
    ]
    packet = uwsgi_packet(variables, b"abc") if protocol == "uwsgi" else fastcgi_request(variables, b"abc")
    for _ in range(4):
        with socket.create_connection(server.address, timeout=10) as sock:  # type: ignore[arg-type]
            sock.sendall(packet)
            if protocol == "uwsgi":
                sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
                if protocol == "fastcgi" and b"\x03\x00\x01" in data[-16:]:
                    break
            assert b"ok" in data
    # (a request is counted once its response is written: the client may read the
    # FastCGI END_REQUEST, and scrape, first)
    assert wait_until(lambda: requests_of(scrape(port), protocol) == Counter({("POST", "2xx"): 4}), 5.0)
    samples = scrape(port)
    assert requests_of(samples, protocol) == Counter({("POST", "2xx"): 4})
    assert requests_of(samples, "http") == Counter()
    assert value(samples, "rapidwsgi_request_body_bytes_total", protocol=protocol) == 12
    assert value(samples, "rapidwsgi_response_body_bytes_total", protocol=protocol) == 8
    assert value(samples, "rapidwsgi_request_duration_seconds_count", protocol=protocol) == 4
    assert ("rapidwsgi_request_duration_seconds_count", (("protocol", "http"),)) not in samples


def test_statsd_receives_the_same_totals(start_server: Start) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    try:
        server = start_server(
            APP,
            "--workers",
            "2",
            "--statsd-host",
            f"127.0.0.1:{receiver.getsockname()[1]}",
            "--statsd-prefix",
            "web",
        )
        for _ in range(25):
            assert http_get(server.address, "/hello") == (200, b"hello")
        for _ in range(5):
            assert http_get(server.address, "/missing") == (404, b"nope")
        totals: Counter[str] = Counter()
        gauges: dict[str, str] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            totals["web.requests_total.http.GET.2xx"] < 25 or totals["web.requests_total.http.GET.4xx"] < 5
        ):
            try:
                packet = receiver.recv(65536).decode()
            except TimeoutError:
                continue
            for line in packet.split("\n"):
                name, _, rest = line.partition(":")
                amount, _, kind = rest.partition("|")
                if kind == "c":
                    totals[name] += int(float(amount))
                else:
                    gauges[name] = amount
        assert totals["web.requests_total.http.GET.2xx"] == 25
        assert totals["web.requests_total.http.GET.4xx"] == 5
        assert totals["web.request_duration_seconds_count.http"] == 30
        assert gauges["web.workers.serving"] == "2"
        assert "Metrics at" not in server.stderr  # statsd alone: no endpoint
    finally:
        receiver.close()


def test_the_endpoint_answers_only_get_and_head_on_its_paths_and_over_a_unix_socket(
    start_server: Start, tmp_path: Path
) -> None:
    path = tmp_path / "metrics.sock"
    server = start_server(APP, "--workers", "1", "--metrics-bind", f"unix:{path}")
    server.wait_for_log(r"Metrics at: unix:")
    address = str(path)
    status, body = http_get(address, "/metrics")
    assert status == 200
    assert b"# TYPE rapidwsgi_requests_total counter" in body
    assert http_get(address, "/nope")[0] == 404
    assert http_get(address, "/metrics", "POST", "Content-Length: 0\r\n")[0] == 405
    status, body = http_get(address, "/metrics", "HEAD")
    assert (status, body) == (200, b"")
    assert http_get(address, "/metrics", headers="Accept: application/openmetrics-text; version=1.0.0\r\n")[
        1
    ].endswith(b"# EOF\n")
    assert stat_mode(path) == 0o700  # umask 077: only the owner may connect
    # The application's listener knows nothing of /metrics.
    assert http_get(server.address, "/metrics") == (404, b"nope")
    assert server.stop() == 0
    assert not path.exists()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_metrics_address_in_use_is_a_bind_error_and_a_bad_one_a_usage_error(start_server: Start) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(APP, "--metrics-bind", f"127.0.0.1:{port}", wait=False)
        assert server.wait() == 5  # ExitCode.BIND
        assert server.stderr.endswith(f"[ERROR] cannot bind to 127.0.0.1:{port}: Address already in use\n")
    server = start_server(APP, "--metrics-bind", "fd://3", wait=False)
    assert server.wait() == 2
    assert "expected HOST:PORT or unix:PATH" in server.stderr


DEPLOY = TESTS.parent / "deploy" / "prometheus"


def test_the_shipped_dashboard_and_scrape_config_use_only_exported_metrics(start_server: Start) -> None:
    import json

    import yaml

    server = start_server(APP, "--workers", "1", "--metrics-bind", "127.0.0.1:0")
    port = metrics_port(server)
    status, body = http_get(("127.0.0.1", port), "/metrics")
    assert status == 200
    exported = set()
    for family in text_string_to_metric_families(body.decode()):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
        exported.update(family.name + suffix for suffix in suffixes)
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 8
    used = {name for expr in exprs for name in re.findall(r"\brapidwsgi_[a-z_]+", expr)}
    assert used - exported == set()
    assert "rapidwsgi_request_duration_seconds_bucket" in used
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert (job["job_name"], job["metrics_path"]) == ("rapidwsgi", "/metrics")
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9101"]
    assert all('job="rapidwsgi"' in expr for expr in exprs)
