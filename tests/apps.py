"""WSGI applications the integration tests run in a real server process.

``app`` routes on PATH_INFO; each route exercises one server behaviour. State that tests
need to observe across requests (iterable close() calls) lives in module globals and is
reported by ``/stats``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import validator

Environ = dict[str, Any]

_lock = threading.Lock()
STATS = {"closed": 0, "iterated_after_disconnect": 0, "requests": 0}


def _count(key: str, n: int = 1) -> None:
    with _lock:
        STATS[key] += n


def _q(environ: Environ, name: str, default: str) -> str:
    return parse_qs(environ.get("QUERY_STRING", "")).get(name, [default])[0]


def _json(start_response: Any, doc: object, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(doc, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _read_all(environ: Environ) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        parts = []
        remaining = int(length)
        while remaining:
            block = stream.read(min(remaining, 65536))
            if not block:
                break
            parts.append(block)
            remaining -= len(block)
        return b"".join(parts)
    return stream.read()


class Tracked:
    """An iterable whose close() is counted; yields ``chunks`` then stops."""

    def __init__(self, chunks: Iterable[bytes], delay: float = 0.0) -> None:
        self.chunks = iter(chunks)
        self.delay = delay

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.delay:
            time.sleep(self.delay)
        return next(self.chunks)

    def close(self) -> None:
        _count("closed")


def echo(environ: Environ, start_response: Any) -> list[bytes]:
    """Everything about the request as JSON, body included (as text)."""
    body = _read_all(environ)
    doc = {
        key: value
        for key, value in environ.items()
        if (isinstance(value, (str, bool)) and not key.startswith("wsgi."))
        or key
        in (
            "wsgi.url_scheme",
            "wsgi.multithread",
            "wsgi.multiprocess",
            "wsgi.run_once",
            "wsgi.input_terminated",
        )
    }
    doc["body"] = body.decode("latin-1")
    doc["body_length"] = len(body)
    doc["body_sha256"] = hashlib.sha256(body).hexdigest()
    return _json(start_response, doc)


def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
    _count("requests")
    path = environ["PATH_INFO"]
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
        return [b"Hello, world!"]
    if path == "/echo" or path.startswith("/echo/"):
        return echo(environ, start_response)
    if path == "/digest":
        # Streams the body through sha256 without holding it: for very large uploads.
        digest = hashlib.sha256()
        total = 0
        stream = environ["wsgi.input"]
        while True:
            block = stream.read(65536)
            if not block:
                break
            digest.update(block)
            total += len(block)
        return _json(start_response, {"length": total, "sha256": digest.hexdigest()})
    if path == "/readline":
        stream = environ["wsgi.input"]
        lines = [line.decode() for line in stream]
        return _json(start_response, {"lines": lines})
    if path == "/noread":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return [b"noread"]
    if path == "/stream":
        n = int(_q(environ, "n", "10"))
        size = int(_q(environ, "size", "10"))
        delay = float(_q(environ, "delay", "0"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Tracked((bytes([65 + i % 26]) * size for i in range(n)), delay)
    if path == "/big":
        size = int(_q(environ, "size", str(1 << 20)))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"x" * size]
    if path == "/empty":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return []
    if path == "/empty-gen":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked(iter(()))
    if path == "/lazy-start":
        # start_response is called only when iteration starts (allowed by PEP 3333).
        def gen() -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"lazy"

        return gen()
    if path == "/error-before":
        raise RuntimeError("boom before start_response")
    if path == "/error-after-start":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("boom after start_response, before any body")
    if path == "/error-in-iter":

        def failing() -> Iterator[bytes]:
            yield b"first chunk"
            raise RuntimeError("boom during iteration")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked(failing())
    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("replaced")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced by exc_info"]
    if path == "/exc-info-after":

        def late() -> Iterator[bytes]:
            yield b"head is out"
            try:
                raise ValueError("too late")
            except ValueError:
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"never"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return late()
    if path == "/twice":
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b"no"]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"then ")
        return [b"returned"]
    if path == "/file":
        size = int(_q(environ, "size", "100000"))
        offset = int(_q(environ, "offset", "0"))
        fd, name = tempfile.mkstemp()
        with os.fdopen(fd, "wb") as fp:
            fp.write(bytes(i % 251 for i in range(size)))
        fp2 = open(name, "rb")  # noqa: SIM115 - closed by the server via close()
        os.unlink(name)
        fp2.seek(offset)
        headers = [("Content-Type", "application/octet-stream")]
        if _q(environ, "cl", ""):
            headers.append(("Content-Length", _q(environ, "cl", "")))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](fp2, 8192)
    if path == "/close-tracked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked([b"a", b"b", b"c"])
    if path == "/slow-stream":
        # Streams for a long time; used to test client disconnects.
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Tracked((b"tick\n" for _ in range(10_000)), delay=0.01)
    if path == "/sleep":
        mark = _q(environ, "mark", "")
        if mark:  # an observable "the request is in the application now", for the tests
            with open(mark, "w") as f:
                f.write(str(os.getpid()))
        time.sleep(float(_q(environ, "seconds", "1")))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"slept"]
    if path == "/stats":
        with _lock:
            return _json(start_response, dict(STATS))
    if path == "/reset-stats":
        with _lock:
            for key in STATS:
                STATS[key] = 0
        return _json(start_response, {})
    if path == "/inject-crlf":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"no"]
    if path == "/inject-name":
        start_response("200 OK", [("X Evil", "a")])
        return [b"no"]
    if path == "/hop-by-hop":
        start_response("200 OK", [("Transfer-Encoding", "chunked")])
        return [b"no"]
    if path == "/non-str-header":
        start_response("200 OK", [("X-Number", 5)])
        return [b"no"]
    if path == "/non-latin1-header":
        start_response("200 OK", [("X-Name", "snowman \u2603")])
        return [b"no"]
    if path == "/bad-status":
        start_response("OK", [])
        return [b"no"]
    if path == "/conn-close":
        start_response("200 OK", [("Content-Length", "5"), ("Connection", "close")])
        return [b"bye!!"]
    if path == "/short":
        start_response("200 OK", [("Content-Length", "10")])
        return Tracked([b"12345"])
    if path == "/long":
        start_response("200 OK", [("Content-Length", "5")])
        return Tracked([b"1234567890", b"more"])
    if path == "/status":
        code = _q(environ, "code", "200")
        start_response(f"{code} Whatever", [("Content-Type", "text/plain")])
        return [b"" if code in ("204", "304") else b"status body"]
    if path == "/304-with-length":
        start_response("304 Not Modified", [("Content-Length", "1234"), ("ETag", '"x"')])
        return []
    if path == "/304-empty-iterable":
        start_response("304 Not Modified", [("ETag", '"x"')])
        return []
    if path == "/no-start":
        return [b"never started"]
    if path == "/server-header":
        start_response("200 OK", [("Server", "custom/1.0"), ("Date", "Thu, 01 Jan 1970 00:00:00 GMT")])
        return [b"custom"]
    if path == "/unicode-path":
        return _json(start_response, {"path_info": environ["PATH_INFO"], "raw": environ["RAW_URI"]})
    if path == "/cookie":
        return _json(start_response, {"cookie": environ.get("HTTP_COOKIE")})
    # -- Routes used by tests/test_server_{http,wsgi,timeouts}.py. Their observations live
    # in the module global PROBES (created here, reported by /probes).
    probes: dict[str, Any] = globals().setdefault("PROBES", {"file_reads": 0, "read_errors": []})
    if path == "/probes":
        with _lock:
            return _json(start_response, probes)
    if path == "/sleep-then-echo":
        # Reads the body only after sleeping: when 100 Continue is sent is observable.
        time.sleep(float(_q(environ, "seconds", "1")))
        return echo(environ, start_response)
    if path == "/read-or-record":
        # Reads the whole body; a failing read is recorded (by exception type) and re-raised.
        try:
            body = _read_all(environ)
        except Exception as exc:
            with _lock:
                probes["read_errors"].append(type(exc).__name__)
            raise
        return _json(start_response, {"body_length": len(body)})
    if path == "/input-api":
        # Exercises the wsgi.input reading API; ``op`` picks the calls, ``n`` the size.
        stream = environ["wsgi.input"]
        op = _q(environ, "op", "read")
        n = int(_q(environ, "n", "1024"))
        if op == "read":
            sizes = []
            for _ in range(1_000_000):
                block = stream.read(n)
                sizes.append(len(block))
                if not block:
                    break
            return _json(start_response, {"sizes": sizes})
        if op == "mixed":
            line = stream.readline()
            limited = stream.readline(n)
            sized = stream.read(n)
            rest = stream.read()
            after = stream.read()
            doc = {"readline": line, "readline_n": limited, "read_n": sized, "rest": rest, "after": after}
            return _json(start_response, {key: value.decode("latin-1") for key, value in doc.items()})
        if op == "readlines":
            return _json(start_response, {"lines": [line.decode("latin-1") for line in stream.readlines()]})
        return _json(start_response, {"error": op}, "400 Bad Request")
    if path == "/file-spy":
        # Like /file, but the file object counts read() calls: a zero-copy (sendfile)
        # response never calls it, an iterating one does.
        import io

        class SpyReader(io.BufferedReader):
            def read(self, size: int | None = -1, /) -> bytes:
                with _lock:
                    probes["file_reads"] += 1
                return super().read(size)

        size = int(_q(environ, "size", "100000"))
        fd, name = tempfile.mkstemp()
        with os.fdopen(fd, "wb") as fp:
            fp.write(bytes(i % 251 for i in range(size)))
        spy = SpyReader(io.FileIO(name, "rb"))
        os.unlink(name)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](spy, 8192)
    # -- Routes used by tests/test_supervisor.py (master/worker processes).
    if path == "/pid":
        # Which worker process answered (plain text, cheap enough for load loops).
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stuck":
        # Blocks the calling thread (the event loop, when inline) for up to ``seconds``;
        # the function's name is what the watchdog's traceback should show.
        def stuck_in_application_code(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.05)

        stuck_in_application_code(float(_q(environ, "seconds", "60")))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        return [b"unstuck"]
    # -- Routes used by tests/test_frontends.py (real front-ends in front).
    if path == "/django-form":
        return django_form(environ, start_response)
    return _json(start_response, {"path": path}, "404 Not Found")


_django_lock = threading.Lock()


def django_form(environ: Environ, start_response: Any) -> list[bytes]:
    """The form as Django's own WSGIRequest parses it from this environ: request.POST,
    request.FILES (name, size, sha256, content type) and the CONTENT_TYPE/LENGTH seen."""
    with _django_lock:
        from django.conf import settings

        if not settings.configured:
            import django

            settings.configure(
                DEBUG=False,
                ALLOWED_HOSTS=["*"],
                DATA_UPLOAD_MAX_MEMORY_SIZE=None,
                FILE_UPLOAD_MAX_MEMORY_SIZE=1 << 20,
                FILE_UPLOAD_TEMP_DIR=tempfile.gettempdir(),
            )
            django.setup()
    from django.core.handlers.wsgi import WSGIRequest

    request = WSGIRequest(environ)
    files = {}
    for name in request.FILES:
        files[name] = [
            {
                "name": upload.name,
                "size": upload.size,
                "content_type": upload.content_type,
                "sha256": hashlib.sha256(upload.read()).hexdigest(),
            }
            for upload in request.FILES.getlist(name)
        ]
    doc = {
        "method": request.method,
        "CONTENT_TYPE": environ.get("CONTENT_TYPE"),
        "CONTENT_LENGTH": environ.get("CONTENT_LENGTH"),
        "POST": {name: request.POST.getlist(name) for name in request.POST},
        "FILES": files,
    }
    return _json(start_response, doc)


validated = validator(app)
