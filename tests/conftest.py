"""Shared fixtures: a real rapidwsgi server in a subprocess, on port 0 or a unix socket.

By default the tests exercise the *installed* rapidwsgi (compiled with mypyc when a
compiler was available at install time). ``RAPIDWSGI_TEST_SOURCE=1`` runs them against
the pure-Python sources in ``src/`` instead; ``make test`` does both.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.rawhttp import ServerPool

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
SOURCE_MODE = os.environ.get("RAPIDWSGI_TEST_SOURCE") == "1"
#: The source tree source mode tests (``make asan`` points it at a copy with a C path
#: built under AddressSanitizer).
SRC = Path(os.environ.get("RAPIDWSGI_TEST_SRC") or ROOT / "src").resolve()
if SOURCE_MODE:
    sys.path.insert(0, str(SRC))
_SERVING = re.compile(r"Worker \d+ serving")
_LISTENING = re.compile(r"Listening at: (https?://\[?([^\]\s]+?)\]?:(\d+)|unix:(\S+)) \(")


def _child_setup(env: dict[str, str], hook: Callable[[], None]) -> None:
    os.environ.clear()
    os.environ.update(env)
    hook()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def upstream_connections(server: ServerProcess) -> set[int]:
    """Socket inodes of the connections rapidwsgi's workers have accepted and hold open."""
    held = set()
    for pid in server.worker_pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                held.add(int(target[8:-1]))
    accepted = set()
    address = server.address
    if isinstance(address, str):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode Path; St 03 = connected
            if len(fields) >= 8 and fields[7] == address and fields[5] == "03":
                accepted.add(int(fields[6]))
    else:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == address[1] and fields[3] == "01":  # ESTABLISHED
                accepted.add(int(fields[9]))
    return held & accepted


class ServerProcess:
    """``python -m rapidwsgi ...`` with stderr captured; knows where it listens."""

    def __init__(
        self,
        app: str,
        *args: str,
        bind: str | None = "127.0.0.1:0",
        cwd: Path = TESTS,
        env: dict[str, str] | None = None,
        wait: bool = True,
        listeners: int = 1,
        pass_fds: tuple[int, ...] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        cmd = [sys.executable, "-m", "rapidwsgi"]
        if bind is not None:
            cmd += ["--bind", bind]
        cmd += [*args, app]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        paths = [str(TESTS), str(SRC) if SOURCE_MODE else "", full_env.get("PYTHONPATH", "")]
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.cmd = cmd
        # A preexec_fn may set variables that depend on the child (systemd's LISTEN_PID):
        # the environment is then installed in the child, just before the hook runs.
        child_setup = None if preexec_fn is None else functools.partial(_child_setup, full_env, preexec_fn)
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=full_env if child_setup is None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
            preexec_fn=child_setup,  # noqa: PLW1509 - only the systemd tests pass one
        )
        self._stderr: list[str] = []
        self._stdout: list[str] = []
        self._lock = threading.Lock()
        self.addresses: list[tuple[str, int] | str] = []
        self._listening = threading.Event()
        self._expected = listeners
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout), daemon=True).start()
        if wait:
            self.wait_listening()

    def _pump(self, stream: object, sink: list[str]) -> None:
        assert stream is not None
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", "replace")
            with self._lock:
                sink.append(line)
            m = _LISTENING.search(line)
            if m and sink is self._stderr:
                if m.group(4):
                    self.addresses.append(m.group(4))
                else:
                    self.addresses.append((m.group(2), int(m.group(3))))
                if len(self.addresses) >= self._expected:
                    self._listening.set()

    def wait_listening(self, timeout: float = 15.0) -> None:
        """Wait until the master listens and a worker serves."""
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05) or not _SERVING.search(self.stderr):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                exit_code = self.proc.poll()
                if exit_code is None:
                    # Too slow (a loaded machine): nobody holds this server any more, so
                    # it is stopped here, the master by its PID, or it outlives the run.
                    self.proc.terminate()  # the master stops its workers
                    try:
                        self.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(5)
                raise RuntimeError(f"server did not start (exit {exit_code}):\n{self.stderr}")

    @property
    def worker_pids(self) -> list[int]:
        """The master's child processes (its workers), as the kernel lists them."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    @property
    def worker_pid(self) -> int:
        """The PID of the only worker (waits briefly for it to exist)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.worker_pids
            if len(pids) == 1:
                return pids[0]
            time.sleep(0.05)
        raise AssertionError(f"expected one worker, found {self.worker_pids}")

    @property
    def address(self) -> tuple[str, int] | str:
        return self.addresses[0]

    @property
    def port(self) -> int:
        addr = self.address
        assert isinstance(addr, tuple)
        return addr[1]

    @property
    def url(self) -> str:
        addr = self.address
        assert isinstance(addr, tuple)
        host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        return f"http://{host}:{addr[1]}"

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._stderr)

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self._stdout)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, stream: str = "stderr") -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            m = regex.search(self.stderr if stream == "stderr" else self.stdout)
            if m:
                return m
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not found in {stream}:\n{self.stderr}")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def start_server() -> Iterator[type[ServerProcess]]:
    """Factory fixture: ``start_server("apps:echo", "--threads", "4")``; stopped after the test."""
    started: list[ServerProcess] = []

    class _Tracked(ServerProcess):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield _Tracked
    for server in started:
        with contextlib.suppress(Exception):
            server.stop(timeout=10)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    """Servers shared by the tests of one module (:class:`tests.rawhttp.ServerPool`)."""
    from tests.rawhttp import ServerPool  # rawhttp is a plain helper module, not a plugin

    servers = ServerPool(ServerProcess, tmp_path_factory.mktemp("sockets"))
    yield servers
    servers.stop_all()


@pytest.fixture
def servers_survive(pool: ServerPool) -> Iterator[None]:
    """Fails the test after which a pooled server was found dead (the test killed it).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("servers_survive")``."""
    yield
    dead = pool.take_dead()
    assert not dead, "a server process died during this test:\n" + "\n".join(dead)


@pytest.fixture(params=["inline", "threaded"])
def mode(request: pytest.FixtureRequest) -> str:
    """The dispatch mode of a server test (``tests.rawhttp.SERVER_MODES``)."""
    return str(request.param)


@pytest.fixture(params=["tcp", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    """Where a server test's server listens."""
    return str(request.param)
