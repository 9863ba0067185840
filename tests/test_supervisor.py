"""The master/worker process model, end to end: real processes, real signals, real load.

Each test starts ``python -m rapidwsgi`` (the master) with its workers and drives it the
way an operator or an init system would: ``kill -9`` of a worker, ``SIGHUP`` reloads,
``SIGTERM``/``SIGQUIT``/``SIGINT``, ``SIGTTIN``/``SIGTTOU``, ``SIGUSR1`` log rotation,
``--max-requests``, the watchdog, crash loops, systemd socket activation. Client threads
keep keep-alive connections busy meanwhile (:class:`KeepAliveLoad`); every load is
bounded in requests and in time, and the tests count failed requests and connection
resets, never durations. The contract is docs/process.md.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SOURCE_MODE, SRC, TESTS, ServerProcess, process_gone
from tests.rawhttp import ConnectionClosedError, RawConnection, RawConnectionExtras, get, wait_until

Start = type[ServerProcess]

#: An application module written into a test's directory; each reload test rewrites it.
VERSIONED_APP = """\
import os

VERSION = {version!r}


def app(environ, start_response):
    body = ("%s %d" % (VERSION, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

#: Like VERSIONED_APP, but a worker that imports it while ``marker`` exists dies at once.
CRASHING_APP = """\
import os

if os.path.exists({marker!r}):
    os._exit(1)


def app(environ, start_response):
    body = b"%d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

THREADING = {"threads": ("--threads", "4"), "inline": ("--threads", "1")}


# ------------------------------------------------------------------------------ helpers


def write_module(path: Path, text: str) -> None:
    """Write ``path`` and move its mtime forward by whole seconds.

    Versions of the same length written within one second would otherwise look unchanged
    to the bytecode cache (it compares the source's mtime in seconds and its size) and to
    ``--reload``'s polling.
    """
    previous = path.stat().st_mtime if path.exists() else time.time() - 100
    path.write_text(text)
    stamp = max(previous + 5, time.time())
    os.utime(path, (stamp, stamp))


def log_pids_in(text: str, pattern: str) -> list[int]:
    """The PIDs captured by ``pattern`` (one group) in ``text``, in order."""
    return [int(pid) for pid in re.findall(pattern, text)]


def log_pids(server: ServerProcess, pattern: str) -> list[int]:
    """The PIDs captured by ``pattern`` (one group) in the server's log, in order."""
    return log_pids_in(server.stderr, pattern)


def serving_pids(server: ServerProcess) -> set[int]:
    return set(log_pids(server, r"Worker (\d+) serving"))


def live_workers(server: ServerProcess) -> set[int]:
    """The master's children that are workers (not a --preload zygote)."""
    zygotes = set(log_pids(server, r"Preloading the application in zygote (\d+)"))
    return {pid for pid in server.worker_pids if pid not in zygotes}


def wait_workers(server: ServerProcess, count: int, timeout: float = 15.0) -> set[int]:
    """Wait until exactly ``count`` workers run and all of them logged that they serve."""

    def settled() -> bool:
        workers = live_workers(server)
        return len(workers) == count and workers <= serving_pids(server)

    assert wait_until(settled, timeout), (
        f"expected {count} serving workers, have {live_workers(server)}:\n{server.stderr}"
    )
    return live_workers(server)


def fetch(address: tuple[str, int] | str, path: str = "/hello", timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    with RawConnection(address, timeout) as conn:
        response = conn.request(get(path))
    return response.status, response.body


def sleep_in_app(seconds: float, mark: Path) -> bytes:
    """A request for apps.py's ``/sleep`` that creates ``mark`` once it is in the application."""
    return get(f"/sleep?seconds={seconds:g}&mark={urllib.parse.quote(str(mark))}")


def wait_in_app(mark: Path, timeout: float = 10.0) -> None:
    """Wait (bounded) until the request of :func:`sleep_in_app` is in the application."""
    assert wait_until(mark.exists, timeout), f"the request never reached the application ({mark})"


def body_versions(bodies: list[bytes]) -> set[str]:
    return {body.split()[0].decode() for body in bodies}


@dataclass
class Failure:
    """A request that got no complete response."""

    client: int
    kind: str  # "reset", "eof", "timeout", "error" or "status"
    detail: str
    #: The worker that answered this connection's previous request (``/pid`` loads only).
    pid: int | None


class KeepAliveLoad:
    """Client threads, each keeping one keep-alive connection busy with GET requests.

    A client reconnects only when a response says ``Connection: close``, or after a
    failure (which is recorded). Each client stops after ``per_client`` requests,
    ``max_seconds``, or :meth:`stop`. With ``path="/pid"`` the body is the PID of the
    worker that answered, so every failure is attributed to the worker of its connection.
    """

    def __init__(
        self,
        address: tuple[str, int] | str,
        clients: int = 4,
        path: str = "/pid",
        per_client: int = 20_000,
        max_seconds: float = 40.0,
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        #: Seconds one request may wait for its response (a held inline worker stalls it).
        self.timeout = timeout
        self.path = path
        self.per_client = per_client
        self.max_seconds = max_seconds
        self.ok = [0] * clients
        self.bodies: list[list[bytes]] = [[] for _ in range(clients)]
        self.current_pid: list[int | None] = [None] * clients
        self.failures: list[Failure] = []
        self.closes = 0  # responses with Connection: close (the client reconnected)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), name=f"load-{i}", daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> KeepAliveLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.01))
        assert not any(thread.is_alive() for thread in self._threads), "load clients did not finish"

    @property
    def total_ok(self) -> int:
        return sum(self.ok)

    @property
    def resets(self) -> list[Failure]:
        return [f for f in self.failures if f.kind == "reset"]

    def last_bodies(self) -> list[bytes | None]:
        with self._lock:
            return [bodies[-1] if bodies else None for bodies in self.bodies]

    def connections_per_worker(self) -> dict[int, int]:
        """Worker PID -> how many clients' connections it answered last."""
        with self._lock:
            pids = [pid for pid in self.current_pid if pid is not None]
        return {pid: pids.count(pid) for pid in set(pids)}

    def all_bodies(self) -> list[bytes]:
        with self._lock:
            return [body for bodies in self.bodies for body in bodies]

    def wait_for(self, total: int, timeout: float = 20.0) -> None:
        """Wait until ``total`` requests succeeded in all (fails if the clients stall)."""
        assert wait_until(lambda: self.total_ok >= total, timeout), (
            f"load stalled at {self.total_ok}/{total} requests; failures: {self.failures[:5]}"
        )

    def _fail(self, client: int, kind: str, detail: str) -> None:
        with self._lock:
            self.failures.append(Failure(client, kind, detail, self.current_pid[client]))
            self.current_pid[client] = None

    def _client(self, i: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        request = get(self.path)
        conn: RawConnection | None = None
        attempts = 0
        try:
            while not self._stop.is_set() and attempts < self.per_client and time.monotonic() < deadline:
                attempts += 1
                if conn is None:
                    try:
                        conn = RawConnection(self.address, timeout=self.timeout)
                    except OSError as exc:
                        self._fail(i, "error", f"connect: {exc!r}")
                        # Paces the retries of a refused connect (bounded by attempts and
                        # the deadline above): not a wait for something observable.
                        time.sleep(0.05)
                        continue
                try:
                    response = conn.request(request)
                except ConnectionClosedError as exc:
                    self._fail(i, "reset" if "reset" in str(exc) else "eof", str(exc))
                    conn.close()
                    conn = None
                    continue
                except (ConnectionResetError, BrokenPipeError) as exc:
                    self._fail(i, "reset", repr(exc))
                    conn.close()
                    conn = None
                    continue
                except TimeoutError as exc:
                    self._fail(i, "timeout", repr(exc))
                    conn.close()
                    conn = None
                    continue
                except OSError as exc:
                    self._fail(i, "error", repr(exc))
                    conn.close()
                    conn = None
                    continue
                if response.status != 200:
                    self._fail(i, "status", f"{response.status} {response.body[:100]!r}")
                else:
                    with self._lock:
                        self.ok[i] += 1
                        self.bodies[i].append(response.body)
                        if self.path == "/pid":
                            self.current_pid[i] = int(response.body)
                if (response.header("connection") or "").lower() == "close":
                    with self._lock:
                        self.closes += 1
                        self.current_pid[i] = None
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()


# ---------------------------------------------------------------------- a worker killed


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_kill_9_of_a_worker_under_load_fails_only_its_connections_and_it_is_replaced(
    start_server: Start, preload: bool
) -> None:
    server = start_server("apps:app", "--workers", "2", *(["--preload"] if preload else []))
    before = wait_workers(server, 2)
    with KeepAliveLoad(server.address, clients=6) as load:
        load.wait_for(300)
        on_victim = load.connections_per_worker()
        victim = max(on_victim, key=lambda pid: on_victim[pid])
        os.kill(victim, signal.SIGKILL)
        server.wait_for_log(rf"Worker {victim} died unexpectedly \(killed by SIGKILL\)")
        after = wait_workers(server, 2)
        failed_before_replacement = len(load.failures)
        load.wait_for(load.total_ok + 500)
        failures = list(load.failures)
    replacement = after - before
    assert len(replacement) == 1 and victim not in after, (before, after)
    assert replacement <= serving_pids(server)
    # Only the connections that were on the killed worker failed, each at most once.
    assert len(failures) <= on_victim[victim], (on_victim, failures)
    assert all(f.pid in (victim, None) for f in failures), failures
    assert len({f.client for f in failures}) == len(failures), failures
    # Once the replacement serves, nothing fails any more.
    assert len(failures) == failed_before_replacement, failures
    assert fetch(server.address) == (200, b"Hello, world!")
    assert server.proc.poll() is None


def test_a_killed_zygote_is_restarted_and_workers_are_still_replaced(start_server: Start) -> None:
    server = start_server("apps:app", "--workers", "2", "--preload")
    workers = wait_workers(server, 2)
    zygote = log_pids(server, r"Preloading the application in zygote (\d+)")[0]
    os.kill(zygote, signal.SIGKILL)
    server.wait_for_log(rf"Zygote {zygote} exited \(killed by SIGKILL\); starting a new one")
    server.wait_for_log(rf"Zygote (?!{zygote}\b)\d+ imported the application")
    assert live_workers(server) == workers  # the serving workers did not notice
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    server.wait_for_log(rf"Worker {victim} died unexpectedly")
    after = wait_workers(server, 2)
    assert victim not in after and len(after - workers) == 1
    assert fetch(server.address) == (200, b"Hello, world!")


# -------------------------------------------------------------- SIGHUP: rolling reloads


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_five_sighups_under_keep_alive_load_fail_no_request_and_serve_the_last_code(
    start_server: Start, tmp_path: Path, preload: bool
) -> None:
    module = tmp_path / "hupapp.py"
    write_module(module, VERSIONED_APP.format(version="v1"))
    server = start_server("hupapp:app", "--workers", "2", *(["--preload"] if preload else []), cwd=tmp_path)
    first = wait_workers(server, 2)
    with KeepAliveLoad(server.address, clients=4, path="/") as load:
        load.wait_for(200)
        for generation in range(2, 7):
            write_module(module, VERSIONED_APP.format(version=f"v{generation}"))
            server.signal(signal.SIGHUP)
            server.wait_for_log(
                rf"Worker generation {generation} serving; stopping generation {generation - 1}", timeout=20
            )
            load.wait_for(load.total_ok + 100)
        # The old workers closed their connections cleanly; the clients moved to v6.
        assert wait_until(
            lambda: all(body is not None and body.startswith(b"v6 ") for body in load.last_bodies()), 15
        ), load.last_bodies()
        load.wait_for(load.total_ok + 200)
    assert load.failures == [], load.failures[:10]
    assert load.resets == []
    assert load.closes >= 4  # every client was moved off an old worker at least once
    assert {"v1", "v6"} <= body_versions(load.all_bodies())
    final = wait_workers(server, 2)
    assert not final & first
    for _ in range(5):
        status, body = fetch(server.address, "/")
        assert status == 200 and body.startswith(b"v6 "), body
    assert "died unexpectedly" not in server.stderr


def test_a_signal_sent_right_after_fork_reaches_the_child_with_its_own_handling() -> None:
    """supervisor._fork(): the parent's Python handler (which only queues the signal in
    the parent's state) must not swallow a SIGTERM sent to the child at once; the child
    starts with the default action, so it is terminated."""
    from rapidwsgi.supervisor import _fork

    recorded: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: recorded.append(signum))
    try:
        pid = _fork()
        if pid == 0:  # the child: without the reset it would outlive the signal
            try:
                # Deliberately lets time pass (bounded: a child whose parent handler
                # swallowed the signal exits 0 after it and the assertion below fails).
                time.sleep(5)
            finally:
                os._exit(0)
        os.kill(pid, signal.SIGTERM)  # before the child can have done anything
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert recorded == []  # and the parent's handler never saw it


SLOW_IMPORT_APP = """\
import os
import time

VERSION = {version!r}
if VERSION != "v1":
    with open("importing-%s-%d" % (VERSION, os.getpid()), "w"):
        pass  # observable: this worker is in its import now
    time.sleep(3)  # a slow import: the next reload comes while this one is under way


def app(environ, start_response):
    body = ("%s %d" % (VERSION, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_a_worker_stopped_while_it_imports_the_application_exits_instead_of_serving(
    start_server: Start, tmp_path: Path
) -> None:
    """A reload superseded while its worker still imports the code stops that worker: the
    SIGTERM reaches it (its handling is not the master's, inherited through fork), so it
    never serves the outdated generation."""
    module = tmp_path / "slowapp.py"
    write_module(module, SLOW_IMPORT_APP.format(version="v1"))
    server = start_server("slowapp:app", "--workers", "1", cwd=tmp_path)
    wait_workers(server, 1)
    write_module(module, SLOW_IMPORT_APP.format(version="v2"))
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Booting worker \d+ \(generation 2\)")
    [superseded] = log_pids(server, r"Booting worker (\d+) \(generation 2\)")
    importing = tmp_path / f"importing-v2-{superseded}"
    # The generation-2 worker is in its 3-second import once it wrote this file.
    assert wait_until(importing.exists, 10), server.stderr
    write_module(module, SLOW_IMPORT_APP.format(version="v3"))
    server.signal(signal.SIGHUP)
    server.wait_for_log(rf"Worker {superseded} exited \(killed by SIGTERM\)", timeout=10)
    server.wait_for_log(r"Worker generation 3 serving", timeout=20)
    assert superseded not in serving_pids(server)
    assert fetch(server.address)[1].startswith(b"v3 ")


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_a_burst_of_sighups_settles_on_the_newest_code_without_failing_a_request(
    start_server: Start, tmp_path: Path, preload: bool
) -> None:
    module = tmp_path / "burstapp.py"
    write_module(module, VERSIONED_APP.format(version="v1"))
    server = start_server("burstapp:app", "--workers", "2", *(["--preload"] if preload else []), cwd=tmp_path)
    wait_workers(server, 2)
    with KeepAliveLoad(server.address, clients=4, path="/") as load:
        load.wait_for(200)
        for version in range(2, 7):
            write_module(module, VERSIONED_APP.format(version=f"v{version}"))
            server.signal(signal.SIGHUP)
            server.wait_for_log(rf"Starting worker generation {version}\b")
        settled = wait_until(
            lambda: all(body is not None and body.startswith(b"v6 ") for body in load.last_bodies()), 20
        )
        # Every process serving is a worker the master adopted (and so can stop).
        unmanaged = live_workers(server) - set(log_pids(server, r"Booting worker (\d+)"))
        assert settled and not unmanaged, (load.last_bodies(), f"unmanaged: {unmanaged}", server.stderr)
        load.wait_for(load.total_ok + 200)
    assert load.failures == [], load.failures[:10]
    wait_workers(server, 2)
    assert fetch(server.address, "/")[1].startswith(b"v6 ")


# ------------------------------------------------------ SIGTERM / SIGINT: graceful stop


@pytest.mark.parametrize(
    ("mode", "signum"),
    [("threads", signal.SIGTERM), ("inline", signal.SIGTERM), ("threads", signal.SIGINT)],
    ids=["threads-SIGTERM", "inline-SIGTERM", "threads-SIGINT"],
)
def test_graceful_stop_finishes_the_slow_request_answers_a_late_one_and_closes_idle_ones_cleanly(
    start_server: Start, mode: str, signum: signal.Signals, tmp_path: Path
) -> None:
    server = start_server("apps:app", "--workers", "1", *THREADING[mode], "--graceful-timeout", "10")
    worker = wait_workers(server, 1).pop()
    idle = [RawConnectionExtras(server.address, timeout=15) for _ in range(3)]
    late = RawConnectionExtras(server.address, timeout=15)
    for conn in [*idle, late]:
        response = conn.request(get("/hello"))
        assert response.status == 200 and response.header("connection") is None
    slow = RawConnectionExtras(server.address, timeout=15)
    mark = tmp_path / "in-app"
    slow.send(sleep_in_app(2, mark))
    wait_in_app(mark)
    server.signal(signum)
    # The master has passed the stop on (it logs, then signals the workers) ...
    server.wait_for_log(rf"Shutting down \({signum.name}\)")
    if mode == "threads":
        # ... and the worker's loop has acted on it. (Inline, its loop is inside the
        # application until the slow request ends, so the signal, already pending, is
        # handled before the loop can read the late request.)
        server.wait_for_log(r"Worker shutting down \(SIGTERM\)")
    late.send(get("/hello"))  # on an idle keep-alive connection, right after the signal

    answer = late.read_response()
    slow_answer = slow.read_response()
    observed = {
        "late request": (answer.status, answer.body, answer.header("connection")),
        "late connection then": late.read_to_end(5),
        "slow request": (slow_answer.status, slow_answer.body, slow_answer.header("connection")),
        "slow connection then": slow.read_to_end(5),
        "idle connections": [conn.read_to_end(5) for conn in idle],  # a clean close, not a reset
        "master exit status": server.wait(timeout=10),
    }
    assert observed == {
        "late request": (200, b"Hello, world!", "close"),
        "late connection then": (b"", "eof"),
        "slow request": (200, b"slept", "close"),
        "slow connection then": (b"", "eof"),
        "idle connections": [(b"", "eof")] * 3,
        "master exit status": 0,
    }
    assert process_gone(worker)
    assert "did not stop in time" not in server.stderr
    for conn in [*idle, late, slow]:
        conn.close()


def test_a_repeated_sigterm_does_not_cut_the_graceful_stop_short(start_server: Start, tmp_path: Path) -> None:
    # docs/process.md: only a second SIGINT (Ctrl-C twice) stops at once. The request
    # outlasts the master's quick-stop grace (a few seconds), well within --graceful-timeout.
    server = start_server("apps:app", "--workers", "1", "--threads", "4", "--graceful-timeout", "10")
    wait_workers(server, 1)
    with RawConnectionExtras(server.address, timeout=15) as slow:
        mark = tmp_path / "in-app"
        slow.send(sleep_in_app(5, mark))
        wait_in_app(mark)
        server.signal(signal.SIGTERM)
        server.wait_for_log(r"Shutting down \(SIGTERM\)")  # the first one is acted on
        server.signal(signal.SIGTERM)  # e.g. an init system or `timeout` repeating it
        server.wait_for_log(r"Already shutting down gracefully \(SIGTERM\); SIGTERM again")
        data, _ = slow.read_to_end(10)
    assert b"slept" in data, server.stderr
    assert server.wait(timeout=10) == 0


# ----------------------------- SIGQUIT, a second SIGINT, --graceful-timeout: quick stop


@pytest.mark.parametrize("mode", ["threads", "inline"])
def test_sigquit_exits_at_once_without_waiting_for_a_slow_request(
    start_server: Start, mode: str, tmp_path: Path
) -> None:
    server = start_server("apps:app", "--workers", "1", *THREADING[mode], "--graceful-timeout", "30")
    worker = wait_workers(server, 1).pop()
    with RawConnectionExtras(server.address, timeout=15) as slow:
        mark = tmp_path / "in-app"
        slow.send(sleep_in_app(20, mark))
        wait_in_app(mark)
        server.signal(signal.SIGQUIT)
        server.wait(timeout=8)  # far less than the 20 s request or the 30 s grace
        data, _ = slow.read_to_end(5)
    assert b"slept" not in data
    assert wait_until(lambda: process_gone(worker), 5)


def test_a_second_sigint_stops_at_once(start_server: Start, tmp_path: Path) -> None:
    server = start_server("apps:app", "--workers", "1", "--threads", "4", "--graceful-timeout", "30")
    wait_workers(server, 1)
    with RawConnectionExtras(server.address, timeout=15) as slow:
        mark = tmp_path / "in-app"
        slow.send(sleep_in_app(20, mark))
        wait_in_app(mark)
        server.signal(signal.SIGINT)
        server.wait_for_log(r"Shutting down \(SIGINT\)")
        server.signal(signal.SIGINT)
        server.wait(timeout=8)
        data, _ = slow.read_to_end(5)
    assert b"slept" not in data


@pytest.mark.parametrize("mode", ["threads", "inline"])
def test_graceful_timeout_cuts_a_long_request_short_and_the_master_still_exits(
    start_server: Start, mode: str, tmp_path: Path
) -> None:
    server = start_server("apps:app", "--workers", "1", *THREADING[mode], "--graceful-timeout", "1")
    worker = wait_workers(server, 1).pop()
    with RawConnectionExtras(server.address, timeout=15) as slow:
        mark = tmp_path / "in-app"
        slow.send(sleep_in_app(30, mark))
        wait_in_app(mark)
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        data, _ = slow.read_to_end(5)
    assert b"slept" not in data
    assert wait_until(lambda: process_gone(worker), 5)


# ----------------------------------------------------------------------- --max-requests


@pytest.mark.parametrize("jitter", [0, 100])
def test_max_requests_retires_and_replaces_workers_without_failing_a_request(
    start_server: Start, jitter: int
) -> None:
    server = start_server(
        "apps:app", "--workers", "2", "--max-requests", "100", "--max-requests-jitter", str(jitter)
    )
    first = wait_workers(server, 2)

    def asked() -> dict[int, int]:
        """Worker PID -> the request count at which it asked to be retired."""
        found = re.findall(r"\[(\d+)\] \[INFO\] Served (\d+) requests; asking to be retired", server.stderr)
        return {int(pid): int(n) for pid, n in found}

    # At least 1000 requests, and on until 4 workers asked to retire (at most 20000
    # requests or 60 s: a retiring worker keeps serving until its replacement does, which
    # on a busy machine can take many requests).
    with KeepAliveLoad(server.address, clients=4, per_client=5000, max_seconds=60) as load:
        load.wait_for(1000)
        wait_until(lambda: len(asked()) >= 4, 60)
    assert load.failures == [], load.failures[:10]
    assert load.total_ok >= 1000
    retiring = asked()
    assert len(retiring) >= 4 and set(retiring) & first, server.stderr
    for pid in retiring:  # each one is stopped once a replacement serves, and exits
        server.wait_for_log(rf"Stopping worker {pid} \(served its --max-requests\)")
        server.wait_for_log(rf"Worker {pid} exited \(exit code 0")
    assert len(log_pids(server, r"Booting worker (\d+)")) >= 2 + len(retiring)
    counts = list(retiring.values())
    if jitter:
        assert all(100 <= n <= 100 + jitter for n in counts), counts
        assert len(set(counts)) > 1, counts  # the workers do not retire together
    else:
        assert set(counts) == {100}, counts
    wait_workers(server, 2)
    assert "died unexpectedly" not in server.stderr


# -------------------------------------------------------------- --timeout: the watchdog


def test_watchdog_kills_a_blocked_inline_worker_logs_its_traceback_and_replaces_it(
    start_server: Start,
) -> None:
    server = start_server(
        "apps:app", "--workers", "1", "--threads", "1", "--timeout", "2", "--graceful-timeout", "2"
    )
    victim = wait_workers(server, 1).pop()
    with RawConnectionExtras(server.address, timeout=20) as stuck:
        stuck.send(get("/stuck?seconds=60"))
        server.wait_for_log(
            rf"Worker {victim} killed by the watchdog \(killed by SIG(ABRT|KILL)\)", timeout=20
        )
        data, _ = stuck.read_to_end(5)
    assert b"unstuck" not in data
    log = server.stderr
    assert f"Worker {victim} silent for" in log
    fatal = log.index("Fatal Python error: Aborted")
    assert "stuck_in_application_code" in log[fatal:], log[fatal:]
    replacement = wait_workers(server, 1).pop()
    assert replacement != victim
    assert fetch(server.address) == (200, b"Hello, world!")


def test_watchdog_spares_a_threaded_worker_whose_loop_keeps_beating(start_server: Start) -> None:
    server = start_server("apps:app", "--workers", "1", "--threads", "4", "--timeout", "1")
    worker = wait_workers(server, 1).pop()
    assert fetch(server.address, "/sleep?seconds=3") == (200, b"slept")
    assert "silent for" not in server.stderr
    assert live_workers(server) == {worker}


# -------------------------------------------------------------------- SIGTTIN / SIGTTOU


def test_sigttin_and_sigttou_change_the_worker_count_but_never_below_one(start_server: Start) -> None:
    server = start_server("apps:app", "--workers", "2")
    wait_workers(server, 2)
    server.signal(signal.SIGTTIN)
    server.wait_for_log(r"SIGTTIN: 3 workers")
    wait_workers(server, 3)
    for expected, occurrence in ((2, 1), (1, 1), (1, 2)):
        server.signal(signal.SIGTTOU)
        assert wait_until(lambda e=expected, o=occurrence: server.stderr.count(f"SIGTTOU: {e} workers") >= o)
        wait_workers(server, expected)
    assert "SIGTTOU: 0 workers" not in server.stderr
    # Deliberately lets time pass: nothing else happens, one worker stays.
    time.sleep(0.5)
    assert len(wait_workers(server, 1)) == 1
    assert fetch(server.address) == (200, b"Hello, world!")


# ------------------------------------------------------- applications that fail to load


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_an_application_that_fails_to_import_at_boot_exits_4_with_its_message(
    start_server: Start, tmp_path: Path, preload: bool
) -> None:
    (tmp_path / "brokenapp.py").write_text('raise RuntimeError("broken on purpose")\n')
    server = start_server(
        "brokenapp:app", "--workers", "2", *(["--preload"] if preload else []), cwd=tmp_path, wait=False
    )
    assert server.wait(timeout=20) == 4, server.stderr
    assert "RuntimeError: broken on purpose" in server.stderr
    assert "Traceback" in server.stderr


def test_workers_that_keep_dying_before_they_serve_make_the_master_exit_3(
    start_server: Start, tmp_path: Path
) -> None:
    (tmp_path / "dyingapp.py").write_text("import os\n\nos._exit(1)\n")
    server = start_server("dyingapp:app", "--workers", "2", cwd=tmp_path, wait=False)
    assert server.wait(timeout=30) == 3, server.stderr


#: New code a reload cannot load, and what the log then says about it.
BROKEN_CODE = {
    "syntax-error": ("def app(environ, start_response:\n", "SyntaxError"),
    "exit-at-import": ("import os\n\nos._exit(1)\n", "Reload to generation 2 aborted"),
}


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
@pytest.mark.parametrize("broken", list(BROKEN_CODE))
def test_a_reload_whose_code_fails_to_import_is_aborted_and_the_old_workers_keep_serving(
    start_server: Start, tmp_path: Path, preload: bool, broken: str
) -> None:
    code, symptom = BROKEN_CODE[broken]
    module = tmp_path / "reloadapp.py"
    write_module(module, VERSIONED_APP.format(version="v1"))
    server = start_server(
        "reloadapp:app", "--workers", "2", *(["--preload"] if preload else []), cwd=tmp_path
    )
    first = wait_workers(server, 2)
    with KeepAliveLoad(server.address, clients=3, path="/") as load:
        load.wait_for(100)
        write_module(module, code)
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Reload to generation 2 aborted", timeout=10)
        load.wait_for(load.total_ok + 200)
        assert live_workers(server) == first
        assert body_versions(load.all_bodies()) == {"v1"}
        write_module(module, VERSIONED_APP.format(version="v3"))
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Worker generation \d+ serving; stopping generation 1", timeout=20)
        assert wait_until(
            lambda: all(body is not None and body.startswith(b"v3 ") for body in load.last_bodies()), 15
        )
    assert load.failures == [], load.failures[:10]
    assert symptom in server.stderr
    assert fetch(server.address, "/")[1].startswith(b"v3 ")
    assert not wait_workers(server, 2) & first


# -------------------------------------------------------------------------- crash loops


def test_a_crash_loop_is_reported_and_backed_off_while_the_master_keeps_serving(
    start_server: Start, tmp_path: Path
) -> None:
    marker = tmp_path / "crash-on-import"
    (tmp_path / "crashapp.py").write_text(CRASHING_APP.format(marker=str(marker)))
    server = start_server("crashapp:app", "--workers", "2", cwd=tmp_path)
    survivor, victim = sorted(wait_workers(server, 2))
    marker.touch()  # from now on a new worker dies while importing the application
    os.kill(victim, signal.SIGKILL)
    server.wait_for_log(
        r"Crash loop: 5 unexpected worker exits \(the first 5 within 10s\); next spawn in 1s", timeout=20
    )
    # Backed off: a handful of attempts in the next 3 s, not hundreds.
    boots = len(log_pids(server, r"Booting worker (\d+)"))
    for _ in range(30):
        assert fetch(server.address) == (200, str(survivor).encode())
        time.sleep(0.1)  # deliberately lets the 3 s pass: the back-off allows few boots in it
    assert len(log_pids(server, r"Booting worker (\d+)")) - boots <= 4, server.stderr
    assert server.proc.poll() is None
    marker.unlink()  # the application imports again: the next attempt serves
    wait_workers(server, 2, timeout=40)
    assert server.proc.poll() is None


# ------------------------------------------------ --pid, --reuse-port, --user, --reload


def test_pid_file_holds_the_master_pid_and_is_removed_at_exit(start_server: Start, tmp_path: Path) -> None:
    pidfile = tmp_path / "rapidwsgi.pid"
    server = start_server("apps:app", "--workers", "2", "--pid", str(pidfile))
    assert pidfile.read_text().strip() == str(server.proc.pid)
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=10) == 0
    assert not pidfile.exists()


def test_reuse_port_workers_share_one_tcp_port_and_both_get_connections(start_server: Start) -> None:
    server = start_server("apps:app", "--workers", "2", "--reuse-port")
    workers = wait_workers(server, 2)
    answered: set[int] = set()
    for _ in range(60):  # new connections: the kernel spreads them over the workers' sockets
        status, body = fetch(server.address, "/pid", timeout=5)
        assert status == 200
        answered.add(int(body))
    assert answered == workers
    assert len(server.addresses) == 1
    migrates = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    hint = "set the sysctl net.ipv4.tcp_migrate_req=1"
    if migrates.exists() and migrates.read_text().strip() == "1":
        assert hint not in server.stderr
    else:  # queued connections of a stopping worker would be reset: the master says how to avoid it
        assert hint in server.stderr


def _python_usable_as(user: str) -> bool:
    """Whether ``user`` can run this interpreter and import rapidwsgi (not so when it lives
    under a private home directory)."""
    entry = pwd.getpwnam(user)
    paths = [str(TESTS), str(SRC) if SOURCE_MODE else ""]
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import ctypes, json, uvloop, rapidwsgi.supervisor"],
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=[],
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(p for p in paths if p)},
            cwd="/",
            capture_output=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return result.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs root")
def test_user_nobody_runs_the_workers_as_nobody_and_owns_the_unix_socket(
    start_server: Start, tmp_path: Path
) -> None:
    if not _python_usable_as("nobody"):
        pytest.skip("this Python installation is not readable by the user nobody")
    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "nobody.sock"
    server = start_server("apps:app", "--workers", "2", "--user", "nobody", bind=f"unix:{path}")
    workers = wait_workers(server, 2)
    for pid in [*workers, server.proc.pid]:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
        assert uids and set(uids.group(1).split()) == {str(nobody.pw_uid)}, (pid, status)
    assert path.stat().st_uid == nobody.pw_uid
    assert fetch(str(path)) == (200, b"Hello, world!")


def test_reload_option_restarts_the_workers_when_a_python_file_changes(
    start_server: Start, tmp_path: Path
) -> None:
    module = tmp_path / "devapp.py"
    write_module(module, VERSIONED_APP.format(version="v1"))
    server = start_server("devapp:app", "--workers", "1", "--reload", cwd=tmp_path)
    first = wait_workers(server, 1)
    assert fetch(server.address, "/")[1].startswith(b"v1 ")
    (tmp_path / "notes.txt").write_text("not Python\n")
    # Deliberately lets time pass: two polls of the reloader, a non-.py file changes nothing.
    time.sleep(2.2)
    assert "Changed:" not in server.stderr
    write_module(module, VERSIONED_APP.format(version="v2"))
    server.wait_for_log(r"Changed: devapp\.py", timeout=10)
    server.wait_for_log(r"Worker generation 2 serving", timeout=15)
    assert not wait_workers(server, 1) & first
    assert fetch(server.address, "/")[1].startswith(b"v2 ")


# ---------------------------------------------------------------- SIGUSR1: log rotation


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_sigusr1_reopens_the_error_and_access_logs_after_they_were_renamed(
    start_server: Start, tmp_path: Path, preload: bool
) -> None:
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    path = tmp_path / "usr1.sock"
    server = start_server(
        "apps:app",
        "--workers",
        "1",
        "--error-logfile",
        str(error_log),
        "--access-logfile",
        str(access_log),
        *(["--preload"] if preload else []),
        bind=f"unix:{path}",
        wait=False,
    )

    def text(file: Path) -> str:
        try:
            return file.read_text()
        except FileNotFoundError:
            return ""

    assert wait_until(lambda: "serving" in text(error_log), 15), (text(error_log), server.stderr)
    assert fetch(str(path), "/hello?before") == (200, b"Hello, world!")
    assert wait_until(lambda: "/hello?before" in text(access_log), 5)
    rotated_error, rotated_access = tmp_path / "error.log.1", tmp_path / "access.log.1"
    error_log.rename(rotated_error)
    access_log.rename(rotated_access)
    server.signal(signal.SIGUSR1)
    # The worker reopens its access log (creating the file) and its error log together.
    assert wait_until(access_log.exists, 10), text(rotated_error)

    assert fetch(str(path), "/hello?after") == (200, b"Hello, world!")
    assert fetch(str(path), "/error-before")[0] == 500  # the worker logs the exception
    server.signal(signal.SIGTTIN)  # the master logs, and a new worker starts and logs
    assert wait_until(lambda: "SIGTTIN: 2 workers" in text(error_log), 10), text(error_log)
    assert wait_until(lambda: len(log_pids_in(text(error_log), r"Booting worker (\d+)")) == 1, 10)
    newcomer = log_pids_in(text(error_log), r"Booting worker (\d+)")[0]
    assert wait_until(lambda: f"[{newcomer}] [INFO] Serving apps:app" in text(error_log), 5), (
        text(error_log),
        text(rotated_error),
    )
    assert wait_until(lambda: "/hello?after" in text(access_log), 5)
    assert wait_until(lambda: "boom before start_response" in text(error_log), 5), text(rotated_error)
    old = text(rotated_error) + text(rotated_access)
    for line in ("/hello?after", "boom before start_response", "SIGTTIN", f"[{newcomer}]"):
        assert line not in old, line
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=10) == 0


# ------------------------------------------------------------ systemd socket activation


@contextlib.contextmanager
def listening_socket(family: str, tmp_path: Path) -> Iterator[tuple[socket.socket, tuple[str, int] | str]]:
    if family == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        address: tuple[str, int] | str = sock.getsockname()[:2]
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = str(tmp_path / "systemd.sock")
        sock.bind(address)
    sock.listen(64)
    try:
        yield sock, address
    finally:
        sock.close()


@contextlib.contextmanager
def systemd_handover(sock: socket.socket) -> Iterator[Callable[[], None]]:
    """A preexec_fn that hands ``sock`` over as systemd does: fd 3, LISTEN_FDS, LISTEN_PID."""
    placeholder = None
    try:
        os.fstat(3)
    except OSError:
        # Keep fd 3 taken in this process, so that it cannot be subprocess's error pipe.
        placeholder = os.dup2(sock.fileno(), 3, inheritable=False)
    fileno = sock.fileno()

    def setup() -> None:
        os.dup2(fileno, 3, inheritable=True)
        os.environ["LISTEN_FDS"] = "1"
        os.environ["LISTEN_PID"] = str(os.getpid())

    try:
        yield setup
    finally:
        if placeholder is not None:
            os.close(placeholder)


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_systemd_socket_activation_serves_on_the_inherited_socket_and_leaves_it_in_place(
    start_server: Start, tmp_path: Path, family: str
) -> None:
    with listening_socket(family, tmp_path) as (sock, address), systemd_handover(sock) as handover:
        # A client that connects before the server runs is queued by the kernel.
        early = RawConnection(address, timeout=15)
        early.send(get("/hello"))
        ignored = tmp_path / "bind-is-ignored.sock"
        server = start_server(
            "apps:app",
            "--workers",
            "2",
            bind=f"unix:{ignored}",
            pass_fds=(3,),
            preexec_fn=handover,
        )
        wait_workers(server, 2)
        assert "Using 1 socket(s) from systemd (LISTEN_FDS)" in server.stderr
        assert server.address == address
        assert not ignored.exists()
        response = early.read_response()
        assert (response.status, response.body) == (200, b"Hello, world!")
        early.close()
        for _ in range(10):
            assert fetch(address) == (200, b"Hello, world!")
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        # The socket belongs to systemd: it outlives the server and still queues clients.
        if family == "unix":
            assert Path(str(address)).exists(), "the master removed systemd's unix socket"
        with RawConnection(address, timeout=5) as queued:
            queued.send(get("/hello"))


def _claim_socket_activation_without_a_socket() -> None:
    os.environ["LISTEN_FDS"] = "1"  # fd 3 is closed in the child (close_fds)
    os.environ["LISTEN_PID"] = str(os.getpid())


def test_socket_activation_variables_without_a_socket_fail_with_a_one_line_error(
    start_server: Start, tmp_path: Path
) -> None:
    server = start_server(
        "apps:app",
        bind=f"unix:{tmp_path / 'unused.sock'}",
        preexec_fn=_claim_socket_activation_without_a_socket,
        wait=False,
    )
    assert server.wait(timeout=15) == 5, server.stderr  # ExitCode.BIND
    assert "Traceback" not in server.stderr, server.stderr
    assert "fd" in server.stderr


# --------------------------------------------------------------------- orphaned workers


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_workers_stop_by_themselves_when_the_master_is_killed(start_server: Start, preload: bool) -> None:
    server = start_server("apps:app", "--workers", "2", *(["--preload"] if preload else []))
    wait_workers(server, 2)
    children = server.worker_pids  # the workers, and the zygote with --preload
    server.proc.kill()
    server.proc.wait(timeout=5)
    try:
        assert wait_until(lambda: all(process_gone(pid) for pid in children), 10), [
            pid for pid in children if not process_gone(pid)
        ]
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                if not process_gone(pid):
                    os.kill(pid, signal.SIGKILL)
