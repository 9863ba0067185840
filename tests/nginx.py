"""A real nginx in front of rapidwsgi, for the integration tests of the gateway protocols.

:class:`Nginx` starts ``/usr/sbin/nginx`` (never the system service) in the foreground
with a generated configuration under a temporary prefix: it listens on a free
127.0.0.1 port and passes every request to one rapidwsgi server in one of three modes,
with the `location /` of deploy/nginx/*.conf itself:

* ``proxy``: ``proxy_pass`` over HTTP/1.1 with upstream keep-alive and X-Forwarded-*;
* ``uwsgi``: ``uwsgi_pass`` (``include uwsgi_params``), one request per connection;
* ``fastcgi``: ``fastcgi_pass`` with ``fastcgi_keep_conn on`` (``include fastcgi_params``).

``upstream`` is where rapidwsgi listens: ``(host, port)`` or a unix socket path. With
``https=True`` nginx tells rapidwsgi the client used https (X-Forwarded-Proto https,
``fastcgi_param HTTPS on``, ``uwsgi_param HTTPS on``). :meth:`Nginx.stop` sends SIGQUIT
(graceful), then SIGTERM, then SIGKILL to the master it started, by PID.
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
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MODES = ("proxy", "uwsgi", "fastcgi")

# nginx's standard parameter files, for systems without /etc/nginx (same content as the
# files nginx ships, minus the HTTP_HOST line some distributions add).
_STANDARD_PARAMS = {
    "uwsgi_params": """
uwsgi_param  QUERY_STRING       $query_string;
uwsgi_param  REQUEST_METHOD     $request_method;
uwsgi_param  CONTENT_TYPE       $content_type;
uwsgi_param  CONTENT_LENGTH     $content_length;
uwsgi_param  REQUEST_URI        $request_uri;
uwsgi_param  PATH_INFO          $document_uri;
uwsgi_param  DOCUMENT_ROOT      $document_root;
uwsgi_param  SERVER_PROTOCOL    $server_protocol;
uwsgi_param  REQUEST_SCHEME     $scheme;
uwsgi_param  HTTPS              $https if_not_empty;
uwsgi_param  REMOTE_ADDR        $remote_addr;
uwsgi_param  REMOTE_PORT        $remote_port;
uwsgi_param  SERVER_PORT        $server_port;
uwsgi_param  SERVER_NAME        $server_name;
""",
    "fastcgi_params": """
fastcgi_param  QUERY_STRING       $query_string;
fastcgi_param  REQUEST_METHOD     $request_method;
fastcgi_param  CONTENT_TYPE       $content_type;
fastcgi_param  CONTENT_LENGTH     $content_length;
fastcgi_param  SCRIPT_NAME        $fastcgi_script_name;
fastcgi_param  REQUEST_URI        $request_uri;
fastcgi_param  DOCUMENT_URI       $document_uri;
fastcgi_param  DOCUMENT_ROOT      $document_root;
fastcgi_param  SERVER_PROTOCOL    $server_protocol;
fastcgi_param  REQUEST_SCHEME     $scheme;
fastcgi_param  HTTPS              $https if_not_empty;
fastcgi_param  GATEWAY_INTERFACE  CGI/1.1;
fastcgi_param  SERVER_SOFTWARE    nginx/$nginx_version;
fastcgi_param  REMOTE_ADDR        $remote_addr;
fastcgi_param  REMOTE_PORT        $remote_port;
fastcgi_param  REMOTE_USER        $remote_user;
fastcgi_param  SERVER_ADDR        $server_addr;
fastcgi_param  SERVER_PORT        $server_port;
fastcgi_param  SERVER_NAME        $server_name;
fastcgi_param  REDIRECT_STATUS    200;
""",
}


def nginx_available() -> bool:
    return os.path.isfile(NGINX) and os.access(NGINX, os.X_OK)


def require_nginx() -> None:
    """Skip the calling test (or module) when nginx is not installed; fail instead
    under CI (``RAPIDWSGI_REQUIRE_NGINX=1``, set by ``.ci/run``, which installs it)."""
    if not nginx_available():
        if os.environ.get("RAPIDWSGI_REQUIRE_NGINX") == "1":
            pytest.fail(f"nginx is required here but not installed ({NGINX})")
        pytest.skip(f"nginx is not installed ({NGINX})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _upstream_server(upstream: tuple[str, int] | str) -> str:
    if isinstance(upstream, str):
        return f"unix:{upstream}"
    return f"{upstream[0]}:{upstream[1]}"


DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nginx"


def location_block(mode: str, https: bool) -> str:
    """The ``location /`` of deploy/nginx/<mode>.conf, verbatim but for the upstream's
    name (so the shipped configurations are what these tests run), plus, with
    ``https``, what nginx would say behind TLS."""
    text = (DEPLOY / f"{mode}.conf").read_text()
    found = re.search(r"^    location / \{\n(.*?)^    \}", text, re.M | re.S)
    if found is None:
        raise ValueError(f"no 'location /' block in {DEPLOY / mode}.conf")
    body = re.sub(r"\brapidwsgi_(?:http|uwsgi|fastcgi)\b", "rapidwsgi", found.group(1))
    if https:
        if mode == "proxy":
            body = body.replace("X-Forwarded-Proto $scheme", "X-Forwarded-Proto https")
        else:
            body += f"        {mode}_param HTTPS on;\n"
    return body


def render_config(prefix: Path, port: int, mode: str, upstream: tuple[str, int] | str, https: bool) -> str:
    # uwsgi is one request per connection: no upstream keep-alive pool for it.
    keepalive = "" if mode == "uwsgi" else "keepalive 8;"
    user = "user root;" if os.geteuid() == 0 else ""  # workers must reach the tmp dir
    return f"""
{user}
events {{
    worker_connections 256;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    client_max_body_size 100m;

    upstream rapidwsgi {{
        server {_upstream_server(upstream)};
        {keepalive}
    }}

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location / {{
{location_block(mode, https)}
        }}
    }}
}}
"""


class Nginx:
    """One nginx master (and one worker) started by the tests; see the module docstring."""

    def __init__(
        self,
        prefix: Path,
        mode: str,
        upstream: tuple[str, int] | str,
        *,
        https: bool = False,
        start_timeout: float = 10.0,
    ) -> None:
        require_nginx()
        self.prefix = prefix
        self.mode = mode
        self.upstream = upstream
        self.proc: subprocess.Popen[bytes] | None = None
        prefix.mkdir(parents=True, exist_ok=True)
        for name in ("uwsgi_params", "fastcgi_params"):
            source = Path("/etc/nginx") / name
            if source.is_file():
                shutil.copyfile(source, prefix / name)
            else:
                (prefix / name).write_text(_STANDARD_PARAMS[name])
        self.error_log_path = prefix / "error.log"
        self.access_log_path = prefix / "access.log"
        self.conf_path = prefix / "nginx.conf"
        last_error = ""
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            self.conf_path.write_text(render_config(prefix, self.port, mode, upstream, https))
            if self._start(start_timeout):
                return
            last_error = self.error_log
            self.stop()
        raise RuntimeError(f"nginx did not start:\n{last_error}")

    def _start(self, timeout: float) -> bool:
        directives = (
            f"daemon off; master_process on; worker_processes 1; "
            f"pid {self.prefix}/nginx.pid; error_log {self.error_log_path} info;"
        )
        self.proc = subprocess.Popen(
            [
                NGINX,
                *("-p", f"{self.prefix}/", "-e", str(self.error_log_path)),
                *("-c", str(self.conf_path), "-g", directives),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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
        """nginx accepts a connection and answers an HTTP request (whatever the status)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return sock.recv(16).startswith(b"HTTP/1.1 ")
        except OSError:
            return False

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def access_log(self) -> str:
        try:
            return self.access_log_path.read_text(errors="replace")
        except OSError:
            return ""

    def upstream_errors(self) -> list[str]:
        """error.log lines where nginx complains about rapidwsgi (bad upstream replies)."""
        markers = ("upstream prematurely", "upstream sent", "invalid header", "upstream timed out")
        return [line for line in self.error_log.splitlines() if any(m in line for m in markers)]

    def stop(self, grace: float = 5.0) -> None:
        """SIGQUIT (graceful), then SIGTERM, then SIGKILL: only the master started here."""
        proc = self.proc
        if proc is None:
            return
        for signum in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        self.proc = None
