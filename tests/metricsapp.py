"""The application of the metrics tests: every answer has a known status and body size.

- ``/hello``: 200, ``hello`` (5 bytes)
- ``/missing``: 404, ``nope`` (4 bytes)
- ``/post``: reads the body, 200, ``ok`` (2 bytes)
- ``/late-stream``: 0.3 s in the call, then a generator of ``la`` ``te`` (chunked)
- ``/raise``: raises before start_response (the server answers 500)
- ``/slow?marker=PATH``: creates the file PATH, then waits until it is removed (at most
  20 s), 200 ``slow`` (4 bytes): the test sees the request running, then releases it.

Every response names its worker's PID in ``X-Worker`` (the load of the kill -9 test
keeps its victim idle with it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    # The PID now, not at import: with --preload the zygote imported this module.
    worker = ("X-Worker", str(os.getpid()))
    return _route(environ, lambda status, headers: start_response(status, [*headers, worker]))


def _route(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    if path == "/post":
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/late-stream":
        # 0.3 s in the application call, then a generator: the C path hands it over.
        time.sleep(0.3)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (part for part in (b"la", b"te"))
    if path == "/raise":
        raise RuntimeError("the metrics test's exception")
    if path == "/slow":
        marker = parse_qs(environ["QUERY_STRING"])["marker"][0]
        with open(marker, "w"):
            pass
        deadline = time.monotonic() + 20
        while os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"slow"]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"nope"]
