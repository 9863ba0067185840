"""The master imports only what supervising needs (supervisor.py, docs/process.md).

A real server (``--workers 2``) with a config file whose hooks write down ``sys.modules``:
``on_exit`` in the master, just before it exits (so after it forked, reloaded and reaped
workers: everything it ever imported), and ``post_worker_init`` in each worker.

- ``--preload``: the zygote imports the serving modules (the event loop, uvloop,
  httptools, the protocol, WSGI, static and TLS modules, the loader) and the
  application; the master holds none of them, and ``/proc/PID/maps`` none of their
  shared libraries.
- Without it, the master imports the serving modules (not the application) before it
  forks, so that the workers share one copy of them (bench/rss.py: each worker would
  otherwise hold its own, about 3 MiB more per worker than the master saves).

Memory numbers belong in bench/rss.py, not here.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
from pathlib import Path

from tests.conftest import ServerProcess
from tests.rawhttp import RawConnection, get, wait_until

Start = type[ServerProcess]

HOOKS = """\
import json
import os
import pwd
import os
import sys


def _write(name):
    path = os.path.join(os.environ["MODULES_DIR"], "%s-%d.json" % (name, os.getpid()))
    with open(path + ".tmp", "w") as f:
        json.dump(sorted(sys.modules), f)
    os.rename(path + ".tmp", path)  # whole, or not there yet


def post_worker_init(worker):
    _write("worker")


def on_exit(server):
    _write("master")
"""

#: What only a worker needs: none of it may be in the master. (Not ``rapidwsgi.events``,
#: the protocol-neutral vocabulary: the settings table validates ``--protocol`` against
#: its one list of front-end names.)
SERVING_MODULES = frozenset(
    {
        "apps",  # the application (tests/apps.py)
        "asyncio",
        "uvloop",
        "httptools",
        "ssl",
        "concurrent.futures",
        "email.utils",
        "ctypes",  # (but with --preload, see below)
        "rapidwsgi.worker",
        "rapidwsgi.connection",
        "rapidwsgi.bridge",
        "rapidwsgi.wsgi",
        "rapidwsgi.static",
        "rapidwsgi.tls",
        "rapidwsgi.loader",
        "rapidwsgi.protocols",
        "rapidwsgi.protocols.http1",
        "rapidwsgi.metrics",
        "rapidwsgi.exporter",
        "rapidwsgi._cfast",
    }
)
#: Shared libraries of the serving modules, as /proc/PID/maps names them.
SERVING_LIBRARIES = ("/uvloop/", "/httptools/", "/parser/", "/_ssl.", "/_asyncio.")
#: What every worker here imports (a check that the dumps name real imports).
WORKER_MODULES = frozenset(
    {"apps", "asyncio", "uvloop", "httptools", "rapidwsgi.worker", "rapidwsgi.connection", "rapidwsgi.wsgi"}
)


def mapped_libraries(pid: int) -> set[str]:
    """The shared objects of the serving modules mapped into ``pid``, as
    ``directory/file`` (``uvloop/loop.cpython-311-....so``)."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        path = fields[5] if len(fields) >= 6 else ""
        short = "/".join(path.rsplit("/", 2)[-2:])
        if ".so" in short and any(marker in f"/{short}" for marker in SERVING_LIBRARIES):
            found.add(short)
    return found


def dumps(directory: Path, name: str) -> dict[int, list[str]]:
    return {
        int(path.stem.split("-")[1]): json.loads(path.read_text())
        for path in directory.glob(f"{name}-*.json")
    }


def start(start_server: Start, tmp_path: Path, *args: str) -> tuple[ServerProcess, Path]:
    config = tmp_path / "hooks.py"
    config.write_text(HOOKS)
    modules_dir = tmp_path / "modules"
    modules_dir.mkdir()
    server = start_server("apps:app", "-c", str(config), *args, env={"MODULES_DIR": str(modules_dir)})
    return server, modules_dir


def test_with_preload_the_master_never_imports_the_serving_modules_or_the_application(
    start_server: Start, tmp_path: Path
) -> None:
    server, modules_dir = start(start_server, tmp_path, "--workers", "2", "--preload")
    master = server.proc.pid
    assert wait_until(lambda: len(dumps(modules_dir, "worker")) == 2, 15), server.stderr
    with RawConnection(server.address) as conn:
        assert conn.request(get("/hello")).status == 200
    workers = sorted(dumps(modules_dir, "worker"))
    # While serving, neither uvloop's nor httptools' nor ssl's library is mapped in the
    # master (the workers map them: the check looks where they are).
    assert mapped_libraries(master) == set()
    in_worker = {lib.split(".")[0] for lib in mapped_libraries(workers[0])}
    assert {"uvloop/loop", "parser/parser", "lib-dynload/_asyncio"} <= in_worker, in_worker
    # A reload forks and reaps workers: still nothing of theirs in the master.
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Worker generation 2 serving", timeout=20)
    assert wait_until(lambda: len(dumps(modules_dir, "worker")) == 4, 15), server.stderr
    assert mapped_libraries(master) == set()
    assert server.stop() == 0

    master_modules = set(dumps(modules_dir, "master")[master])
    assert "rapidwsgi.supervisor" in master_modules  # the dump is the master's own
    # (ctypes makes the master the child subreaper of the zygote's workers.)
    assert sorted(master_modules & (SERVING_MODULES - {"ctypes"})) == []
    for pid, modules in dumps(modules_dir, "worker").items():
        assert pid != master
        assert sorted(WORKER_MODULES - set(modules)) == [], pid


def test_without_preload_the_master_imports_the_serving_modules_for_its_workers_but_not_the_app(
    start_server: Start, tmp_path: Path
) -> None:
    server, modules_dir = start(start_server, tmp_path, "--workers", "2")
    master = server.proc.pid
    assert wait_until(lambda: len(dumps(modules_dir, "worker")) == 2, 15), server.stderr
    in_master = {lib.split(".")[0] for lib in mapped_libraries(master)}
    assert {"uvloop/loop", "lib-dynload/_asyncio"} <= in_master, in_master
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Worker generation 2 serving", timeout=20)
    assert server.stop() == 0
    master_modules = set(dumps(modules_dir, "master")[master])
    assert sorted(WORKER_MODULES - {"apps"} - master_modules) == []
    # Neither the application nor what only an option needs (no --metrics-bind, no
    # --preload here).
    assert sorted(master_modules & {"apps", "rapidwsgi.exporter", "ctypes"}) == []


def test_with_user_and_preload_the_master_imports_the_serving_modules_before_the_switch_but_not_the_app(
    start_server: Start, tmp_path: Path
) -> None:
    """``--user``/``--group`` with ``--preload``: the serving modules (and uvloop) are imported before the
    privileges are dropped, so that the workers need not read the installation as the
    new user; the application is still imported by the workers only. (The current user
    is named, so no privilege is needed: the switch is a no-op, the import is not.)"""
    user = pwd.getpwuid(os.getuid()).pw_name
    server, modules_dir = start(start_server, tmp_path, "--workers", "1", "--preload", "--user", user)
    assert wait_until(lambda: len(dumps(modules_dir, "worker")) == 1, 15), server.stderr
    assert server.stop() == 0
    master_modules = set(dumps(modules_dir, "master")[server.proc.pid])
    assert sorted(WORKER_MODULES - {"apps"} - master_modules) == []
    assert "apps" not in master_modules
