"""Resident memory of a rapidwsgi server: the master and each worker, idle and after load.

``make bench-rss`` (or ``python bench/rss.py [--python PATH]``) starts
``rapidwsgi --workers 2`` on loopback for each application (the bundled demo and
bench/apps/hello.py), reads ``VmRSS`` from ``/proc/PID/status`` of the master and of its
two workers once they all serve (idle), runs ``wrk -t1 -c50 -d5s`` against it, reads them
again (after load), stops the server by its PID and prints one table. For scale it also
prints the bare interpreter (``python -c`` that only sleeps) and the interpreter with the
modules the master imports. Standard library only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from common import children, rss_kib

BENCH_DIR = Path(__file__).resolve().parent
APPS_DIR = BENCH_DIR / "apps"
#: (label, application, more arguments) measured.
SCENARIOS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("demo", "rapidwsgi.demo:app", ()),
    ("hello", "hello:app", ()),
    ("hello --preload", "hello:app", ("--preload",)),
)
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+) \(")
_SERVING = re.compile(r"Worker (\d+) serving")
_ZYGOTE = re.compile(r"Preloading the application in zygote (\d+)")
#: What the master process imports once it supervises (python -c rows below).
MASTER_IMPORTS = "import rapidwsgi.cli, rapidwsgi.supervisor"


def memory_kib(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, USS) of ``pid`` in KiB, from ``/proc/PID/smaps_rollup``.

    RSS counts every resident page the process maps, shared or not; PSS divides each
    shared page by the number of processes that map it; USS (private clean + dirty) is
    what the process alone holds: what ending it would free.
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return fields["Rss"], fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


class Server:
    """``python -m rapidwsgi --workers 2 APP`` on 127.0.0.1, port chosen by the kernel."""

    def __init__(self, python: str, app: str, more: Sequence[str] = (), timeout: float = 30.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(APPS_DIR)}
        cmd = [python, "-m", "rapidwsgi", "--bind", "127.0.0.1:0", "--workers", "2", *more, app]
        expected = 3 if "--preload" in more else 2  # the workers (and the zygote)
        self.proc = subprocess.Popen(
            cmd, cwd=APPS_DIR, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.log: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            listening = _LISTENING.search(text)
            serving = set(_SERVING.findall(text))
            if listening and len(serving) >= 2 and len(children(self.proc.pid)) == expected:
                self.port = int(listening.group(1))
                zygote = _ZYGOTE.search(text)
                self.zygote = int(zygote.group(1)) if zygote else 0
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{app}: the server did not start:\n{text}")
            time.sleep(0.05)

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            with self._lock:
                self.log.append(raw.decode("utf-8", "replace"))

    def text(self) -> str:
        with self._lock:
            return "".join(self.log)

    def sample(self) -> list[tuple[str, tuple[int, int, int]]]:
        """(RSS, PSS, USS) in KiB of the master, each worker (and the zygote)."""
        named = [("master", memory_kib(self.proc.pid))]
        workers = [pid for pid in children(self.proc.pid) if pid != self.zygote]
        named += [(f"worker {i + 1}", memory_kib(pid)) for i, pid in enumerate(workers)]
        if self.zygote:
            named.append(("zygote", memory_kib(self.zygote)))
        return named

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the master stops its workers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def load(port: int, seconds: int) -> str:
    """wrk's requests/s line (the load only has to touch the request path)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench/rss.py: wrk is not installed")
    url = f"http://127.0.0.1:{port}/"
    out = subprocess.run(
        [wrk, "-t1", "-c50", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    return match.group(1) if match else "?"


def interpreter_kib(python: str, code: str) -> int:
    """VmRSS of ``python -c CODE`` once it has run ``code`` (it then waits on stdin)."""
    proc = subprocess.Popen(
        [python, "-c", f"{code}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{python} -c {code!r} failed")
        return rss_kib([proc.pid])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--python", default=sys.executable, help="the interpreter rapidwsgi is installed in")
    parser.add_argument("--seconds", type=int, default=5, help="wrk's duration (default 5)")
    args = parser.parse_args(argv)
    args.python = os.path.abspath(args.python) if os.sep in args.python else args.python
    header = f"{'':28} {'process':8} {'RSS':>6} {'PSS':>6} {'USS':>6} {'req/s':>9}"
    lines = [
        f"{'bare interpreter':28} {'':8} {mib(interpreter_kib(args.python, 'pass')):>6}",
        f"{'+ the master imports':28} {'':8} {mib(interpreter_kib(args.python, MASTER_IMPORTS)):>6}",
    ]
    for label, app, more in SCENARIOS:
        server = Server(args.python, app, more)
        try:
            idle = server.sample()
            rate = load(server.port, args.seconds)
            loaded = server.sample()
        finally:
            server.stop()
        for when, named, rps in (("idle", idle, ""), ("after load", loaded, rate)):
            for i, (name, (rss, pss, uss)) in enumerate(named):
                title = f"{label}, {when}" if i == 0 else ""
                shown = rps if i == 0 else ""
                lines.append(f"{title:28} {name:8} {mib(rss):>6} {mib(pss):>6} {mib(uss):>6} {shown:>9}")
    load_text = f"wrk -t1 -c50 -d{args.seconds}s"
    print(f"rapidwsgi memory (MiB), {args.python}, {os.cpu_count()} CPUs, --workers 2, {load_text}")
    print(header)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
