"""The pieces of the multi-host test bed: network namespaces, PostgreSQL, the rapidwsgi
hosts and the two balancers. Everything it creates is private to one run and removed
at the end (``Bed.close``): namespaces named ``rwc<PID>h<N>``, veth pairs in a /24 per
host of 10.<200 + PID % 50>.0.0/16, a PostgreSQL cluster in a temporary directory on
its Unix socket only (no TCP listener), HAProxy and nginx on 127.0.0.1. No traffic
leaves the machine: the hosts' only link is their veth pair to the root namespace.

Runs as root (``ip netns``, ``tc``; PostgreSQL itself runs as the ``postgres`` user).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP_SOURCE = HERE / "app" / "clusterapp"
PORT = 8000
#: rapidwsgi's settings on every host. --shutdown-delay 2: longer than HAProxy needs to
#: see the health path's 503 (fall 2 x inter 0.5 s), so no request reaches a draining
#: host (docs/scaling.md has the arithmetic).
HOST_ARGS = (
    "--workers",
    "2",
    "--health-path",
    "/healthz",
    "--shutdown-delay",
    "2",
    "--graceful-timeout",
    "10",
)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A set-up command, its output captured (shown if it fails)."""
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it is true; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def http_status(address: tuple[str, int], path: str, timeout: float = 1.0) -> int:
    """The status of one GET, or 0 if no answer (a one-shot probe used while setting up)."""
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bed\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on a Unix socket in ``root``."""

    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def start(self) -> None:
        bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bindir:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        bin_ = Path(bindir[-1])
        data = self.root / "data"
        self.root.mkdir(parents=True)
        self.socket_dir.mkdir()
        shutil.chown(self.root, "postgres", "postgres")
        shutil.chown(self.socket_dir, "postgres", "postgres")
        as_pg = ("runuser", "-u", "postgres", "--")
        run(*as_pg, str(bin_ / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        # fsync off: a test database that dies with the run; the rows are still
        # committed and read back by the same server, which is what is counted.
        argv = [*as_pg, str(bin_ / "postgres"), "-D", str(data), "-k", str(self.socket_dir)]
        argv += ["-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=200"]
        log = (self.root / "postgres.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for((self.socket_dir / ".s.PGSQL.5432").exists, 30, "PostgreSQL")
        wait_for(lambda: self.psql("SELECT 1", db="postgres", check=False) == "1", 30, "PostgreSQL to accept")
        self.psql("CREATE DATABASE cluster", db="postgres")
        self.psql("CREATE TABLE items (id bigserial PRIMARY KEY, token uuid NOT NULL, host text NOT NULL)")

    def psql(self, sql: str, db: str = "cluster", check: bool = True) -> str:
        done = run("psql", "-h", str(self.socket_dir), "-U", "postgres", "-d", db, "-tAc", sql, check=check)
        return done.stdout.strip()

    def rows_by_token(self) -> dict[str, int]:
        out = self.psql("SELECT token, count(*) FROM items GROUP BY token")
        counts: dict[str, int] = {}
        for line in out.splitlines():
            token, count = line.split("|")
            counts[token] = int(count)
        return counts

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Host:
    """One rapidwsgi "machine": a network namespace, its veth pair, its own copy of the
    application (so that a rolling upgrade changes one host at a time), a master."""

    index: int
    tag: str
    subnet: str
    root: Path
    python: str
    pg: Postgres
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    starts: int = 0

    def __post_init__(self) -> None:
        self.log_path = self.root / f"h{self.index}.log"

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def netns(self) -> str:
        return f"{self.tag}h{self.index}"

    @property
    def veth(self) -> str:
        """The root namespace's end of the pair (the "switch port")."""
        return f"{self.tag}v{self.index}"

    @property
    def address(self) -> str:
        return f"{self.subnet}.{self.index}.2"

    @property
    def app_dir(self) -> Path:
        return self.root / self.name

    def create(self) -> None:
        peer = f"{self.tag}p{self.index}"
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", peer, "netns", self.netns)
        run("ip", "addr", "add", f"{self.subnet}.{self.index}.1/24", "dev", self.veth)
        run("ip", "link", "set", self.veth, "up")
        inside = ("ip", "netns", "exec", self.netns)
        run(*inside, "ip", "addr", "add", f"{self.address}/24", "dev", peer)
        run(*inside, "ip", "link", "set", peer, "up")
        run(*inside, "ip", "link", "set", "lo", "up")
        shutil.copytree(APP_SOURCE, self.app_dir / "clusterapp", ignore=shutil.ignore_patterns("__pycache__"))

    def set_version(self, version: str) -> None:
        target = self.app_dir / "clusterapp" / "version.py"
        target.write_text(f'VERSION = "{version}"\n')

    def start(self) -> None:
        """Start the master in the namespace; returns once the health path answers 200."""
        argv = ["ip", "netns", "exec", self.netns, self.python, "-m", "rapidwsgi"]
        argv += ["--bind", f"{self.address}:{PORT}", "--chdir", str(self.app_dir), *HOST_ARGS]
        argv.append("clusterapp.wsgi:application")
        env = dict(os.environ)
        env.update(
            CLUSTER_HOST=self.name,
            CLUSTER_PG_SOCKET_DIR=str(self.pg.socket_dir),
            PYTHONDONTWRITEBYTECODE="1",  # a changed version.py is always re-read
        )
        log = self.log_path.open("ab")
        # `ip netns exec` execs the command: the PID is the master's.
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        self.starts += 1
        wait_for(
            lambda: self.health() == 200 or self.proc is None or self.proc.poll() is not None, 60, self.name
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start:\n{self.log()[-2000:]}")

    def health(self) -> int:
        """The health path's status as seen from the root namespace (0: no answer)."""
        return http_status((self.address, PORT), "/healthz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """SIGKILL every process in the namespace at once: the machine died."""
        out = run("ip", "netns", "pids", self.netns, check=False).stdout.split()
        for pid in out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def link(self, up: bool) -> None:
        run("ip", "link", "set", self.veth, "up" if up else "down")

    def delay(self, ms: int | None) -> str:
        """Slow this host's link (the root namespace's end: the answers leave through
        it): tc netem ``delay`` where the kernel has netem; else (a kernel built
        without sch_netem, like this VM's) a token bucket of 256 kbit/s that lets a
        packet wait up to ``ms`` in its queue: a congested link rather than a long one.
        None: remove it. Returns what was applied."""
        if ms is None:
            run("tc", "qdisc", "del", "dev", self.veth, "root", check=False)
            return ""
        netem = run("tc", "qdisc", "add", "dev", self.veth, "root", "netem", "delay", f"{ms}ms", check=False)
        if netem.returncode == 0:
            return f"netem delay {ms}ms"
        tbf = ("tbf", "rate", "256kbit", "burst", "4kb", "latency", f"{ms}ms")
        run("tc", "qdisc", "add", "dev", self.veth, "root", *tbf)
        return "tc " + " ".join(tbf) + " (no netem in this kernel)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_all()

    def destroy(self) -> None:
        self.stop()
        run("ip", "netns", "del", self.netns, check=False)
        run("ip", "link", "del", self.veth, check=False)


class Balancer:
    """HAProxy or nginx on 127.0.0.1:``port`` in front of the hosts."""

    name = ""

    def __init__(self, root: Path, hosts: list[Host], port: int) -> None:
        self.root = root / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.hosts = hosts
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        raise NotImplementedError

    def argv(self, conf: Path) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        conf = self.root / f"{self.name}.conf"
        conf.write_text(self.config())
        log = (self.root / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            self.argv(conf), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        wait_for(lambda: http_status(("127.0.0.1", self.port), "/") == 200, 30, self.name)

    def up(self, host: Host) -> bool:
        """Whether the balancer would send ``host`` requests now (as far as it says)."""
        return host.health() == 200

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HAProxy(Balancer):
    """Active health checks on --health-path every 0.5 s (down after 2 failures, up after
    2 successes); a connection that fails is retried on another server (``retries``,
    ``option redispatch``); layer-7 retries (an empty or broken response, a 502/503/504)
    for idempotent requests only (``disable-l7-retry`` for the others: a POST that
    reached the application must not be applied twice)."""

    name = "haproxy"
    CHECK = "inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2"

    def config(self) -> str:
        servers = "\n".join(f"    server {h.name} {h.address}:{PORT} check" for h in self.hosts)
        return f"""global
    maxconn 4096
    stats socket {self.root}/admin.sock mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 5s
    timeout http-keep-alive 10s
    retries 3
    option redispatch 1
    retry-on all-retryable-errors

frontend site
    bind 127.0.0.1:{self.port}
    default_backend hosts

backend hosts
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    default-server {self.CHECK}
    http-request disable-l7-retry if !METH_GET !METH_HEAD
{servers}
"""

    def argv(self, conf: Path) -> list[str]:
        return ["haproxy", "-db", "-f", str(conf)]

    def up(self, host: Host) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.root / "admin.sock"))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        for line in data.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "hosts" and fields[1] == host.name:
                return fields[17] == "UP"
        return False


class Nginx(Balancer):
    """Open-source nginx has no active health checks: a host is marked failed for
    ``fail_timeout`` after ``max_fails`` errors, and a request whose connection fails
    (or times out, or gets a 502/503/504) goes to the next server — for a POST only if
    nothing was sent yet (``proxy_next_upstream`` without ``non_idempotent``)."""

    name = "nginx"

    def config(self) -> str:
        servers = "\n".join(
            f"        server {h.address}:{PORT} max_fails=1 fail_timeout=2s;" for h in self.hosts
        )
        temp = "\n".join(
            f"    {kind}_temp_path {self.root}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""user root;
worker_processes 1;
daemon off;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    upstream hosts {{
        least_conn;
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://hosts;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 5s;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""

    def argv(self, conf: Path) -> list[str]:
        return ["nginx", "-c", str(conf), "-e", str(self.root / "error.log")]


BALANCERS: dict[str, type[Balancer]] = {"haproxy": HAProxy, "nginx": Nginx}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Bed:
    """Namespaces + PostgreSQL for a whole run (created once); hosts started per
    scenario run; ``close`` removes everything, whatever state it is in."""

    def __init__(self, root: Path, python: str, hosts: int = 3) -> None:
        pid = os.getpid()
        self.root = root
        self.tag = f"rwc{pid % 100000}"
        self.subnet = f"10.{200 + pid % 50}"
        self.pg = Postgres(root / "pg")
        self.hosts = [Host(i, self.tag, self.subnet, root, python, self.pg) for i in range(1, hosts + 1)]

    def open(self) -> None:
        self.root.chmod(0o755)  # PostgreSQL runs as its own user, below this directory
        self.pg.start()
        for host in self.hosts:
            host.create()

    def reset(self) -> None:
        """Between scenario runs: empty table, every host at v1, links up, no delay."""
        self.pg.psql("TRUNCATE items")
        for host in self.hosts:
            host.stop()
            host.delay(None)
            host.link(True)
            host.set_version("v1")

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.destroy()
        self.pg.stop()
