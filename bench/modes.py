"""What nginx in front costs, per mode: direct HTTP vs proxy_pass, uwsgi_pass, fastcgi_pass.

One rapidwsgi worker (pinned to core 0) listens at once on HTTP (TCP), uwsgi (unix
socket) and FastCGI (TCP); one nginx worker and wrk share core 1 (the front, not the
backend, is then the limit for small responses: see ../shared/BENCH-NOTES.md). Each
round measures every mode once, in a shuffled order; medians and ratios to direct are
printed as a markdown table.

Usage: ``python bench/modes.py [--rounds 3] [--duration 5] [--connections 20]
[--path /hello]`` (needs nginx and wrk; run from the repo with rapidwsgi importable).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"

MODES = ("direct", "proxy", "proxy-keepalive", "uwsgi", "fastcgi")

NGINX_CONF = """
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream http_plain {{ server 127.0.0.1:{http}; }}
    upstream http_keepalive {{ server 127.0.0.1:{http}; keepalive 64; }}
    upstream fcgi {{ server 127.0.0.1:{fastcgi}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{p_proxy};
        location / {{ proxy_pass http://http_plain; proxy_set_header Host $host; }}
    }}
    server {{
        listen 127.0.0.1:{p_keepalive};
        location / {{
            proxy_pass http://http_keepalive;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
    server {{
        listen 127.0.0.1:{p_uwsgi};
        location / {{ include {params}/uwsgi_params; uwsgi_pass unix:{tmp}/uwsgi.sock; }}
    }}
    server {{
        listen 127.0.0.1:{p_fastcgi};
        location / {{
            include {params}/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_keep_conn on;
            fastcgi_pass fcgi;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def probe(port: int, path: str) -> str:
    """The status line and body of one GET, so a broken mode fails before it is timed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return f"{resp.status} {resp.read()[:200]!r}"
    finally:
        conn.close()


def wrk(port: int, path: str, connections: int, duration: int) -> tuple[float, int]:
    """Requests per second and error count of one wrk run pinned to core 1."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (float(rps.group(1)) if rps else 0.0), errors + (int(non2xx.group(1)) if non2xx else 0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--path", default="/hello")
    ap.add_argument("--seed", type=int, default=20261127)
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"missing {tool}: apt-get install -y nginx wrk util-linux", file=sys.stderr)
            return 2
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tmp = Path(tempfile.mkdtemp(prefix="rapidwsgi-modes-"))
    # nginx workers run as an unprivileged user (nobody / www-data) that must reach the
    # uwsgi socket inside this directory.
    tmp.chmod(0o755)
    ports = {"http": free_port(), "fastcgi": free_port()}
    fronts = {m: free_port() for m in MODES if m != "direct"}
    params = Path("/etc/nginx")
    if not (params / "uwsgi_params").exists():
        # Not Debian's layout: the few parameters a WSGI gateway needs.
        params = tmp
        common = {
            "QUERY_STRING": "$query_string",
            "REQUEST_METHOD": "$request_method",
            "CONTENT_TYPE": "$content_type",
            "CONTENT_LENGTH": "$content_length",
            "REQUEST_URI": "$request_uri",
            "PATH_INFO": "$document_uri",
            "SERVER_PROTOCOL": "$server_protocol",
            "REMOTE_ADDR": "$remote_addr",
            "REMOTE_PORT": "$remote_port",
            "SERVER_PORT": "$server_port",
            "SERVER_NAME": "$server_name",
        }
        for kind in ("uwsgi", "fastcgi"):
            lines = (f"{kind}_param {key} {value};" for key, value in common.items())
            (tmp / f"{kind}_params").write_text("\n".join(lines) + "\n")
    (tmp / "nginx.conf").write_text(
        NGINX_CONF.format(
            tmp=tmp,
            params=params,
            http=ports["http"],
            fastcgi=ports["fastcgi"],
            p_proxy=fronts["proxy"],
            p_keepalive=fronts["proxy-keepalive"],
            p_uwsgi=fronts["uwsgi"],
            p_fastcgi=fronts["fastcgi"],
        )
    )
    server = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-m",
            "rapidwsgi",
            "--bind",
            f"127.0.0.1:{ports['http']}",
            "--bind",
            f"unix:{tmp}/uwsgi.sock",
            "--bind",
            f"127.0.0.1:{ports['fastcgi']}",
            "--protocol",
            "http",
            "--protocol",
            "uwsgi",
            "--protocol",
            "fastcgi",
            "--log-level",
            "warning",
            "hello:app",
        ],
        cwd=APPS,
        env={**os.environ, "PYTHONPATH": str(APPS)},
    )
    front = subprocess.Popen(
        ["taskset", "-c", "1", nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"]
    )
    results: dict[str, list[float]] = {m: [] for m in MODES}
    errors: dict[str, int] = dict.fromkeys(MODES, 0)
    try:
        wait_port(ports["http"])
        for port in fronts.values():
            wait_port(port)
        for mode in MODES:
            seen = probe(ports["http"] if mode == "direct" else fronts[mode], args.path)
            if not seen.startswith("200 "):
                log = (tmp / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{mode}: {seen}\nnginx error.log:\n{log}")
        order = list(MODES)
        rng = random.Random(args.seed)
        for round_no in range(1, args.rounds + 1):
            rng.shuffle(order)
            for mode in order:
                port = ports["http"] if mode == "direct" else fronts[mode]
                rps, errs = wrk(port, args.path, args.connections, args.duration)
                results[mode].append(rps)
                errors[mode] += errs
                print(f"[round {round_no}/{args.rounds}] {mode} ... {rps:,.0f} req/s", file=sys.stderr)
    finally:
        for proc, sig in ((front, signal.SIGQUIT), (server, signal.SIGTERM)):
            proc.send_signal(sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    direct = statistics.median(results["direct"]) or 1.0
    print(f"\n| mode ({args.path}, wrk -c{args.connections}) | req/s median [min-max] | vs direct | errors |")
    print("|---|---:|---:|---:|")
    for mode in MODES:
        values = results[mode]
        median = statistics.median(values)
        print(
            f"| {mode} | {median:,.0f} [{min(values):,.0f}-{max(values):,.0f}] | "
            f"{median / direct:.2f} | {errors[mode]} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
