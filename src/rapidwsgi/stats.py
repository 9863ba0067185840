"""``rapidwsgi stats``: the live worker table, read from a running master's
``--metrics-bind`` endpoint (``/metrics?format=json``), once or refreshed like ``top``.

Contract: :func:`main` returns 0 after printing, ``ExitCode.USAGE`` for bad arguments
and ``ExitCode.BIND`` (with one line on stderr) when the endpoint cannot be reached or
answers anything but JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from .errors import BindError, ConfigError, ExitCode
from .sockets import parse_address

TIMEOUT: Final = 5.0
CLEAR: Final = "\x1b[H\x1b[2J"


def fetch(address: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """GET /metrics?format=json from the endpoint at ``address`` (HOST:PORT or unix:PATH)."""
    parsed = parse_address(address)
    if parsed.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = parsed.path
    elif parsed.kind == "tcp":
        host = (
            "127.0.0.1" if parsed.host in ("0.0.0.0", "") else "::1" if parsed.host == "::" else parsed.host
        )
        info = socket.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        target = info[4]
    else:
        raise BindError(f"{address!r}: expected HOST:PORT or unix:PATH")
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect(target)
            sock.sendall(b"GET /metrics?format=json HTTP/1.1\r\nHost: rapidwsgi\r\nConnection: close\r\n\r\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            raise BindError(f"cannot read {address}: {exc.strerror or exc}") from None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise BindError(f"{address}: not a rapidwsgi metrics endpoint ({head[:40]!r})")
    try:
        answer: dict[str, Any] = json.loads(body)
    except ValueError:
        raise BindError(f"{address}: the answer is not JSON") from None
    return answer


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _size(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"  # pragma: no cover


def render(data: dict[str, Any]) -> str:
    """The table ``rapidwsgi stats`` prints for one answer of the endpoint."""
    m = data["master"]
    workers = data["workers"]
    lines = [
        f"rapidwsgi {m['version']}  master {m['pid']}  up {_duration(m['uptime'])}"
        f"  generation {m['generation']}  workers {len(workers)}/{m['workers_wanted']}",
        f"requests {data['requests_total']}  connections {data['connections']}"
        f" ({data['idle_connections']} idle)  threads busy {data['threads_busy']}"
        f"  waiting {data['requests_waiting']}  app exceptions {data['app_exceptions']}"
        f"  aborted {data['aborted']}",
    ]
    restarts = ", ".join(f"{k} {v}" for k, v in sorted(m["restarts"].items())) or "none"
    reloads = ", ".join(f"{k} {v}" for k, v in sorted(m["reloads"].items())) or "none"
    lines.append(f"restarts: {restarts}  reloads: {reloads}")
    lines.append("")
    lines.append(
        f"{'PID':>8} {'GEN':>4} {'STATE':<9} {'AGE':>8} {'RSS':>8} {'CPU':>8} {'REQUESTS':>10}"
        f" {'CONNS':>6} BUSY"
    )
    for w in workers:
        lines.append(
            f"{w['pid']:>8} {w['generation']:>4} {w['state']:<9} {_duration(w['age']):>8}"
            f" {_size(w['rss']):>8} {w['cpu']:>8.2f} {w['requests']:>10} {w['connections']:>6}"
            f" {len(w['busy'])}"
        )
        for b in w["busy"]:
            # Printable whatever the path holds: a path is the client's bytes.
            shown = (b["method"] + " " + b["path"]).encode("unicode_escape").decode("ascii")
            lines.append(f"{'':>8}   thread {b['thread']}: {shown} for {_duration(b['age'])}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rapidwsgi stats",
        description="Show the workers of a running rapidwsgi master (its --metrics-bind endpoint).",
    )
    parser.add_argument(
        "address",
        nargs="?",
        help="The master's --metrics-bind address (default: $RAPIDWSGI_METRICS_BIND, or the config file's).",
    )
    parser.add_argument("-c", "--config", help="Read metrics_bind from this config file (TOML or Python).")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="Refresh every SECONDS (default 2).",
    )
    parser.add_argument(
        "--iterations", type=int, default=0, help="With --watch: stop after this many refreshes."
    )
    parser.add_argument("--json", action="store_true", help="Print the endpoint's JSON instead of the table.")
    return parser


def _address(args: argparse.Namespace) -> str | None:
    if args.address:
        return str(args.address)
    if args.config:
        from .config import values_from_file

        value = values_from_file(args.config).get("metrics_bind")
        if value:
            return str(value)
    return os.environ.get("RAPIDWSGI_METRICS_BIND") or None


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return ExitCode.USAGE if exc.code else ExitCode.OK
    try:
        address = _address(args)
    except ConfigError as exc:
        print(f"rapidwsgi stats: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if address is None:
        print(
            "rapidwsgi stats: error: no address (give one, -c CONFIG, or RAPIDWSGI_METRICS_BIND)",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    shown = 0
    try:
        while True:
            data = fetch(address)
            text = json.dumps(data, indent=2) + "\n" if args.json else render(data)
            if args.watch and sys.stdout.isatty():
                text = CLEAR + text
            sys.stdout.write(text)
            sys.stdout.flush()
            shown += 1
            if not args.watch or (args.iterations and shown >= args.iterations):
                return ExitCode.OK
            time.sleep(args.watch)
    except BindError as exc:
        print(f"rapidwsgi stats: error: {exc}", file=sys.stderr)
        return ExitCode.BIND
    except KeyboardInterrupt:
        return ExitCode.OK
