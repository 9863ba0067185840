"""RSS over many requests through the server's request path (the C path by default).

Drives ``HTTPConnection`` with a fake transport, as ``bench/hotpath.py`` does (no
sockets, so a million requests take seconds): 1,000,000 keep-alive requests on one
connection and 100,000 new connections of six requests each, mixing the shapes the C
path serves itself and those it hands to the Python exchange (a generator, ``write()``,
an exception answered 500, a HEAD 304, an HTTP/1.0 request that closes). Prints the
process's RSS after every tenth of each run and exits 1 if it grew by more than
``--max-growth`` KiB after the first tenth (the warm-up). ``--quick`` runs a tenth.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Iterable
from typing import Any

from hotpath import FakeTransport

from rapidwsgi.config import Config
from rapidwsgi.connection import HTTPConnection, ServerContext
from rapidwsgi.log import Clock
from rapidwsgi.protocols.http1 import Limits
from rapidwsgi.worker import base_environ

KEEP_ALIVE = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"
SHAPES = [
    KEEP_ALIVE,
    b"GET /gen HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /raise HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /write HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD /304 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /x?q=%41 HTTP/1.0\r\n\r\n",
]


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/gen":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (chunk for chunk in (b"a", b"b"))
    if path == "/raise":
        raise ValueError("the 500 path")
    if path == "/write":
        start_response("200 OK", [("Content-Length", "2")])(b"ab")
        return []
    if path == "/304":
        start_response("304 Not Modified", [])
        return []
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100k keep-alive requests, 10k connections")
    parser.add_argument("--max-growth", type=int, default=2048, help="KiB of RSS growth allowed")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the 500 path logs a traceback per request
    scale = 10 if args.quick else 1
    loop = asyncio.new_event_loop()
    ctx = ServerContext(
        app=app, loop=loop, base_environ=base_environ(Config(), sys.stderr), limits=Limits(), clock=Clock()
    )
    print(f"C path: {ctx.c_path}")

    keep = HTTPConnection(ctx)
    keep.connection_made(FakeTransport())  # type: ignore[arg-type]

    def keep_alive(n: int) -> None:
        for _ in range(n):
            keep.data_received(KEEP_ALIVE)

    def connections(n: int) -> None:
        for _ in range(n):
            conn = HTTPConnection(ctx)
            transport = FakeTransport()
            conn.connection_made(transport)  # type: ignore[arg-type]
            for data in SHAPES:
                if transport.closed or conn._lingering:
                    break
                conn.data_received(data)
            conn.eof_received()
            conn.connection_lost(None)

    failed = False
    for name, run, total in (
        ("keep-alive requests", keep_alive, 1_000_000 // scale),
        ("new connections (6 requests each)", connections, 100_000 // scale),
    ):
        samples = []
        for _ in range(10):
            run(total // 10)
            gc.collect()
            samples.append(rss_kib())
        growth = samples[-1] - samples[0]
        print(f"{total:,} {name}: RSS KiB after each tenth {samples}; growth after the first {growth} KiB")
        failed = failed or growth > args.max_growth
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
