"""Real front-ends (Apache httpd, HAProxy, Caddy, lighttpd) in front of rapidwsgi.

Each :class:`Frontend` subclass starts its binary (never the system service) in the
foreground with a configuration generated under a temporary prefix, listening on a free
127.0.0.1 port. The configuration is the file shipped in ``deploy/<front-end>/`` itself:
only the listening port, the address of rapidwsgi (the shipped files say
``/run/rapidwsgi/*.sock``, ``127.0.0.1:8000``/``3031``/``9000``) and what a test
process needs around it (pid file, logs, modules, a document root) are replaced or
added, so what the tests run is what users copy.

:data:`MODES` lists every (front-end, mode) pair with the rapidwsgi flags it is shipped
for. :meth:`Frontend.stop` sends SIGTERM, then SIGKILL, to the one process it started,
by PID; Apache's children follow their parent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

BINARIES = {
    "apache": "/usr/sbin/apache2",
    "haproxy": shutil.which("haproxy") or "/usr/sbin/haproxy",
    "caddy": shutil.which("caddy") or "/usr/bin/caddy",
    "lighttpd": shutil.which("lighttpd") or "/usr/sbin/lighttpd",
}
APACHE_MODULES = Path("/usr/lib/apache2/modules")


def frontend_available(name: str) -> bool:
    binary = BINARIES[name]
    return os.path.isfile(binary) and os.access(binary, os.X_OK)


def require_frontend(name: str) -> None:
    """Skip the calling test when front-end ``name`` is not installed; fail instead under
    CI (``RAPIDWSGI_REQUIRE_FRONTENDS=1``, set by ``.ci/run``, which installs them)."""
    if not frontend_available(name):
        if os.environ.get("RAPIDWSGI_REQUIRE_FRONTENDS") == "1":
            pytest.fail(f"{name} is required here but not installed ({BINARIES[name]})")
        pytest.skip(f"{name} is not installed ({BINARIES[name]})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Mode:
    """One way a front-end talks to rapidwsgi, as shipped in ``deploy/<frontend>/<config>``."""

    frontend: str
    name: str
    config: str
    protocol: str  # rapidwsgi's --protocol
    transport: str  # "unix" or "tcp": where rapidwsgi listens
    server_args: tuple[str, ...] = ()
    reuses: bool = False  # the front-end keeps connections to rapidwsgi open and reuses them

    @property
    def id(self) -> str:
        return f"{self.frontend}-{self.name}"

    @property
    def gateway(self) -> bool:
        """The request arrives as CGI variables (uwsgi, FastCGI), not as HTTP."""
        return self.protocol != "http"


TRUST_UNIX = ("--forwarded-allow-ips", "unix")
MODES = (
    Mode("apache", "http", "proxy.conf", "http", "unix", TRUST_UNIX, reuses=True),
    Mode("apache", "uwsgi", "uwsgi.conf", "uwsgi", "tcp"),
    Mode("apache", "fcgi", "fastcgi.conf", "fastcgi", "tcp", reuses=True),
    Mode("apache", "fcgi-unix", "fastcgi-unix.conf", "fastcgi", "unix"),
    Mode("haproxy", "http", "proxy.cfg", "http", "unix", TRUST_UNIX, reuses=True),
    Mode("haproxy", "http-close", "proxy-close.cfg", "http", "unix", TRUST_UNIX),
    Mode("haproxy", "proxy-v2", "proxy-protocol.cfg", "http", "tcp", ("--proxy-protocol",), reuses=True),
    Mode("haproxy", "fcgi", "fastcgi.cfg", "fastcgi", "tcp", reuses=True),
    Mode("caddy", "http", "proxy.Caddyfile", "http", "unix", TRUST_UNIX, reuses=True),
    Mode("caddy", "fcgi", "fastcgi.Caddyfile", "fastcgi", "tcp"),
    Mode("lighttpd", "fcgi", "fastcgi.conf", "fastcgi", "tcp"),
    Mode("lighttpd", "http", "proxy.conf", "http", "unix", TRUST_UNIX),
)
MODES_BY_ID = {mode.id: mode for mode in MODES}

# The addresses of rapidwsgi that the shipped files name (on lines that are no comment).
_CODE_LINE = r"(?m)^(?!\s*#)([^\n]*?)"
_SHIPPED_SOCKET = re.compile(_CODE_LINE + r"/run/rapidwsgi/\w+\.sock")
_SHIPPED_TCP = re.compile(_CODE_LINE + r"127\.0\.0\.1:(?:8000|3031|9000)\b")
_SHIPPED_LIGHTTPD_TCP = re.compile(_CODE_LINE + r'"host" => "127\.0\.0\.1",(\s*)"port" => 9000,')


def _upstream_into(text: str, upstream: tuple[str, int] | str, source: Path) -> str:
    """``text`` with the shipped address of rapidwsgi replaced by ``upstream``."""
    if isinstance(upstream, str):
        new, count = _SHIPPED_SOCKET.subn(lambda m: m.group(1) + upstream, text)
    else:
        host, port = upstream
        new, count = _SHIPPED_TCP.subn(lambda m: f"{m.group(1)}{host}:{port}", text)
        if count == 0:
            new, count = _SHIPPED_LIGHTTPD_TCP.subn(
                lambda m: f'{m.group(1)}"host" => "{host}",{m.group(2)}"port" => {port},', text
            )
    if count != 1:
        raise ValueError(f"{source}: expected one address of rapidwsgi to replace, found {count}")
    return new


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


class Frontend:
    """One front-end process started by the tests; see the module docstring."""

    name: ClassVar[str]
    # Lines of its log that complain about rapidwsgi (a bad or missing reply).
    complaint: ClassVar[re.Pattern[str]]

    def __init__(
        self,
        prefix: Path,
        mode: Mode,
        upstream: tuple[str, int] | str,
        *,
        mount: str = "",
        start_timeout: float = 15.0,
    ) -> None:
        require_frontend(mode.frontend)
        self.prefix = prefix
        self.mode = mode
        self.upstream = upstream
        self.mount = mount  # "/app": route only that prefix to rapidwsgi (gateway tests)
        self.proc: subprocess.Popen[bytes] | None = None
        prefix.mkdir(parents=True, exist_ok=True)
        prefix.chmod(0o755)
        self.log_path = prefix / "frontend.log"  # its stdout and stderr
        self.source = DEPLOY / mode.frontend / mode.config
        last = ""
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            self.conf_path = self.write_config(_upstream_into(self.source.read_text(), upstream, self.source))
            if self._start(start_timeout):
                return
            last = self.log
            self.stop()
        raise RuntimeError(f"{mode.id} did not start:\n{last}")

    # -- per front-end

    def write_config(self, shipped: str) -> Path:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def extra_logs(self) -> list[Path]:
        return []

    # -- common

    def _start(self, timeout: float) -> bool:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.prefix,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._answers():
                return True
            time.sleep(0.05)
        return False

    def _answers(self) -> bool:
        """The front-end answers an HTTP request on its port (whatever the status)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return sock.recv(16).startswith(b"HTTP/1.")
        except OSError:
            return False

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> str:
        text = ""
        for path in (self.log_path, *self.extra_logs()):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return text

    def log_mark(self) -> dict[Path, int]:
        marks = {}
        for path in (self.log_path, *self.extra_logs()):
            try:
                marks[path] = path.stat().st_size
            except OSError:
                marks[path] = 0
        return marks

    def complaints_since(self, mark: dict[Path, int]) -> list[str]:
        """Log lines written since ``mark`` that complain about rapidwsgi."""
        found = []
        for path, offset in mark.items():
            try:
                with path.open("rb") as fp:
                    fp.seek(offset)
                    new = fp.read().decode(errors="replace")
            except OSError:
                continue
            found += [line for line in new.splitlines() if self.complaint.search(line)]
        return found

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL: only the process started here."""
        proc = self.proc
        if proc is None:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        self.proc = None


class Apache(Frontend):
    """``apache2 -DFOREGROUND`` with mpm_event (one child process); its children run as
    www-data (Apache refuses to run them as root), so unix sockets must be reachable."""

    name = "apache"
    complaint = re.compile(
        r"\[(proxy\w*|core|mpm_event):(warn|error|crit|alert|emerg)\]|AH0\d+: .*(error|fail)"
    )

    def write_config(self, shipped: str) -> Path:
        modules = re.search(r"^# Modules: (.+?)(?:\s{2,}|\(|$)", shipped, re.M)
        assert modules is not None, f"{self.source}: no '# Modules:' line"
        needed = ["mpm_event", "authz_core", *modules.group(1).split()]
        loads = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in dict.fromkeys(needed))
        found = re.search(r"^<VirtualHost \*:80>\n(.*?)^</VirtualHost>", shipped, re.M | re.S)
        assert found is not None, f"{self.source}: no <VirtualHost *:80>"
        site = found.group(1)
        if self.mount:
            site, count = re.subn(
                r"^(\s*ProxyPass) / (\S+?)/( |$)", rf"\1 {self.mount}/ \2{self.mount}/\3", site, flags=re.M
            )
            assert count == 1, site
        user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
        conf = f"""
ServerRoot {self.prefix}
DefaultRuntimeDir {self.prefix}
PidFile {self.prefix}/apache.pid
ErrorLog {self.prefix}/error.log
LogLevel warn
{user}
{loads}
Listen 127.0.0.1:{self.port}
ServerName localhost
StartServers 1
ServerLimit 1
ThreadsPerChild 25
MaxRequestWorkers 25
KeepAlive On
<VirtualHost 127.0.0.1:{self.port}>
{site}
</VirtualHost>
"""
        path = self.prefix / "apache.conf"
        path.write_text(conf)
        return path

    def argv(self) -> list[str]:
        return [BINARIES["apache"], "-DFOREGROUND", "-f", str(self.conf_path)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "APACHE_RUN_DIR": str(self.prefix), "APACHE_LOCK_DIR": str(self.prefix)}

    def extra_logs(self) -> list[Path]:
        return [self.prefix / "error.log"]


class HAProxy(Frontend):
    """``haproxy -db`` (foreground); its request log (``option httplog``) goes to stdout."""

    name = "haproxy"
    # A request log line whose termination state blames the server, the proxy or an
    # internal error, or a 5xx; or an alert/warning about the server.
    complaint = re.compile(
        r" (5\d\d) \d+ \S+ \S+ [A-Z-]{4} | [SPRID][A-Z-]{3} \d+/\d+/\d+/\d+/\d+ |\[(ALERT|WARNING)\]"
    )

    def write_config(self, shipped: str) -> Path:
        conf, count = re.subn(r"^(\s*)bind :80$", rf"\g<1>bind 127.0.0.1:{self.port}", shipped, flags=re.M)
        assert count == 1, f"{self.source}: no 'bind :80'"
        path = self.prefix / "haproxy.cfg"
        path.write_text(conf)
        return path

    def argv(self) -> list[str]:
        return [BINARIES["haproxy"], "-db", "-f", str(self.conf_path)]


class Caddy(Frontend):
    """``caddy run`` with the admin endpoint off, no automatic HTTPS, every state file
    under the prefix (HOME, XDG_DATA_HOME, XDG_CONFIG_HOME)."""

    name = "caddy"
    complaint = re.compile(r'"level":"(error|warn)"')

    def write_config(self, shipped: str) -> Path:
        site, count = re.subn(r"^:80 \{$", f":{self.port} {{\n\tbind 127.0.0.1", shipped, flags=re.M)
        assert count == 1, f"{self.source}: no ':80 {{'"
        if self.mount:
            site = site.replace(
                "\treverse_proxy ", f"\t@mounted path {self.mount}/*\n\treverse_proxy @mounted ", 1
            )
        conf = "{\n\tadmin off\n\tauto_https off\n}\n" + site
        path = self.prefix / "Caddyfile"
        path.write_text(conf)
        return path

    def argv(self) -> list[str]:
        return [BINARIES["caddy"], "run", "--config", str(self.conf_path), "--adapter", "caddyfile"]

    def env(self) -> dict[str, str]:
        home = str(self.prefix / "home")
        return {
            **os.environ,
            "HOME": home,
            "XDG_DATA_HOME": f"{home}/data",
            "XDG_CONFIG_HOME": f"{home}/config",
        }


class Lighttpd(Frontend):
    """``lighttpd -D`` (foreground), its error log under the prefix."""

    name = "lighttpd"
    complaint = re.compile(
        r"\((gw_backend|mod_fastcgi|mod_proxy|http_chunk|http-header-glue|response|chunk)\.c\.\d+\)"
    )

    def write_config(self, shipped: str) -> Path:
        conf = shipped
        for pattern, value in (
            (r"^server\.port = 80$", f'server.port = {self.port}\nserver.bind = "127.0.0.1"'),
            (r'^server\.document-root = "[^"]*"$', f'server.document-root = "{self.prefix / "htdocs"}"'),
        ):
            conf, count = re.subn(pattern, value.replace("\\", "\\\\"), conf, flags=re.M)
            assert count == 1, f"{self.source}: {pattern!r} not found"
        if self.mount:
            conf, count = re.subn(r'^(\s*)"/" => \(\($', rf'\1"{self.mount}" => ((', conf, flags=re.M)
            assert count == 1, conf
            conf = conf.replace('        "fix-root-scriptname" => "enable",\n', "")
        (self.prefix / "htdocs").mkdir(exist_ok=True)
        conf += f'\nserver.errorlog = "{self.prefix / "error.log"}"\n'
        path = self.prefix / "lighttpd.conf"
        path.write_text(conf)
        return path

    def argv(self) -> list[str]:
        return [BINARIES["lighttpd"], "-D", "-f", str(self.conf_path)]

    def extra_logs(self) -> list[Path]:
        return [self.prefix / "error.log"]


FRONTENDS: dict[str, type[Frontend]] = {
    "apache": Apache,
    "haproxy": HAProxy,
    "caddy": Caddy,
    "lighttpd": Lighttpd,
}


def start_frontend(prefix: Path, mode: Mode, upstream: tuple[str, int] | str, *, mount: str = "") -> Frontend:
    return FRONTENDS[mode.frontend](prefix, mode, upstream, mount=mount)


def shipped_text(mode: Mode) -> str:
    """The shipped configuration without its comments (for tests that check a line)."""
    return _without_comments((DEPLOY / mode.frontend / mode.config).read_text())
