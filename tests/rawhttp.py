"""A deliberately small HTTP/1.1 client for tests that need byte-level control.

``RawConnection`` sends exactly the bytes it is given and parses responses one at a
time (so pipelining, early responses and connection closes can be asserted on).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.conftest import ServerProcess


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_count(self, name: str) -> int:
        return sum(1 for k, _ in self.headers if k.lower() == name.lower())


class ConnectionClosedError(Exception):
    """The server closed the connection before a complete response arrived."""


class RawConnection:
    def __init__(self, address: tuple[str, int] | str, timeout: float = 10.0) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buf = b""
        self.eof = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        if self.eof:
            raise ConnectionClosedError("connection closed by server")
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError as exc:
            raise ConnectionClosedError("connection reset by server") from exc
        if not data:
            self.eof = True
            raise ConnectionClosedError("connection closed by server")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_response(self, head: bool = False) -> RawResponse:
        """Read one final response (skipping 1xx); ``head=True`` for HEAD requests."""
        while True:
            status_line = self._line().decode("latin-1")
            version, status, reason = ([*status_line.split(" ", 2), ""])[:3]
            response = RawResponse(version, int(status), reason)
            while True:
                line = self._line()
                if not line:
                    break
                name, _, value = line.decode("latin-1").partition(":")
                response.headers.append((name, value.strip()))
            if response.status >= 200 or response.status == 101:
                break
        if head or response.status in (204, 304):
            return response
        te = response.header("transfer-encoding")
        length = response.header("content-length")
        if te is not None and te.lower() == "chunked":
            response.chunked = True
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    break
                parts.append(self._exactly(size))
                assert self._exactly(2) == b"\r\n"
            while True:
                line = self._line()
                if not line:
                    break
                name, _, value = line.decode("latin-1").partition(":")
                response.trailers.append((name, value.strip()))
            response.body = b"".join(parts)
        elif length is not None:
            response.body = self._exactly(int(length))
        else:
            response.body = self.read_until_close()
        return response

    def read_until_close(self, limit: float = 10.0) -> bytes:
        deadline = time.monotonic() + limit
        while not self.eof and time.monotonic() < deadline:
            try:
                self._fill()
            except ConnectionClosedError:
                break
        data, self.buf = self.buf, b""
        return data

    def is_closed(self, wait: float = 2.0) -> bool:
        """True if the server closed the connection (EOF or reset) within ``wait``."""
        if self.eof:
            return True
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        if not data:
            self.eof = True
            return True
        self.buf += data
        return False

    def request(self, data: bytes, head: bool = False) -> RawResponse:
        self.send(data)
        return self.read_response(head=head)


def get(path: str = "/", host: str = "test", headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode("latin-1")


# ---------------------------------------------------------------------------------------
# Helpers added for the integration suites (tests/test_server_*.py). They only add
# behaviour: nothing above is changed.


def head(path: str = "/", host: str = "test", headers: str = "") -> bytes:
    return f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode("latin-1")


def post(path: str, body: bytes, host: str = "test", headers: str = "") -> bytes:
    """A POST with a Content-Length body."""
    head_ = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    return head_.encode("latin-1") + body


def chunked_post(
    path: str, chunks: list[bytes], host: str = "test", headers: str = "", trailers: str = ""
) -> bytes:
    """A POST with a chunked body made of ``chunks`` (empty chunks are skipped)."""
    head_ = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n{headers}\r\n"
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks if c)
    return head_.encode("latin-1") + body + b"0\r\n" + trailers.encode("latin-1") + b"\r\n"


class RawConnectionExtras(RawConnection):
    """``RawConnection`` plus observations that leave the socket timeout unchanged."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 10.0) -> None:
        super().__init__(address, timeout)
        self.timeout = timeout

    def __enter__(self) -> RawConnectionExtras:
        return self

    def read_head(self) -> RawResponse:
        """One status line and its header block, whatever the status (1xx included)."""
        status_line = self._line().decode("latin-1")
        version, status, reason = [*status_line.split(" ", 2), ""][:3]
        response = RawResponse(version, int(status), reason)
        while True:
            line = self._line()
            if not line:
                return response
            name, _, value = line.decode("latin-1").partition(":")
            response.headers.append((name, value.strip()))

    def read_exactly(self, n: int) -> bytes:
        return self._exactly(n)

    def data_within(self, wait: float) -> bool:
        """True if a byte is (or becomes) available, or the server closed, within ``wait``."""
        if self.buf or self.eof:
            return True
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            self.eof = True
            return True
        finally:
            self.sock.settimeout(self.timeout)
        if not data:
            self.eof = True
        self.buf += data
        return True

    def read_to_end(self, limit: float = 10.0) -> tuple[bytes, str]:
        """Everything until the server closes: (bytes, "eof" | "reset" | "timeout")."""
        deadline = time.monotonic() + limit
        outcome = "timeout"
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(min(left, 1.0))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                outcome = "reset"
                break
            if not data:
                self.eof = True
                break
            self.buf += data
        if self.eof:
            outcome = "eof"
        self.sock.settimeout(self.timeout)
        data, self.buf = self.buf, b""
        return data, outcome

    def closed_within(self, wait: float) -> bool:
        """True if the server closes (EOF or reset) within ``wait``; unexpected bytes fail."""
        data, outcome = self.read_to_end(wait)
        assert data == b"", f"unexpected bytes before close: {data[:200]!r}"
        return outcome != "timeout"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class ServerPool:
    """Server processes shared by the tests of one module, keyed by their arguments.

    Starting a server costs about half a second; tests that only need "a server in mode
    X on transport Y" reuse one. ``transport="unix"`` binds a socket under ``sock_dir``
    (a pytest temporary directory). A server found dead is replaced, and reported once
    by :meth:`take_dead` so that the test that killed it can fail.
    """

    def __init__(self, factory: Callable[..., ServerProcess], sock_dir: Path) -> None:
        self._factory = factory
        self._sock_dir = sock_dir
        self._servers: dict[tuple[str, str, tuple[str, ...]], ServerProcess] = {}
        self._dead: list[str] = []

    def get(self, *args: str, transport: str = "tcp", app: str = "apps:app") -> ServerProcess:
        key = (app, transport, args)
        server = self._servers.get(key)
        if server is not None and server.proc.poll() is None:
            return server
        if transport == "unix":
            bind = f"unix:{self._sock_dir / f's{len(self._servers)}-{time.monotonic_ns()}.sock'}"
        else:
            bind = "127.0.0.1:0"
        server = self._factory(app, *args, bind=bind)
        self._servers[key] = server
        return server

    def take_dead(self) -> list[str]:
        """Servers that exited since the last call (each reported once), with their stderr tail."""
        for key, server in list(self._servers.items()):
            if server.proc.poll() is not None:
                del self._servers[key]
                self._dead.append(f"{key}: exit {server.proc.returncode}\n{server.stderr[-2000:]}")
        dead, self._dead = self._dead, []
        return dead

    def stop_all(self, grace: float = 5.0) -> None:
        """Stop every server at once: SIGQUIT (immediate stop), then SIGKILL if one lingers.

        No graceful stop: a connection left hanging by a failed test would hold a
        SIGTERM'd server for its whole graceful timeout.
        """
        servers = list(self._servers.values())
        self._servers.clear()
        for signum in (signal.SIGQUIT, signal.SIGKILL):
            for server in servers:
                server.signal(signum)
            deadline = time.monotonic() + grace
            for server in servers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.proc.wait(max(deadline - time.monotonic(), 0.01))
            servers = [server for server in servers if server.proc.poll() is None]
            if not servers:
                return


# ------------------------------------------------------------- helpers of the server tests

#: The server arguments of the two dispatch modes every server test runs in.
SERVER_MODES: dict[str, tuple[str, ...]] = {"inline": ("--threads", "1"), "threaded": ("--threads", "4")}


def connect(server: ServerProcess, timeout: float = 5.0) -> RawConnectionExtras:
    """A raw connection to ``server`` (TCP or unix, wherever it listens)."""
    return RawConnectionExtras(server.address, timeout)


def fetch(server: ServerProcess, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    with RawConnection(server.address) as conn:
        conn.send(f"{method} {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        response = conn.read_response(head=method == "HEAD")
    return response.status, dict(response.headers), response.body


def json_of(response: RawResponse) -> dict[str, Any]:
    """The JSON body of a 200 response (the test apps' environ and stats pages)."""
    assert response.status == 200, (response.status, response.body[:300])
    doc: dict[str, Any] = json.loads(response.body)
    return doc


def assert_still_serving(server: ServerProcess) -> None:
    """A fresh connection still gets ``Hello, world!``: the previous test left it working."""
    with connect(server) as conn:
        response = conn.request(get("/hello"))
        assert (response.status, response.body) == (200, b"Hello, world!")
