"""nginx in front of a server: one generated configuration per mode, in a temp prefix.

The modes after deploy/nginx/*.conf: ``proxy`` (proxy_pass, a new upstream connection
per request), ``proxy-ka`` (upstream keep-alive), ``uwsgi`` (uwsgi_pass to a unix
socket) and ``fastcgi`` (fastcgi_pass with fastcgi_keep_conn). nginx runs in the
foreground with one worker (or one per load core), pinned like the load generator; it is
stopped by the PID of the master we started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from common import HOST, free_port, last_line

STOP_TIMEOUT_S = 5.0
PARAMS_DIR = Path("/etc/nginx")

#: What every nginx configuration of the benchmark starts with (a scratch prefix in
#: {tmp}; bench/static.py uses it too), up to the inside of ``http {``.
PREAMBLE = """
{user}
worker_processes {workers};
worker_rlimit_nofile 20000;
error_log {tmp}/error.log error;
pid {tmp}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;"""
CONFIG = (
    PREAMBLE
    + """
    upstream backend {{ server {upstream};{keepalive} }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
{location}
        }}
    }}
}}
"""
)
LOCATIONS = {
    "proxy": ["proxy_pass http://backend;", "proxy_set_header Host $host;"],
    "proxy-ka": [
        "proxy_pass http://backend;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $host;",
    ],
    "uwsgi": ["include {params}/uwsgi_params;", "uwsgi_pass backend;"],
    "fastcgi": [
        "include {params}/fastcgi_params;",
        'fastcgi_param SCRIPT_NAME "";',
        "fastcgi_keep_conn on;",
        "fastcgi_pass backend;",
    ],
}
# The few CGI variables a WSGI gateway needs, for systems without /etc/nginx/*_params.
FALLBACK_PARAMS = {
    "QUERY_STRING": "$query_string",
    "REQUEST_METHOD": "$request_method",
    "CONTENT_TYPE": "$content_type",
    "CONTENT_LENGTH": "$content_length",
    "REQUEST_URI": "$request_uri",
    "PATH_INFO": "$document_uri",
    "DOCUMENT_URI": "$document_uri",
    "SERVER_PROTOCOL": "$server_protocol",
    "REMOTE_ADDR": "$remote_addr",
    "REMOTE_PORT": "$remote_port",
    "SERVER_PORT": "$server_port",
    "SERVER_NAME": "$server_name",
}


def nginx_binary() -> str:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else ""


def params_dir(tmp: Path) -> Path:
    if (PARAMS_DIR / "uwsgi_params").exists() and (PARAMS_DIR / "fastcgi_params").exists():
        return PARAMS_DIR
    for kind in ("uwsgi", "fastcgi"):
        lines = (f"{kind}_param {key} {value};" for key, value in FALLBACK_PARAMS.items())
        (tmp / f"{kind}_params").write_text("\n".join(lines) + "\n")
    return tmp


def render_config(front: str, tmp: Path, port: int, upstream: str, workers: int) -> str:
    keepalive = " keepalive 64;" if front in ("proxy-ka", "fastcgi") else ""
    params = params_dir(tmp)
    location = "\n".join(" " * 12 + line.format(params=params) for line in LOCATIONS[front])
    # As root, nginx's workers would run as nobody, which may not reach a server's unix
    # socket (uWSGI creates it 0755): keep them root, inside this throwaway prefix.
    user = "user root;" if os.geteuid() == 0 else ""
    return CONFIG.format(
        user=user,
        workers=workers,
        tmp=tmp,
        upstream=upstream,
        keepalive=keepalive,
        host=HOST,
        port=port,
        location=location,
    )


def wait_listening(proc: subprocess.Popen[bytes], pid_file: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"nginx exited with code {proc.returncode}"
        if pid_file.exists():
            return ""
        time.sleep(0.05)
    return "nginx did not write its pid file"


def stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_nginx(front: str, upstream: str, tmp: Path, cpus: str, workers: int) -> Iterator[tuple[int, str]]:
    """Start nginx in front of ``upstream`` (host:port or unix:path); yield (port, error)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(render_config(front, tmp, port, upstream, workers))
    binary = nginx_binary()
    with (tmp / "nginx.out").open("ab") as sink:
        proc = subprocess.Popen(
            ["taskset", "-c", cpus, binary, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        error = wait_listening(proc, tmp / "nginx.pid")
        if error:
            error += ": " + last_line((tmp / "nginx.out").read_text(errors="replace"))
        yield port, error
    finally:
        stop(proc)


def error_log_tail(tmp: Path) -> str:
    path = tmp / "error.log"
    return last_line(path.read_text(errors="replace")) if path.exists() else ""
