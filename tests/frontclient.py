"""The clients the real-front-end suites share (tests/test_nginx.py, tests/test_frontends.py).

Every helper takes anything with an ``address`` (the front-end's listening address) and
speaks HTTP/1.1 with http.client, ``Host: app.example``, repeated headers kept as they are.
:class:`Load` is the bounded keep-alive load of the SIGHUP tests.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from tests.conftest import ServerProcess
from tests.rawhttp import wait_until

HOST = "app.example"


class Addressed(Protocol):
    @property
    def address(self) -> tuple[str, int]: ...


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Iterator[bytes] | None = None,
    chunked: bool = False,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    """One request on ``conn`` (repeated headers kept as they are, Host: app.example)."""
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", HOST)
    for name, value in headers:
        conn.putheader(name, value)
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    elif isinstance(body, bytes):
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body if isinstance(body, bytes) else None)
    if chunked:
        assert body is not None and not isinstance(body, bytes)
        for piece in body:
            conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    data = response.read()
    return response.status, response, data


def request(
    front: Addressed,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Iterator[bytes] | None = None,
    chunked: bool = False,
    timeout: float = 30.0,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    """One request through the front-end on a new connection."""
    conn = http.client.HTTPConnection(*front.address, timeout=timeout)
    try:
        return send(conn, method, path, headers=headers, body=body, chunked=chunked)
    finally:
        conn.close()


def json_request(
    front: Addressed,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
) -> dict[str, Any]:
    status, _, data = request(front, method, path, headers=headers, body=body)
    assert status == 200, (status, data[:500])
    doc: dict[str, Any] = json.loads(data)
    return doc


def environ_of(front: Addressed, path: str, headers: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    return json_request(front, "GET", path, headers=headers)


def assert_still_serving(front: Addressed) -> None:
    status, _, data = request(front, "GET", "/hello")
    assert (status, data) == (200, b"Hello, world!")


class Load:
    """``clients`` threads looping GET /hello and a small POST /echo through the front-end
    on keep-alive connections, bounded in requests and time; every answer is checked."""

    def __init__(
        self, front: Addressed, clients: int = 4, max_requests: int = 3000, max_seconds: float = 60.0
    ) -> None:
        self.front = front
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.deadline = time.monotonic() + max_seconds
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection(*self.front.address, timeout=20)
        n = 0
        try:
            while n < self.max_requests and not self.stop_event.is_set() and time.monotonic() < self.deadline:
                n += 1
                try:
                    if n % 2:
                        status, _, data = send(conn, "GET", "/hello")
                        good = (status, data) == (200, b"Hello, world!")
                    else:
                        body = f"client {index} request {n}".encode()
                        status, _, data = send(conn, "POST", "/echo", body=body)
                        good = status == 200 and json.loads(data)["body"] == body.decode()
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    good, status, data = False, 0, repr(exc).encode()
                    conn.close()
                with self.lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failures.append(f"{status} {data[:200]!r}")
        finally:
            conn.close()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        assert wait_until(lambda: self.ok >= count or bool(self.failures), timeout=timeout), (self.ok, count)


def generations_serving(server: ServerProcess) -> int:
    return server.stderr.count("Worker generation ")
