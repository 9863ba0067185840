"""Per-request CPU cost of the server's hot path, without sockets.

Feeds a keep-alive GET (as wrk sends it; with ``--connections`` a new connection per request,
as ab sends them) through ``HTTPConnection.data_received`` with a
fake transport and reports microseconds per request; ``--profile`` prints a cProfile
table. Used to measure each hot-path change before/after (also under callgrind:
``valgrind --tool=callgrind python bench/hotpath.py -n 20000``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import mmap
import pstats
import sys
import time
from typing import Any

from common import BROWSER

from rapidwsgi.config import Config
from rapidwsgi.connection import C_PATH_DEFAULT, HTTPConnection, ServerContext
from rapidwsgi.log import Clock
from rapidwsgi.metrics import SLOT_BYTES, make_meter
from rapidwsgi.protocols.http1 import Limits
from rapidwsgi.static import StaticFiles, parse_mount
from rapidwsgi.worker import base_environ

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


class FakeTransport:
    def __init__(self) -> None:
        self.out = 0

    def write(self, data: bytes) -> None:
        self.out += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    closed = False

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--browser", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--static", metavar="DIR", help="mount DIR at /static/ (--static /static/=DIR)")
    parser.add_argument("--path", default="/", help="the request target (default /)")
    parser.add_argument(
        "--header", action="append", default=[], help="an extra request field, e.g. 'If-None-Match: x'"
    )
    parser.add_argument(
        "--metrics", action="store_true", help="count into a metrics slot, as under --metrics-bind"
    )
    parser.add_argument(
        "--python-path", action="store_true", help="the Python request path (with the C meter, if built)"
    )
    parser.add_argument(
        "--connections",
        action="store_true",
        help="a new connection per request (Connection: close), as ab sends without -k",
    )
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    meter = None
    if args.metrics:
        meter = make_meter(mmap.mmap(-1, SLOT_BYTES, flags=mmap.MAP_SHARED), 0, C_PATH_DEFAULT)
    ctx = ServerContext(
        c_path=False if args.python_path else None,
        meter=meter,
        app=hello,
        loop=loop,
        base_environ=base_environ(Config(), sys.stderr),
        limits=Limits(),
        clock=Clock(),
        static=StaticFiles([parse_mount(f"/static/={args.static}", 60)]) if args.static else None,
    )
    request = BROWSER if args.browser else REQUEST
    if args.path != "/":
        request = request.replace(b"GET / ", b"GET " + args.path.encode() + b" ", 1)
    for field in args.header:
        request = request.replace(b"\r\n\r\n", b"\r\n" + field.encode() + b"\r\n\r\n", 1)
    if args.connections:
        closing = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")

        transport = FakeTransport()  # counts the bytes of every connection

        def one_connection(data: bytes) -> None:
            conn = HTTPConnection(ctx)
            own = FakeTransport()
            conn.connection_made(own)  # type: ignore[arg-type]
            conn.data_received(closing)
            conn.eof_received()
            conn.connection_lost(None)
            transport.out += own.out

        feed = one_connection
    else:
        conn = HTTPConnection(ctx)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        feed = conn.data_received
    for _ in range(1000):
        feed(request)
    gc.collect()
    gc.freeze()  # as the worker does before it serves (worker.py)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.n):
            feed(request)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    start = time.perf_counter()
    for _ in range(args.n):
        feed(request)
    elapsed = time.perf_counter() - start
    print(f"{elapsed / args.n * 1e6:.2f} us/request ({args.n} requests, {transport.out} bytes out)")


if __name__ == "__main__":
    main()
