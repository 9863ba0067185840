"""Request bodies the application may never read: Expect: 100-continue and the body limit.

Over the wire against a real server in both dispatch modes (``--threads 1`` inline,
``--threads 4`` threaded), raw bytes:

* ``Expect: 100-continue`` (RFC 9110 §10.1.1): ``100 Continue`` only when the
  application reads the body, exactly once; an application that answers without
  reading gets its final response out with no 100 and ``Connection: close`` (the
  server then closes rather than guessing whether the client sends the body: a request
  the client pipelines after that body is not answered). Inline, such a request runs
  on a helper thread, never at the same time as another application call.
* ``--limit-request-body`` (default 1 GiB): a declared length beyond it is a 413 before
  any byte of the body is read, spooled, or any 100 sent; a chunked or streamed body is
  cut at the limit with 413 (an abort once the response has started); the inline spool
  file never grows past it. The same over uwsgi and FastCGI.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import pytest

from rapidwsgi.protocols import fastcgi as fcgi
from tests.conftest import ServerProcess
from tests.fuzz_gateway import fastcgi_request, uwsgi_packet
from tests.rawhttp import SERVER_MODES, ServerPool, connect, get, json_of, wait_until

pytestmark = pytest.mark.usefixtures("servers_survive")  # pool: conftest.py

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TIB = 1 << 40  # 1099511627776


def expect_head(path: str, length: int | None, extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\n{framing}\r\nExpect: 100-continue\r\n{extra}\r\n"
    return head.encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@pytest.fixture
def server(pool: ServerPool, mode: str, transport: str) -> ServerProcess:
    return pool.get(*SERVER_MODES[mode], transport=transport)


@pytest.fixture
def body_server(pool: ServerPool, mode: str) -> ServerProcess:
    return pool.get(*SERVER_MODES[mode], app="bodyapps:app")


@pytest.fixture
def limited(pool: ServerPool, mode: str) -> ServerProcess:
    return pool.get(*SERVER_MODES[mode], "--limit-request-body", "10")


# ------------------------------------------------------------------ Expect: 100-continue


def test_app_that_never_reads_answers_a_waiting_client_without_100_then_closes(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(expect_head("/noread", 10))  # and wait for the final status (§10.1.1)
        response = conn.read_response()
        assert conn.buf == b""
        assert (response.status, response.body, response.header("connection")) == (200, b"noread", "close")
        # The client sends the body and a pipelined request anyway: the connection was
        # announced closed; it ends cleanly (no reset) and the request is not answered.
        conn.send(b"0123456789" + get("/hello"))
        assert conn.read_to_end(5) == (b"", "eof")


def test_app_that_reads_gets_exactly_one_100_then_its_response(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(expect_head("/echo", 11))
        assert conn.read_exactly(len(CONTINUE)) == CONTINUE
        assert not conn.data_within(0.3), f"more than one interim response: {conn.buf!r}"
        conn.send(b"hello world")
        response = conn.read_response()
        assert (json_of(response)["body"], response.header("connection")) == ("hello world", None)
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_chunked_body_with_expect_gets_100_when_read_then_the_response(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(expect_head("/echo", None))
        assert conn.read_exactly(len(CONTINUE)) == CONTINUE
        conn.send(chunk(b"chun") + chunk(b"ked") + b"0\r\n\r\n")
        assert json_of(conn.read_response())["body"] == "chunked"
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_body_sent_with_the_head_despite_expect_gets_no_100_and_keeps_the_connection(
    server: ServerProcess,
) -> None:
    with connect(server) as conn:
        response = conn.request(expect_head("/noread", 5) + b"12345" + get("/hello"))
        assert (response.status, response.body, response.header("connection")) == (200, b"noread", None)
        assert conn.read_response().body == b"Hello, world!"


def test_inline_expect_request_runs_on_a_helper_thread_never_beside_another_app_call(
    pool: ServerPool, tmp_path: Path
) -> None:
    server = pool.get(*SERVER_MODES["inline"], app="bodyapps:app")
    mark = tmp_path / "entered"
    with connect(server) as waiting, connect(server) as other:
        waiting.send(expect_head(f"/hold-then-read?seconds=1&mark={mark}", 5))
        assert wait_until(mark.exists, 5), "the application did not start before the body"
        # The helper thread is in application code now: the loop thread must wait for
        # it before it runs another call.
        probe = json_of(other.request(get("/probe")))
        assert probe == {"overlapped": 0, "thread": "MainThread"}
        assert waiting.read_exactly(len(CONTINUE)) == CONTINUE
        waiting.send(b"later")
        assert json_of(waiting.read_response()) == {"overlapped": 0, "body": "later"}
        threads = json_of(waiting.request(expect_head("/thread", 3) + b"abc"))
        assert threads == {"thread": "MainThread"}, "a complete body needs no helper thread"
    with connect(server) as conn:
        conn.send(expect_head("/thread", 3))
        thread = json_of(conn.read_response())["thread"]
        assert thread.startswith("rapidwsgi-expect"), thread


# ------------------------------------------------------------------ body limit


def test_declared_body_over_the_limit_is_413_before_any_100(limited: ServerProcess) -> None:
    with connect(limited) as conn:
        conn.send(expect_head("/echo", 11))
        response = conn.read_response()
        assert (response.status, response.header("connection")) == (413, "close")
        assert conn.read_to_end(5) == (b"", "eof")


def test_chunked_body_with_expect_over_the_limit_is_413_after_the_100(limited: ServerProcess) -> None:
    with connect(limited) as conn:
        conn.send(expect_head("/echo", None))
        assert conn.read_exactly(len(CONTINUE)) == CONTINUE
        conn.send(chunk(b"hello") + chunk(b" world") + b"0\r\n\r\n")
        response = conn.read_response()
        assert (response.status, response.header("connection")) == (413, "close")
        assert conn.read_to_end(5) == (b"", "eof")


def spool_files(pid: int, directory: Path) -> list[str]:
    """The files under ``directory`` that process ``pid`` holds open (deleted ones too)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect"])
def test_one_tib_content_length_is_413_at_once_with_the_default_limit_and_nothing_spooled(
    start_server: type[ServerProcess], mode: str, spool_dir: Path, expect: bool
) -> None:
    server = start_server("apps:app", *SERVER_MODES[mode], env={"TMPDIR": str(spool_dir)})
    head = f"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {TIB}\r\n"
    head += "Expect: 100-continue\r\n\r\n" if expect else "\r\n"
    with connect(server) as conn:
        conn.send(head.encode())
        # Not a byte of the body sent: the answer comes from the head alone.
        response = conn.read_response()
        assert (response.status, response.header("connection")) == (413, "close")
        assert conn.read_to_end(5) == (b"", "eof")
    assert spool_files(server.worker_pid, spool_dir) == []
    assert list(spool_dir.iterdir()) == []


def test_inline_spool_grows_only_up_to_the_limit_and_is_dropped_with_the_413(
    start_server: type[ServerProcess], spool_dir: Path
) -> None:
    limit = 3 << 20
    args = (*SERVER_MODES["inline"], "--limit-request-body", str(limit))
    server = start_server("apps:app", *args, env={"TMPDIR": str(spool_dir)})
    worker = server.worker_pid
    block = b"x" * 65536
    with connect(server) as conn:
        conn.send(b"POST /digest HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.send(chunk(block) * 32)  # 2 MiB: past the 1 MiB kept in memory
        assert wait_until(lambda: len(spool_files(worker, spool_dir)) == 1, 5), "the body was not spooled"
        with contextlib.suppress(OSError):  # the server may answer and close meanwhile
            conn.send(chunk(block) * 32)  # 4 MiB in all: past the limit
        response = conn.read_response()
        assert (response.status, response.header("connection")) == (413, "close")
    assert wait_until(lambda: spool_files(worker, spool_dir) == [], 5)


def test_threaded_chunked_body_over_the_limit_is_413(pool: ServerPool) -> None:
    server = pool.get(*SERVER_MODES["threaded"], "--limit-request-body", "10")
    with connect(server) as conn:
        conn.send(b"POST /digest HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.send(chunk(b"hello") + chunk(b" world") + b"0\r\n\r\n")
        response = conn.read_response()
        assert (response.status, response.header("connection")) == (413, "close")


@pytest.mark.parametrize(
    ("mode", "headers"),
    [("threaded", ""), ("inline", "Expect: 100-continue\r\n")],
    ids=["threaded", "inline-expect"],
)
def test_limit_reached_after_the_response_started_aborts_it(
    pool: ServerPool, mode: str, headers: str
) -> None:
    server = pool.get(*SERVER_MODES[mode], "--limit-request-body", "10", app="bodyapps:app")
    with connect(server) as conn:
        head_ = f"POST /stream-then-read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{headers}\r\n"
        conn.send(head_.encode())
        head = conn.read_head()  # no 100 before it: the app answered before reading
        assert (head.status, head.header("transfer-encoding")) == (200, "chunked")
        assert conn.read_exactly(len(chunk(b"started"))) == chunk(b"started")
        conn.send(chunk(b"hello") + chunk(b" world"))
        rest, outcome = conn.read_to_end(5)
        # Never a complete response: no terminating chunk, the connection cut.
        assert (rest, outcome in ("eof", "reset")) == (b"", True)


# ------------------------------------------------------------------ uwsgi and FastCGI


@pytest.fixture
def gateways(start_server: type[ServerProcess], mode: str, tmp_path: Path) -> ServerProcess:
    return start_server(
        "apps:app",
        *SERVER_MODES[mode],
        "--bind",
        f"unix:{tmp_path}/fcgi.sock",
        "--bind",
        f"unix:{tmp_path}/uwsgi.sock",
        "--protocol",
        "fastcgi",
        "--protocol",
        "uwsgi",
        "--limit-request-body",
        "1000",
        bind=None,
        listeners=2,
    )


def gateway_exchange(path: str, data: bytes, timeout: float = 5.0) -> tuple[bytes, str]:
    """Send ``data`` without half-closing; all bytes until the server closes, and how."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        with contextlib.suppress(OSError):  # the server answered and closed meanwhile
            sock.sendall(data)
        received = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                return bytes(received), "reset"
            except TimeoutError:
                break
            if not part:
                return bytes(received), "eof"
            received += part
        return bytes(received), "timeout"


def fastcgi_status(data: bytes) -> tuple[bytes, list[int]]:
    """The status line of a FastCGI reply's STDOUT, and the record types in order."""
    kinds, stdout, pos = [], b"", 0
    while pos + 8 <= len(data):
        _, kind, _, length, padding = fcgi.HEADER.unpack_from(data, pos)
        content = data[pos + 8 : pos + 8 + length]
        if kind == fcgi.STDOUT:
            stdout += content
        kinds.append(kind)
        pos += 8 + length + padding
    return stdout.partition(b"\r\n")[0], kinds


POST = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/digest"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]


def test_uwsgi_declared_length_over_the_limit_is_413_before_the_body(gateways: ServerProcess) -> None:
    path = str(gateways.addresses[1])
    packet = uwsgi_packet([*POST, (b"CONTENT_LENGTH", b"%d" % TIB)])
    data, how = gateway_exchange(path, packet)
    assert (data.partition(b"\r\n")[0][:13], how) == (b"HTTP/1.1 413 ", "eof")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed-stdin"])
def test_fastcgi_body_over_the_limit_is_413(gateways: ServerProcess, declared: bool) -> None:
    path = str(gateways.addresses[0])
    body = b"x" * 1500
    params = [*POST, (b"CONTENT_LENGTH", b"1500")] if declared else POST
    data, how = gateway_exchange(path, fastcgi_request(params, body, stdin_split=500))
    status, kinds = fastcgi_status(data)
    assert (status[:12], kinds[-1], how) == (b"Status: 413 ", fcgi.END_REQUEST, "eof")


def test_fastcgi_streamed_stdin_within_the_limit_is_served(gateways: ServerProcess) -> None:
    path = str(gateways.addresses[0])
    data, how = gateway_exchange(path, fastcgi_request(POST, b"y" * 900, stdin_split=300))
    status, kinds = fastcgi_status(data)
    assert (status, kinds[-1], how) == (b"Status: 200 OK", fcgi.END_REQUEST, "eof")
    assert b'"length": 900' in data
