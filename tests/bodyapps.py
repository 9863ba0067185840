"""Test applications for request bodies, Expect: 100-continue and the inline gate.

Served as ``bodyapps:app`` by tests/test_request_body.py; tests/apps.py serves the rest.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]

_lock = threading.Lock()
#: Application calls currently running application code (not waiting in a read).
_active = 0


def _enter() -> int:
    """Mark this call as running application code; return how many others were."""
    global _active
    with _lock:
        others = _active
        _active += 1
    return others


def _leave() -> None:
    global _active
    with _lock:
        _active -= 1


def _query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json(start_response: Any, doc: object) -> list[bytes]:
    body = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ: Environ, start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    query = _query(environ)
    if path == "/hold-then-read":
        # Runs application code for ``seconds`` (after touching ``mark``, so a test sees
        # it has started), then reads the body: counts the calls that overlapped it.
        others = _enter()
        try:
            Path(query["mark"]).touch()
            time.sleep(float(query["seconds"]))
        finally:
            _leave()
        body = environ["wsgi.input"].read()
        return _json(start_response, {"overlapped": others, "body": body.decode("latin-1")})
    if path == "/probe":
        # A short call: reports how many calls were running application code meanwhile.
        others = _enter()
        _leave()
        return _json(start_response, {"overlapped": others, "thread": threading.current_thread().name})
    if path == "/thread":
        # Where the call runs, without reading the body.
        return _json(start_response, {"thread": threading.current_thread().name})
    if path == "/stream-then-read":
        # Starts the response, then reads the body (a limit hit now can only abort).
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen() -> Iterator[bytes]:
            yield b"started"
            data = environ["wsgi.input"].read()
            yield b" read %d" % len(data)

        return gen()
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
