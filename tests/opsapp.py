"""The application of the operations tests (tests/test_ops.py).

- ``/pid``: 200, the worker's PID.
- ``/sleep?s=SECONDS``: sleeps, then 200 ``slept``.
- ``/grow?mb=N``: keeps N MiB more (touched, so resident) for the process's life, 200.
- ``/stuck?marker=PATH``: creates PATH (holding the worker's PID), then waits until it is
  removed (at most 30 s):
  a request that outlives --request-timeout, released by the test; 200 ``late``. With
  ``&stream=1`` the response starts first (``early``, chunked), then the wait.
- ``/post``: reads the body, 200 with its length.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

_kept: list[bytearray] = []


def _arg(environ: dict[str, Any], name: str, default: str) -> str:
    return parse_qs(environ["QUERY_STRING"]).get(name, [default])[0]


def _plain(start_response: Any, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/pid":
        return _plain(start_response, str(os.getpid()).encode())
    if path == "/sleep":
        time.sleep(float(_arg(environ, "s", "0.5")))
        return _plain(start_response, b"slept")
    if path == "/grow":
        block = bytearray(int(_arg(environ, "mb", "1")) << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1  # resident, not just reserved
        _kept.append(block)
        return _plain(start_response, b"grown")
    if path == "/stuck":
        marker = _arg(environ, "marker", "")
        if _arg(environ, "stream", "") == "1":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _stream(marker)
        _wait_for_removal(marker)
        return _plain(start_response, b"late")
    if path == "/post":
        body = environ["wsgi.input"].read()
        return _plain(start_response, str(len(body)).encode())
    return _plain(start_response, b"nope", "404 Not Found")


def _wait_for_removal(marker: str) -> None:
    # Written whole under another name, then renamed: a test that sees the file sees the PID.
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    deadline = time.monotonic() + 30
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)


def _stream(marker: str) -> Iterable[bytes]:
    yield b"early"
    _wait_for_removal(marker)
    yield b"late"
