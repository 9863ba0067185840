"""PEP 3333 behaviours of a real server process, observed over the wire.

Application errors, response validation, the iterable's ``close()``, ``write()``,
``wsgi.file_wrapper``, ``wsgi.input``, environ facts, ``wsgiref.validate`` and memory
bounds under slow or hostile clients. Each behaviour runs in both dispatch modes
(inline and threaded) and, where the transport cannot matter, over TCP and unix sockets.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.rawhttp import (
    SERVER_MODES,
    RawConnectionExtras,
    RawResponse,
    ServerPool,
    assert_still_serving,
    connect,
    get,
    head,
    json_of,
    post,
    wait_until,
)

MB = 1024 * 1024


pytestmark = pytest.mark.usefixtures("servers_survive")  # pool: conftest.py


@pytest.fixture
def server(pool: ServerPool, mode: str, transport: str) -> ServerProcess:
    return pool.get(*SERVER_MODES[mode], transport=transport)


@pytest.fixture
def tcp_server(pool: ServerPool, mode: str) -> ServerProcess:
    return pool.get(*SERVER_MODES[mode])


# ------------------------------------------------------------------ helpers


def fetch(server: ServerProcess, request: bytes) -> RawResponse:
    with connect(server) as conn:
        return conn.request(request, head=request.startswith(b"HEAD "))


def stats(server: ServerProcess) -> dict[str, int]:
    return json_of(fetch(server, get("/stats")))


def probes(server: ServerProcess) -> dict[str, Any]:
    return json_of(fetch(server, get("/probes")))


def closed_count_reaches(server: ServerProcess, target: int, timeout: float = 5.0) -> bool:
    return wait_until(lambda: stats(server)["closed"] >= target, timeout, 0.1)


def new_log(server: ServerProcess, mark: int, pattern: str, timeout: float = 5.0) -> str:
    """Wait for ``pattern`` in the stderr written after offset ``mark``; return that text."""
    regex = re.compile(pattern)
    found = wait_until(lambda: regex.search(server.stderr[mark:]) is not None, timeout)
    text = server.stderr[mark:]
    assert found, f"{pattern!r} not logged; new stderr:\n{text}"
    return text


def assert_aborted(conn: RawConnectionExtras) -> bytes:
    """The response was cut off: closed or reset, never a complete chunked body."""
    data, outcome = conn.read_to_end(8)
    assert outcome in ("eof", "reset"), "the connection was neither closed nor reset"
    assert b"\r\n0\r\n\r\n" not in data, f"an aborted response ended like a complete one: {data!r}"
    return data


def rss_kb(server: ServerProcess) -> int:
    status = Path(f"/proc/{server.worker_pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def file_pattern(size: int) -> bytes:
    """What /file?size=N serves: bytes(i % 251 for i in range(N))."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


# ------------------------------------------------------------------ application errors


def test_error_before_start_response_is_500_with_logged_traceback(server: ServerProcess) -> None:
    mark = len(server.stderr)
    response = fetch(server, get("/error-before"))
    assert response.status == 500
    log = new_log(server, mark, r"RuntimeError: boom before start_response")
    assert "Traceback (most recent call last)" in log
    assert_still_serving(server)


def test_error_after_start_response_before_body_is_500(server: ServerProcess) -> None:
    mark = len(server.stderr)
    response = fetch(server, get("/error-after-start"))
    assert response.status == 500
    assert b"boom" not in response.body
    new_log(server, mark, r"RuntimeError: boom after start_response")
    assert_still_serving(server)


def test_error_after_headers_sent_aborts_connection_and_closes_iterable(server: ServerProcess) -> None:
    closed = stats(server)["closed"]
    mark = len(server.stderr)
    with connect(server) as conn:
        conn.send(get("/error-in-iter"))
        assert_aborted(conn)
    new_log(server, mark, r"RuntimeError: boom during iteration")
    assert closed_count_reaches(server, closed + 1), "close() was not called after the error"
    assert_still_serving(server)


def test_exc_info_before_headers_sent_replaces_the_response(server: ServerProcess) -> None:
    response = fetch(server, get("/exc-info"))
    assert response.status == 503
    assert response.body == b"replaced by exc_info"


def test_exc_info_after_headers_sent_aborts_connection(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(get("/exc-info-after"))
        data = assert_aborted(conn)
        assert b"never" not in data
    assert_still_serving(server)


def test_start_response_twice_without_exc_info_is_500(server: ServerProcess) -> None:
    assert fetch(server, get("/twice")).status == 500


def test_app_that_never_calls_start_response_gets_500(server: ServerProcess) -> None:
    response = fetch(server, get("/no-start"))
    assert response.status == 500
    assert b"never started" not in response.body


def test_write_callable_output_comes_before_the_iterable(server: ServerProcess) -> None:
    response = fetch(server, get("/write"))
    assert (response.status, response.body) == (200, b"written then returned")


# ------------------------------------------------------------------ response validation

INVALID_RESPONSES = [
    ("/inject-crlf", [b"Set-Cookie", b"pwned", b"X-Evil"]),
    ("/inject-name", [b"X Evil"]),
    ("/hop-by-hop", [b"Transfer-Encoding"]),
    ("/non-str-header", [b"X-Number"]),
    ("/non-latin1-header", [b"X-Name", b"snowman"]),
    ("/bad-status", [b" OK\r\n"]),
]


@pytest.mark.parametrize(("path", "forbidden"), INVALID_RESPONSES, ids=[p for p, _ in INVALID_RESPONSES])
def test_invalid_response_head_becomes_500_and_nothing_is_injected(
    server: ServerProcess, path: str, forbidden: list[bytes]
) -> None:
    mark = len(server.stderr)
    with connect(server) as conn:
        conn.send(get(path, headers="Connection: close\r\n"))
        wire, outcome = conn.read_to_end(5)
    assert outcome == "eof"
    assert wire.startswith(b"HTTP/1.1 500 "), wire[:200]
    head_, _, body = wire.partition(b"\r\n\r\n")
    for needle in forbidden:
        assert needle not in wire, f"{needle!r} reached the wire: {wire!r}"
    lengths = re.findall(rb"\r\ncontent-length: *(\d+)", head_, re.IGNORECASE)
    assert lengths == [str(len(body)).encode()], "the 500 must be framed by one Content-Length"
    new_log(server, mark, re.escape(path))
    assert_still_serving(server)


def test_app_connection_close_header_is_honoured(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(get("/conn-close") + get("/hello"))
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"bye!!")
        assert response.header("connection") == "close"
        rest, outcome = conn.read_to_end(5)
        assert (rest, outcome) == (b"", "eof")


def test_body_shorter_than_content_length_aborts_and_closes_iterable(server: ServerProcess) -> None:
    closed = stats(server)["closed"]
    with connect(server) as conn:
        conn.send(get("/short"))
        data = assert_aborted(conn)
        body = data.partition(b"\r\n\r\n")[2]
        assert len(body) < 10, "the client must not receive a complete 10-byte body"
    assert closed_count_reaches(server, closed + 1), "close() was not called"


def test_body_longer_than_content_length_is_truncated_and_connection_reused(server: ServerProcess) -> None:
    closed = stats(server)["closed"]
    with connect(server) as conn:
        response = conn.request(get("/long"))
        assert (response.status, response.body) == (200, b"12345")
        assert response.header("content-length") == "5"
        assert response.header("connection") is None
        assert conn.request(get("/hello")).body == b"Hello, world!"
    assert closed_count_reaches(server, closed + 1), "close() was not called"


# ------------------------------------------------------------------ close()


def test_iterable_close_is_called_after_success(server: ServerProcess) -> None:
    closed = stats(server)["closed"]
    response = fetch(server, get("/close-tracked"))
    assert response.body == b"abc"
    assert closed_count_reaches(server, closed + 1)


def test_iterable_close_is_called_when_client_disconnects_mid_stream(server: ServerProcess) -> None:
    closed = stats(server)["closed"]
    with connect(server) as conn:
        conn.send(get("/slow-stream"))
        head_ = conn.read_head()
        assert head_.status == 200
        # Read a little of the stream, then hang up.
        received = len(conn.buf)
        deadline = time.monotonic() + 5
        while received < 20 and time.monotonic() < deadline:
            received += len(conn.sock.recv(4096))
        assert received >= 20
    assert closed_count_reaches(server, closed + 1, timeout=8), "close() not called after disconnect"
    assert_still_serving(server)


# ------------------------------------------------------------------ wsgi.file_wrapper


@pytest.mark.parametrize("size", [0, 1, 100_000, 5 * MB], ids=["0", "1", "100000", "5MB"])
def test_file_wrapper_sends_the_whole_file(server: ServerProcess, size: int) -> None:
    with connect(server, timeout=30) as conn:
        response = conn.request(get(f"/file?size={size}"))
        assert response.status == 200
        assert response.header("content-length") == str(size)
        assert response.body == file_pattern(size)
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_file_wrapper_starts_at_the_files_position(server: ServerProcess) -> None:
    response = fetch(server, get("/file?size=100000&offset=1000"))
    assert response.header("content-length") == "99000"
    assert response.body == file_pattern(100_000)[1000:]


def test_file_wrapper_honours_a_smaller_app_content_length(server: ServerProcess) -> None:
    with connect(server) as conn:
        response = conn.request(get("/file?size=100000&cl=500"))
        assert response.header("content-length") == "500"
        assert response.body == file_pattern(500)
        assert not conn.data_within(0.3), "bytes beyond Content-Length were sent"
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_file_wrapper_shorter_than_app_content_length_aborts(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(get("/file?size=100&cl=200"))
        data = assert_aborted(conn)
        assert len(data.partition(b"\r\n\r\n")[2]) < 200
    assert_still_serving(server)


def test_file_wrapper_head_sends_headers_only(server: ServerProcess) -> None:
    with connect(server) as conn:
        response = conn.request(head("/file?size=100000"), head=True)
        assert response.status == 200
        assert response.header("content-length") == "100000"
        assert not conn.data_within(0.3), "a HEAD response carried the file"
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_file_wrapper_on_regular_file_is_sent_without_reading_it_in_python(server: ServerProcess) -> None:
    reads = probes(server)["file_reads"]
    response = fetch(server, get("/file-spy?size=300000"))
    assert response.body == file_pattern(300_000)
    assert probes(server)["file_reads"] == reads, "the file was read in Python, not sent zero-copy"


def test_file_wrapper_files_are_closed_after_the_response(server: ServerProcess) -> None:
    fd_dir = Path(f"/proc/{server.worker_pid}/fd")

    def deleted_files() -> list[str]:
        names = []
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):  # fds come and go while we look
                target = os.readlink(fd)
                if target.endswith(" (deleted)"):
                    names.append(target)
        return names

    for size in (0, 10, 100_000):
        fetch(server, get(f"/file?size={size}"))
    fetch(server, head("/file?size=10"))
    fetch(server, get("/file-spy?size=1000"))
    assert wait_until(lambda: not deleted_files(), 3), f"file descriptors leaked: {deleted_files()}"


# ------------------------------------------------------------------ wsgiref.validate


@pytest.fixture
def validated_server(pool: ServerPool, mode: str, transport: str) -> ServerProcess:
    return pool.get(*SERVER_MODES[mode], transport=transport, app="apps:validated")


def test_wsgiref_validator_finds_nothing_wrong(validated_server: ServerProcess) -> None:
    server = validated_server
    mark = len(server.stderr)
    with connect(server) as conn:
        assert conn.request(get("/hello")).body == b"Hello, world!"
        echoed = json_of(
            conn.request(post("/echo", b"validated body", headers="Content-Type: text/plain\r\n"))
        )
        assert echoed["body"] == "validated body"
        assert conn.request(head("/hello"), head=True).status == 200
        assert conn.request(get("/stream?n=4&size=3")).body == b"AAABBBCCCDDD"
        assert conn.request(head("/stream?n=4&size=3"), head=True).status == 200
        assert conn.request(get("/write")).body == b"written then returned"
        assert conn.request(get("/file?size=1000")).body == file_pattern(1000)
        assert json_of(conn.request(get("/stats")))["requests"] > 0
    time.sleep(0.2)  # a warning for the last response would be written after it was sent
    log = server.stderr[mark:]
    for marker in ("WSGIWarning", "AssertionError", "Traceback", "Exception ignored", "garbage collected"):
        assert marker not in log, f"validator complaint in stderr:\n{log}"


# ------------------------------------------------------------------ wsgi.input


def send_in_pieces(conn: RawConnectionExtras, start: bytes, pieces: list[bytes], gap: float = 0.15) -> None:
    conn.send(start)
    for piece in pieces:
        time.sleep(gap)
        conn.send(piece)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_wsgi_input_read_n_returns_n_bytes_unless_at_end(server: ServerProcess, framing: str) -> None:
    pieces = [b"x" * 1000, b"y" * 1000, b"z" * 1000]
    with connect(server) as conn:
        if framing == "chunked":
            start = (
                b"POST /input-api?op=read&n=2500 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunks = [b"3e8\r\n" + piece + b"\r\n" for piece in pieces] + [b"0\r\n\r\n"]
        else:
            start = b"POST /input-api?op=read&n=2500 HTTP/1.1\r\nHost: t\r\nContent-Length: 3000\r\n\r\n"
            chunks = pieces
        send_in_pieces(conn, start, chunks)
        assert json_of(conn.read_response())["sizes"] == [2500, 500, 0]


def test_wsgi_input_readline_read_and_read_all(server: ServerProcess) -> None:
    body = b"line one\nline two is longer\nABCDEFGHIJ\nend"
    pieces = [body[:6], body[6:15], body[15:31], body[31:]]
    start = b"POST /input-api?op=mixed&n=5 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    with connect(server) as conn:
        send_in_pieces(conn, start, pieces)
        assert json_of(conn.read_response()) == {
            "readline": "line one\n",
            "readline_n": "line ",
            "read_n": "two i",
            "rest": "s longer\nABCDEFGHIJ\nend",
            "after": "",
        }


def test_wsgi_input_iteration_and_readlines_yield_lines(server: ServerProcess) -> None:
    body = b"alpha\nbeta\n\ngamma"
    with connect(server) as conn:
        start = b"POST /readline HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        send_in_pieces(conn, start, [b"3\r\nalp\r\n", b"e\r\nha\nbeta\n\ngamma\r\n", b"0\r\n\r\n"])
        assert json_of(conn.read_response())["lines"] == ["alpha\n", "beta\n", "\n", "gamma"]
        response = conn.request(post("/input-api?op=readlines", body))
        assert json_of(response)["lines"] == ["alpha\n", "beta\n", "\n", "gamma"]


def test_environ_facts(server: ServerProcess, mode: str, transport: str) -> None:
    with connect(server) as conn:
        environ = json_of(conn.request(get("/echo", headers="")))
        client = conn.sock.getsockname()
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.multithread"] is (mode == "threaded")
    assert environ["wsgi.multiprocess"] is False
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["SCRIPT_NAME"] == ""
    for key in ("SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT"):
        assert isinstance(environ[key], str), key
    if transport == "tcp":
        assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", str(server.port))
        assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == (client[0], str(client[1]))
    else:
        assert environ["SERVER_NAME"]
        assert environ["SERVER_PORT"].isdigit()


# ------------------------------------------------------------------ memory bounds


def slow_read(conn: RawConnectionExtras, server: ServerProcess, seconds: float) -> tuple[int, int]:
    """Read 4 KB every 20 ms for ``seconds``; return (bytes read, peak RSS in kB)."""
    peak = rss_kb(server)
    got = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += len(conn.sock.recv(4096))
        peak = max(peak, rss_kb(server))
        time.sleep(0.02)
    return got, peak


def slow_connection(server: ServerProcess) -> RawConnectionExtras:
    conn = connect(server)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return conn


def test_slow_reader_of_a_streamed_response_does_not_grow_server_memory(tcp_server: ServerProcess) -> None:
    server = tcp_server
    closed = stats(server)["closed"]
    baseline = rss_kb(server)
    with slow_connection(server) as conn:
        conn.send(get("/stream?n=5000&size=10000"))  # 50 MB in 10 KB chunks
        got, peak = slow_read(conn, server, 2.5)
        assert got > 0
    growth = (peak - baseline) / 1024
    assert growth < 20, f"server RSS grew by {growth:.1f} MB for a client that read {got} bytes"
    assert closed_count_reaches(server, closed + 1), "close() not called after disconnect"


def test_slow_reader_of_a_large_body_costs_no_more_than_the_body(tcp_server: ServerProcess) -> None:
    server = tcp_server
    size = 50_000_000
    baseline = rss_kb(server)
    with slow_connection(server) as conn:
        conn.send(get(f"/big?size={size}"))
        got, peak = slow_read(conn, server, 2.5)
        assert got > 0
    # The application itself holds the 50 MB body; the server must not copy it.
    growth = (peak - baseline) / 1024 - size / MB
    assert growth < 20, f"server RSS grew by {growth:.1f} MB beyond the body the app produced"
    assert_still_serving(server)


def test_large_upload_to_an_app_that_never_reads_is_not_buffered(tcp_server: ServerProcess) -> None:
    server = tcp_server
    body_size = 20 * MB
    baseline = rss_kb(server)
    with connect(server) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sent = [0]

        def upload() -> None:
            block = b"u" * 65536
            with contextlib.suppress(OSError):  # the server may cut the upload off
                conn.sock.sendall(
                    b"POST /sleep?seconds=1 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % body_size
                )
                while sent[0] < body_size:
                    conn.sock.sendall(block)
                    sent[0] += len(block)

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        peak = baseline
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            peak = max(peak, rss_kb(server))
            time.sleep(0.02)
        response = conn.read_response()
        peak = max(peak, rss_kb(server))
        assert (response.status, response.body) == (200, b"slept")
        sender.join(15)
        assert not sender.is_alive()
    growth = (peak - baseline) / 1024
    assert growth < 10, f"server RSS grew by {growth:.1f} MB for a 20 MB upload"
    assert_still_serving(server)


def test_many_idle_connections_do_not_block_a_new_client(server: ServerProcess) -> None:
    with contextlib.ExitStack() as stack:
        for i in range(500):
            idle = stack.enter_context(connect(server))
            if i % 2:
                idle.send(b"GET /hello HTTP/1.1\r\n")  # a head that never completes
        with connect(server) as conn:
            response = conn.request(get("/hello"))
            assert (response.status, response.body) == (200, b"Hello, world!")
