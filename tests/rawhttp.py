"""A deliberately small HTTP/1.1 client for tests that need byte-level control.

``RawConnection`` sends exactly the bytes it is given and parses responses one at a
time (so pipelining, early responses and connection closes can be asserted on).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


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
            version, status, reason = (status_line.split(" ", 2) + [""])[:3]
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
