"""Server hooks from a Python config file (hooks.py) against real servers: each hook
fires in the right process (the master's PID, or the worker's), in order, with the
arguments gunicorn gives; a hook that raises is logged and changes nothing; a gunicorn
config file works as it is."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TESTS, ServerProcess
from tests.rawhttp import RawConnection, get, wait_until

Start = type[ServerProcess]
EVERY_HOOK = str(TESTS / "hook_configs" / "every_hook.py")


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def named(path: Path, hook: str) -> list[dict[str, Any]]:
    return [r for r in records(path) if r["hook"] == hook]


@pytest.fixture
def hook_log(tmp_path: Path) -> Path:
    return tmp_path / "hooks.jsonl"


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_every_hook_fires_in_its_process_in_order_with_gunicorns_arguments(
    start_server: Start, hook_log: Path, preload: bool
) -> None:
    args = ["-c", EVERY_HOOK, *(["--preload"] if preload else [])]
    server = start_server("apps:app", *args, env={"HOOK_LOG": str(hook_log)})
    master = server.proc.pid
    first = int(server.wait_for_log(r"Worker (\d+) serving").group(1))
    with RawConnection(server.address) as conn:
        response = conn.request(get("/hello?x=1", headers="X-Trace: abc\r\n"))
        assert response.status == 200
    assert wait_until(lambda: bool(named(hook_log, "post_request")), 5.0)
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: bool(named(hook_log, "child_exit")), 15.0)
    second = int(server.wait_for_log(rf"Worker (?!{first})(\d+) serving").group(1))
    assert server.stop() == 0
    log = records(hook_log)
    order = [r["hook"] for r in log]
    assert order == [
        "on_starting",
        "when_ready",
        "pre_fork",
        "post_fork",
        "post_worker_init",
        "pre_request",
        "post_request",
        "on_reload",
        "pre_fork",
        "post_fork",
        "post_worker_init",
        "worker_exit",
        "child_exit",
        "worker_exit",
        "child_exit",
        "on_exit",
    ], order
    by = {(r["hook"], i): r for i, r in enumerate(log)}
    master_hooks = {"on_starting", "when_ready", "pre_fork", "child_exit", "on_reload", "on_exit"}
    for (hook, _), r in by.items():
        if hook in master_hooks:
            assert r["pid"] == master, (hook, r)
        else:
            assert r["pid"] in (first, second), (hook, r)
            assert r["worker_pid"] == r["pid"], (hook, r)
    assert log[0]["server_pid"] == master and log[0]["workers"] == 1
    assert (log[2]["worker_pid"], log[2]["age"]) == (None, 1)  # pre_fork: not forked yet
    assert (log[3]["pid"], log[3]["age"], log[3]["server_pid"]) == (first, 1, master)
    assert log[4]["app"] == "app"
    assert {k: log[5][k] for k in ("method", "path", "query", "uri", "version")} == {
        "method": "GET",
        "path": "/hello",
        "query": "x=1",
        "uri": "/hello?x=1",
        "version": [1, 1],
    }
    assert ["X-TRACE", "abc"] in log[5]["headers"]
    assert {k: log[6][k] for k in ("path", "environ_path", "status", "status_code", "sent")} == {
        "path": "/hello",
        "environ_path": "/hello",
        "status": "200 OK",
        "status_code": 200,
        "sent": len(response.body),
    }
    assert log[6]["content_type"] == response.header("content-type")
    assert (log[8]["age"], log[9]["pid"]) == (2, second)
    # The reload's first child_exit is the old worker's, exit code 0; then the new one's.
    assert (log[12]["worker_pid"], log[12]["exit_code"]) == (first, 0)
    assert (log[14]["worker_pid"], log[14]["exit_code"]) == (second, 0)
    assert log[11]["pid"] == first and log[13]["pid"] == second


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One server's life with every hook: boot, a request, a SIGHUP, a stop (shared by
    the per-hook tests below)."""
    hook_log = tmp_path_factory.mktemp("hooks") / "hooks.jsonl"
    server = ServerProcess("apps:app", "-c", EVERY_HOOK, env={"HOOK_LOG": str(hook_log)})
    try:
        first = int(server.wait_for_log(r"Worker (\d+) serving").group(1))
        with RawConnection(server.address) as conn:
            body = conn.request(get("/hello?x=1")).body
        assert wait_until(lambda: bool(named(hook_log, "post_request")), 5.0)
        server.signal(signal.SIGHUP)
        assert wait_until(lambda: bool(named(hook_log, "child_exit")), 15.0)
        second = int(server.wait_for_log(rf"Worker (?!{first})(\d+) serving").group(1))
    finally:
        code = server.stop()
    return {
        "code": code,
        "master": server.proc.pid,
        "first": first,
        "second": second,
        "body": body,
        "log": records(hook_log),
    }


MASTER_HOOKS = ("on_starting", "when_ready", "pre_fork", "child_exit", "on_reload", "on_exit")
#: Each hook: how many times it fires in that life, and in which process(es).
EXPECTED = {
    "on_starting": (1, "master"),
    "when_ready": (1, "master"),
    "pre_fork": (2, "master"),
    "post_fork": (2, "workers"),
    "post_worker_init": (2, "workers"),
    "pre_request": (1, "first"),
    "post_request": (1, "first"),
    "worker_exit": (2, "workers"),
    "child_exit": (2, "master"),
    "on_reload": (1, "master"),
    "on_exit": (1, "master"),
}


@pytest.mark.parametrize("hook", list(EXPECTED))
def test_each_hook_fires_its_number_of_times_in_its_process(lifecycle: dict[str, Any], hook: str) -> None:
    from rapidwsgi.hooks import HOOKS

    assert set(EXPECTED) == set(HOOKS)
    assert lifecycle["code"] == 0
    fired = [r for r in lifecycle["log"] if r["hook"] == hook]
    count, where = EXPECTED[hook]
    assert len(fired) == count, fired
    pids = {
        "master": [lifecycle["master"]] * count,
        "workers": [lifecycle["first"], lifecycle["second"]],
        "first": [lifecycle["first"]],
    }[where]
    if hook in ("worker_exit",):
        pids = [lifecycle["first"], lifecycle["second"]]  # the old one at the reload, then the new one
    assert [r["pid"] for r in fired] == pids
    if hook in MASTER_HOOKS and "server_pid" in fired[0]:
        assert fired[0]["server_pid"] == lifecycle["master"]
    if hook == "child_exit":
        assert [(r["worker_pid"], r["exit_code"]) for r in fired] == [
            (lifecycle["first"], 0),
            (lifecycle["second"], 0),
        ]
    if hook == "pre_fork":
        assert [(r["worker_pid"], r["age"]) for r in fired] == [(None, 1), (None, 2)]
    if hook == "post_fork":
        assert [r["age"] for r in fired] == [1, 2]


def test_a_hook_that_raises_is_logged_and_the_request_and_server_go_on(
    start_server: Start, hook_log: Path
) -> None:
    server = start_server("apps:app", "-c", EVERY_HOOK, env={"HOOK_LOG": str(hook_log)})
    with RawConnection(server.address) as conn:
        assert conn.request(get("/hook-raises")).status == 404
        assert conn.request(get("/hello")).status == 200
    log = server.stderr
    assert re.search(
        r"\[ERROR\] The pre_request hook failed\nTraceback .*RuntimeError: the pre_request hook's own error",
        log,
        re.S,
    )
    # (post_request runs once the response is written: the client may see it first)
    assert wait_until(lambda: len(named(hook_log, "post_request")) == 2, 5.0)


def test_a_crashing_master_hook_never_stops_the_master(start_server: Start, tmp_path: Path) -> None:
    config = tmp_path / "crash.py"
    config.write_text(
        "def on_starting(server):\n    raise ValueError('on_starting broke')\n"
        "def pre_fork(server, worker):\n    1 / 0\n"
        "def child_exit(server, worker):\n    raise KeyError('child_exit broke')\n"
    )
    server = start_server("apps:app", "-c", str(config))
    pid = server.worker_pid
    with RawConnection(server.address) as conn:
        assert conn.request(get("/hello")).status == 200
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: bool(server.worker_pids) and pid not in server.worker_pids, 15.0)
    with RawConnection(server.address) as conn:
        assert conn.request(get("/hello")).status == 200
    assert server.stop() == 0
    log = server.stderr
    assert "The on_starting hook failed" in log and "ValueError: on_starting broke" in log
    assert log.count("The pre_fork hook failed") == 2 and "ZeroDivisionError" in log
    assert "The child_exit hook failed" in log and "KeyError: 'child_exit broke'" in log


def test_a_non_function_hook_is_a_config_error(start_server: Start, tmp_path: Path) -> None:
    config = tmp_path / "bad.py"
    config.write_text("post_fork = 'not a function'\n")
    server = start_server("apps:app", "-c", str(config), wait=False)
    assert server.wait() == 2
    assert "rapidwsgi: error: hook 'post_fork': expected a function, got 'not a function'" in server.stderr


def test_a_gunicorn_config_file_with_hooks_works_unchanged(start_server: Start, hook_log: Path) -> None:
    server = start_server(
        "apps:app", "-c", str(TESTS / "hook_configs" / "gunicorn_conf.py"), env={"HOOK_LOG": str(hook_log)}
    )
    # Both workers serving (a worker stopped while it still imports the application is
    # ended by the signal, without worker_exit: docs/process.md, Server hooks).
    assert wait_until(lambda: len(re.findall(r"Worker \d+ serving", server.stderr)) == 2, 10.0)
    with RawConnection(server.address) as conn:
        assert conn.request(get("/hello")).status == 200
    pids = sorted(server.worker_pids)
    assert server.stop() == 0
    log = server.stderr
    assert "Server is ready. Spawning workers (2)" in log
    spawned = sorted(int(p) for p in re.findall(r"Worker spawned \(pid: (\d+), age \d\)", log))
    assert spawned == pids
    assert "[INFO] GET /hello" in log and "[INFO] done GET /hello -> 200 OK" in log
    assert sorted(int(p) for p in re.findall(r"Worker exiting \(pid: (\d+)\)", log)) == pids
    assert sorted(int(line.split()[1]) for line in hook_log.read_text().splitlines()) == pids
    # threads = 2 came from the file: the workers run the application on threads.
    assert "2 application threads" in log
