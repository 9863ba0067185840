"""Send a few malformed and smuggling-prone requests to a server; print each status.

Usage: ``python bench/strictness.py PORT`` against any server on 127.0.0.1 (start the
peers from bench/.venv-peers). A strict server answers 400 to each and closes; a status
of 200 means the request was guessed at (docs/http.md explains why each is refused).
"""

from __future__ import annotations

import socket
import sys

CASES: dict[str, bytes] = {
    "Content-Length + Transfer-Encoding, then a 2nd request": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    ),
    "obs-fold header": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "bare LF line endings": b"GET / HTTP/1.1\nHost: a\n\n",
    "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\n\r\n",
    "two different Content-Length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    ),
    "whitespace before the colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
}


def statuses(port: int, raw: bytes, timeout: float = 1.5) -> list[str]:
    """Status codes of every response the server sent before closing (or timing out)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        try:
            while data := sock.recv(65536):
                out += data
        except OSError:
            pass
    return [line.split(b" ")[1].decode() for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def main() -> None:
    port = int(sys.argv[1])
    for name, raw in CASES.items():
        print(f"{name:55s} {' '.join(statuses(port, raw)) or '(no response)'}")


if __name__ == "__main__":
    main()
