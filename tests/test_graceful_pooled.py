"""A graceful stop under a front-end that pools its connections to us (issue 9, item 8).

Apache ``mod_proxy_fcgi`` with ``enablereuse=on`` hands an idle pooled connection the
next request without warning and answers 503 when our close cut it, without retrying.
So during a stop an idle connection of a gateway (FastCGI) or of a trusted proxy (it
sent forwarding fields) is not closed after the short grace a direct client gets: it
keeps its keep-alive deadline, and a request on it is answered, the connection closing
right after the response (END_REQUEST / ``Connection: close``), the FIN in the same
segment. These tests need no Apache: a raw FastCGI client holds a ``FCGI_KEEP_CONN``
connection idle across a SIGHUP and sends its request at different moments.
"""

from __future__ import annotations

import select
import signal
import socket
import time
from pathlib import Path

import pytest

from rapidwsgi.protocols import fastcgi as fcgi
from tests.conftest import ServerProcess, process_gone
from tests.fuzz_gateway import fastcgi_request
from tests.rawhttp import RawConnectionExtras, get, wait_until

HELLO = [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/hello"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]
KEEP_ALIVE = 6.0


def open_socket(address: tuple[str, int] | str) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(address)
    return sock


def fastcgi_exchange(sock: socket.socket, request_id: int) -> bytes:
    """Send a keep-conn GET /hello; return its STDOUT once END_REQUEST has arrived."""
    sock.sendall(fastcgi_request(HELLO, request_id=request_id, keep_conn=True))
    end = fcgi.HEADER.pack(1, fcgi.END_REQUEST, request_id, 8, 0)
    received = b""
    while end not in received:
        part = sock.recv(65536)
        assert part, f"connection closed before END_REQUEST: {received!r}"
        received += part
    stdout, pos = b"", 0
    while pos < len(received):
        _, kind, rid, length, padding = fcgi.HEADER.unpack_from(received, pos)
        assert rid == request_id
        if kind == fcgi.STDOUT:
            stdout += received[pos + 8 : pos + 8 + length]
        pos += 8 + length + padding
    return stdout


@pytest.fixture(params=["tcp", "unix"])
def fastcgi_server(
    request: pytest.FixtureRequest, start_server: type[ServerProcess], tmp_path: Path
) -> ServerProcess:
    bind = "127.0.0.1:0" if request.param == "tcp" else f"unix:{tmp_path}/fcgi.sock"
    return start_server(
        "apps:app", "--workers", "1", "--protocol", "fastcgi", "--keep-alive", str(KEEP_ALIVE), bind=bind
    )


def stop_old_worker(server: ServerProcess) -> int:
    """SIGHUP the master; return the old worker's PID once it has begun its stop."""
    worker = server.worker_pid
    server.signal(signal.SIGHUP)
    server.wait_for_log(rf"\[{worker}\] \[INFO\] Worker shutting down")
    return worker


@pytest.mark.parametrize("delay", [0.0, 0.7, 2.0, 3.5])
def test_request_on_an_idle_keep_conn_connection_after_a_sighup_is_answered(
    fastcgi_server: ServerProcess, delay: float
) -> None:
    with open_socket(fastcgi_server.address) as sock:
        assert fastcgi_exchange(sock, 1).endswith(b"\r\n\r\nHello, world!")
        worker = stop_old_worker(fastcgi_server)
        time.sleep(delay)  # the moment the front-end happens to reuse the connection
        stdout = fastcgi_exchange(sock, 2)
        assert stdout.startswith(b"Status: 200 OK\r\n") and stdout.endswith(b"\r\n\r\nHello, world!")
        # Then the old worker closes it, the EOF right behind END_REQUEST: a front-end
        # that checks the connection before reusing it sees the close.
        assert select.select([sock], [], [], 2)[0], "no EOF after the response"
        assert sock.recv(65536) == b""
    assert wait_until(lambda: process_gone(worker), 10)


def test_idle_keep_conn_connection_is_kept_to_its_keep_alive_deadline_then_closed_cleanly(
    fastcgi_server: ServerProcess,
) -> None:
    with open_socket(fastcgi_server.address) as sock:
        fastcgi_exchange(sock, 1)
        last = time.monotonic()
        worker = stop_old_worker(fastcgi_server)
        sock.settimeout(KEEP_ALIVE + 5)
        assert sock.recv(65536) == b""  # a clean close (a reset would raise)
        idle = time.monotonic() - last
    assert KEEP_ALIVE - 0.2 <= idle <= KEEP_ALIVE + 2, idle
    assert wait_until(lambda: process_gone(worker), 10)


def assert_idle_pooled_connection_outlives_the_grace(
    server: ServerProcess, first: bytes, later: bytes
) -> None:
    """``first`` marks a connection as a pooling peer's; after a SIGHUP, a direct
    client's idle connection closes after the grace while the pooled one is still
    answered (with close) past it, then closed."""
    with RawConnectionExtras(server.address) as pooled, RawConnectionExtras(server.address) as direct:
        assert pooled.request(first).status == 200
        assert direct.request(get("/hello")).status == 200
        worker = stop_old_worker(server)
        assert direct.closed_within(5), "a direct client's idle connection is closed after the grace"
        time.sleep(1.0)  # past the 0.5 s grace a direct client gets
        response = pooled.request(later)
        assert (response.status, response.body, response.header("connection")) == (
            200,
            b"Hello, world!",
            "close",
        )
        assert pooled.closed_within(5)
    assert wait_until(lambda: process_gone(worker), 10)


def test_idle_http_connection_of_a_trusted_proxy_outlives_the_grace_a_direct_client_gets(
    start_server: type[ServerProcess],
) -> None:
    server = start_server("apps:app", "--workers", "1", "--keep-alive", str(KEEP_ALIVE))
    # A trusted peer (loopback) that sends forwarding fields is a proxy.
    forwarded = get("/hello", headers="X-Forwarded-For: 192.0.2.7\r\n")
    assert_idle_pooled_connection_outlives_the_grace(server, forwarded, forwarded)


def test_idle_connection_that_began_with_a_proxy_header_is_a_pooled_one(
    start_server: type[ServerProcess],
) -> None:
    # HAProxy send-proxy-v2 keeps one connection to us per client session and removes
    # the forwarding headers (deploy/haproxy/proxy-protocol.cfg): the PROXY header from
    # a trusted peer is what marks it as a proxy's.
    server = start_server("apps:app", "--workers", "1", "--keep-alive", str(KEEP_ALIVE), "--proxy-protocol")
    proxy_line = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"
    assert_idle_pooled_connection_outlives_the_grace(server, proxy_line + get("/hello"), get("/hello"))
