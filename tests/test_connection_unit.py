"""``connection.HTTPConnection`` against a fake asyncio transport, without sockets.

The connection runs on a real (socket-less) asyncio loop; the transport records every
call (writes, close, abort, write_eof, pause/resume reading) and calls the protocol's
``pause_writing``/``resume_writing`` itself when its fake buffer passes a high-water mark.
Time is injected: ``rapidwsgi.connection.monotonic`` is replaced by a settable clock and
timeouts are driven by ``ServerContext.check_timeouts(now)``, never by sleeping.

Every test that a client could tell apart by the bytes runs on the Python request path
(``c_path=False``) and, where the C path is built, on it too (``c_path=True``), both held
to the same expected bytes and transport calls.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec

import pytest

from rapidwsgi import connection as rconnection
from rapidwsgi.config import Config
from rapidwsgi.connection import (
    LINGER,
    MAX_PIPELINE_BUFFER,
    SHUTDOWN_IDLE_GRACE,
    THREAD_HIGH_WATER,
    HTTPConnection,
    ServerContext,
)
from rapidwsgi.errors import AppError
from rapidwsgi.log import Clock, errors_stream
from rapidwsgi.protocols.http1 import Limits
from rapidwsgi.worker import base_environ

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]
P = ParamSpec("P")

C_PATH_AVAILABLE: bool = bool(getattr(rconnection, "C_PATH_AVAILABLE", False))
PATHS = [
    pytest.param(False, id="python"),
    pytest.param(
        True, id="c", marks=pytest.mark.skipif(not C_PATH_AVAILABLE, reason="the C path is not built")
    ),
]

T0 = 1000.0
KEEP_ALIVE = 5.0
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
SEND_TIMEOUT = 60.0

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
SERVER = b"Server: rapidwsgi\r\n"


def ok(body: bytes, close: bool = False) -> bytes:
    """The hello app's response (Content-Length framing)."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        + SERVER
        + b"Content-Length: %d\r\n" % len(body)
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


def chunked_head(close: bool = False) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        + SERVER
        + b"Transfer-Encoding: chunked\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def error(status: int, phrase: bytes) -> bytes:
    body = b"%d %b\n" % (status, phrase)
    return (
        b"HTTP/1.1 %d %b\r\nContent-Type: text/plain; charset=utf-8\r\n" % (status, phrase)
        + SERVER
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )


# ---------------------------------------------------------------- fakes


class FakeTime:
    """``monotonic()`` for the connection module: returns ``now``, set by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(rconnection, "monotonic", fake)
    return fake


class FakeTransport:
    """Records each call as a tuple; ``write`` tuples are merged into ``out`` too.

    With ``high_water`` set, a write that leaves more than that many bytes "queued"
    calls the protocol's ``pause_writing``; :meth:`drain` empties the queue and calls
    ``resume_writing`` (as asyncio's transports do).
    """

    def __init__(self, protocol: HTTPConnection, peername: tuple[str, int] | None) -> None:
        self.protocol = protocol
        self.peername = peername
        self.calls: list[tuple[Any, ...]] = []
        self.info: list[str] = []
        self.closing = False
        self.queued = 0
        self.high_water = 0
        self.write_paused = False

    @property
    def out(self) -> bytes:
        return b"".join(call[1] for call in self.calls if call[0] == "write")

    def ends(self) -> list[str]:
        """The transport calls other than writes, in order."""
        return [call[0] for call in self.calls if call[0] != "write"]

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return calls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        self.info.append(name)
        if name == "peername":
            return self.peername
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return default

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.calls.append(("write", bytes(data)))
        if self.high_water:
            self.queued += len(data)
            if self.queued > self.high_water and not self.write_paused:
                self.write_paused = True
                self.protocol.pause_writing()

    def drain(self) -> None:
        self.queued = 0
        if self.write_paused:
            self.write_paused = False
            self.protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self.queued

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close",))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort",))
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append(("write_eof",))

    def pause_reading(self) -> None:
        self.calls.append(("pause_reading",))

    def resume_reading(self) -> None:
        self.calls.append(("resume_reading",))


class Server:
    """A ServerContext with one connection on a FakeTransport (call inside the loop)."""

    def __init__(
        self,
        app: App,
        c_path: bool = False,
        peername: tuple[str, int] | None = ("127.0.0.1", 50000),
        connect: bool = True,
        executor: Executor | None = None,
    ) -> None:
        self.ctx = ServerContext(
            app=app,
            loop=asyncio.get_running_loop(),
            base_environ=base_environ(Config(), errors_stream),
            limits=Limits(),
            clock=Clock(server="rapidwsgi", date=False),
            keep_alive=KEEP_ALIVE,
            header_timeout=HEADER_TIMEOUT,
            body_timeout=BODY_TIMEOUT,
            send_timeout=SEND_TIMEOUT,
            c_path=c_path,
            executor=executor,
            threads=1 if executor is None else 2,
        )
        self.peername = peername
        if connect:
            self.conn, self.transport = self.connect()

    def connect(self) -> tuple[HTTPConnection, FakeTransport]:
        conn = HTTPConnection(self.ctx)
        transport = FakeTransport(conn, self.peername)
        conn.connection_made(transport)  # type: ignore[arg-type]
        # The path asked for is the path taken (the C path serves plain HTTP/1.1).
        assert (conn._fast is not None) is self.ctx.c_path
        return conn, transport

    def tick(self, clock: FakeTime, now: float) -> None:
        clock.now = now
        self.ctx.check_timeouts(now)


def in_loop(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test body on a fresh asyncio loop."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until ``condition()`` (an application thread is involved)."""
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, "timed out"
        await asyncio.sleep(0.001)


class HeldExecutor(Executor):
    """Holds submitted jobs until the test starts them (on a real thread)."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], object]] = []

    def submit(self, fn: Callable[..., object], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs.append(functools.partial(fn, *args, **kwargs))
        return Future()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.jobs.pop(0), daemon=True)
        thread.start()
        return thread


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- applications


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def echo_path(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = (environ["REQUEST_METHOD"] + " " + environ["PATH_INFO"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


class Stream:
    """An app streaming ``chunks`` (chunked framing), counting pulls and close()."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0
        self.closed = 0
        self.calls = 0

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        self.calls += 1
        if environ["PATH_INFO"] != "/":
            return echo_path(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.pulled >= len(self.chunks):
            raise StopIteration
        self.pulled += 1
        return self.chunks[self.pulled - 1]

    def close(self) -> None:
        self.closed += 1


# ---------------------------------------------------------------- requests and responses


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_keep_alive_request_and_response(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    server.conn.data_received(GET)
    assert server.transport.take() == [
        (
            "write",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: rapidwsgi\r\n"
            b"Content-Length: 5\r\n\r\nhello",
        )
    ]
    server.conn.data_received(GET)
    assert server.transport.take() == [("write", ok(b"hello"))]
    assert server.ctx.connections == {server.conn}
    # The socket's addresses are asked once per connection, never per request.
    assert server.transport.info == ["sockname", "peername"]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_pipelined_requests_are_answered_in_order(c_path: bool, clock: FakeTime) -> None:
    server = Server(echo_path, c_path)
    server.conn.data_received(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /two HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    head_two = ok(b"HEAD /two")[: -len(b"HEAD /two")]
    assert server.transport.out == ok(b"GET /one") + head_two + ok(b"GET /three")
    assert server.transport.ends() == []


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_connection_close_request_half_closes_then_lingers(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    server.conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert server.transport.take() == [("write", ok(b"hello", close=True)), ("write_eof",)]
    # Lingering: what the client still sends is read and dropped, never answered, and
    # reading never pauses (however much comes), or the linger could not discard it.
    server.conn.data_received(GET)
    server.conn.data_received(b"x" * (MAX_PIPELINE_BUFFER + 1))
    assert server.transport.take() == []
    assert server.conn.wire.buffered == 0  # discarded, not held
    server.tick(clock, T0 + LINGER - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + LINGER)
    assert server.transport.take() == [("close",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_lingering_ends_at_the_clients_eof(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    server.conn.data_received(b"GET / HTTP/1.0\r\n\r\n")
    assert server.transport.take() == [("write", ok(b"hello", close=True)), ("write_eof",)]
    assert server.conn.eof_received() is False
    assert server.transport.take() == [("close",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_bad_request_is_400_and_close(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    server.conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n" + GET)
    assert server.transport.take() == [("write", error(400, b"Bad Request")), ("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_short_body_aborts(c_path: bool, clock: FakeTime) -> None:
    """Fewer bytes than the app's Content-Length: what was written stays, then abort
    (never a complete-looking response on a reused connection)."""

    def short(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        return [b"abc"]

    server = Server(short, c_path)
    server.conn.data_received(GET + GET)
    assert server.transport.take() == [
        ("write", b"HTTP/1.1 200 OK\r\n" + SERVER + b"Content-Length: 10\r\n\r\nabc"),
        ("abort",),
    ]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_long_body_is_truncated_and_the_connection_reused(c_path: bool, clock: FakeTime) -> None:
    def long(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "3")])
        return [b"abcdef"]

    server = Server(long, c_path)
    server.conn.data_received(GET + GET)
    response = b"HTTP/1.1 200 OK\r\n" + SERVER + b"Content-Length: 3\r\n\r\nabc"
    assert server.transport.out == response + response
    assert server.transport.ends() == []


@in_loop
async def test_write_after_the_response_raises_and_adds_no_bytes(clock: FakeTime) -> None:
    writes: list[Callable[[bytes], None]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        writes.append(start_response("200 OK", [("Content-Type", "text/plain")]))
        return iter([b"x"])

    server = Server(app)
    server.conn.data_received(GET)
    assert server.transport.take() == [("write", chunked_head() + chunk(b"x")), ("write", b"0\r\n\r\n")]
    with pytest.raises(AppError, match=r"^write\(\) called after the response was complete$"):
        writes[0](b"late")
    assert server.transport.take() == []


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_http10_keep_alive_is_answered_with_keep_alive(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    server.conn.data_received(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert server.transport.take() == [
        (
            "write",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + SERVER
            + b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
        )
    ]


# ---------------------------------------------------------------- flow control


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_pause_writing_stops_the_iterable_and_resume_writing_continues_it(
    c_path: bool, clock: FakeTime
) -> None:
    app = Stream([b"a", b"b", b"c"])
    server = Server(app, c_path)
    server.transport.high_water = 1
    server.conn.data_received(GET)
    assert server.transport.take() == [("write", chunked_head() + chunk(b"a"))]
    assert app.pulled == 1
    server.transport.drain()
    assert server.transport.take() == [("write", chunk(b"b"))]
    assert app.pulled == 2
    server.transport.drain()
    assert server.transport.take() == [("write", chunk(b"c"))]
    server.transport.drain()
    assert server.transport.take() == [("write", b"0\r\n\r\n")]
    assert (app.pulled, app.closed) == (3, 1)
    # Keep-alive: the next request is served.
    server.transport.drain()
    server.conn.data_received(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.transport.take() == [("write", ok(b"GET /next"))]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_inline_iteration_yields_to_the_loop_after_32_chunks(c_path: bool, clock: FakeTime) -> None:
    app = Stream([b"%d" % (i % 10) for i in range(40)])
    server = Server(app, c_path)
    server.conn.data_received(GET)
    assert app.pulled == 32
    assert server.transport.out == chunked_head() + b"".join(chunk(c) for c in app.chunks[:32])
    await settle()
    assert app.pulled == 40
    assert server.transport.out == chunked_head() + b"".join(chunk(c) for c in app.chunks) + b"0\r\n\r\n"
    assert app.closed == 1


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_reading_pauses_past_the_pipeline_buffer_and_resumes_after_the_response(
    c_path: bool, clock: FakeTime
) -> None:
    app = Stream([b"a", b"b"])
    server = Server(app, c_path)
    server.transport.high_water = 1
    server.conn.data_received(GET)
    server.transport.take()
    # A pipelined POST, held unparsed while the first response is paused.
    total = MAX_PIPELINE_BUFFER + 1
    head = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    length = total - len(head % 100000)
    pipelined = head % length + b"x" * length
    assert len(pipelined) == total
    server.conn.data_received(pipelined[:-1])  # exactly MAX_PIPELINE_BUFFER: still reading
    assert server.transport.take() == []
    server.conn.data_received(pipelined[-1:])
    assert server.transport.take() == [("pause_reading",)]
    server.transport.drain()
    assert server.transport.take() == [("write", chunk(b"b"))]
    server.transport.drain()
    assert server.transport.take() == [
        ("write", b"0\r\n\r\n"),
        ("resume_reading",),
        ("write", ok(b"POST /big")),
    ]
    assert app.calls == 2


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_threaded_body_buffer_pauses_reading_at_high_water_until_the_app_reads(
    c_path: bool, clock: FakeTime
) -> None:
    def upload(environ: Environ, start_response: StartResponse) -> list[bytes]:
        size = len(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % size]

    executor = HeldExecutor()
    server = Server(upload, c_path, executor=executor)
    length = THREAD_HIGH_WATER + 1000
    server.conn.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length)
    assert len(executor.jobs) == 1  # dispatched at the head, the body still to come
    server.conn.data_received(b"x" * (THREAD_HIGH_WATER - 1))
    assert server.transport.take() == []
    server.conn.data_received(b"x")
    assert server.transport.take() == [("pause_reading",)]
    thread = executor.start()  # the application reads: the buffer drains
    try:
        await until(lambda: bool(server.transport.calls))
        assert server.transport.take() == [("resume_reading",)]
        server.conn.data_received(b"x" * 1000)
        await until(lambda: bool(server.transport.calls))
        assert server.transport.take() == [("write", ok(b"%d" % length))]
    finally:
        server.conn.connection_lost(None)  # (on failure: the reading thread gives up)
        thread.join(5)


def early(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Answers without reading the request body."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"early"]


async def early_answer(server: Server, executor: HeldExecutor) -> threading.Thread:
    """A POST whose body is still coming is answered (threaded) without being read."""
    server.conn.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    thread = executor.start()
    await until(lambda: bool(server.transport.calls))
    thread.join(5)
    assert server.transport.take() == [("write", ok(b"early"))]
    return thread


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_unread_body_is_drained_and_the_next_request_served(c_path: bool, clock: FakeTime) -> None:
    executor = HeldExecutor()
    server = Server(early, c_path, executor=executor)
    await early_answer(server, executor)
    server.conn.data_received(b"defghij" + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    thread = executor.start()
    await until(lambda: bool(server.transport.calls))
    thread.join(5)
    assert server.transport.take() == [("write", ok(b"early"))]
    assert server.transport.ends() == []


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_drain_timeout_closes_without_a_408(c_path: bool, clock: FakeTime) -> None:
    executor = HeldExecutor()
    server = Server(early, c_path, executor=executor)
    clock.now = T0 + 1
    await early_answer(server, executor)
    server.tick(clock, T0 + 1 + BODY_TIMEOUT - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + 1 + BODY_TIMEOUT)
    assert server.transport.take() == [("close",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_client_gone_while_paused_closes_the_iterable_once(c_path: bool, clock: FakeTime) -> None:
    app = Stream([b"a", b"b"])
    server = Server(app, c_path)
    server.transport.high_water = 1
    server.conn.data_received(GET)
    assert server.transport.take() == [("write", chunked_head() + chunk(b"a"))]
    server.conn.connection_lost(None)
    assert (app.pulled, app.closed) == (1, 1)
    assert server.transport.take() == []
    assert server.ctx.connections == set()


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_send_timeout_aborts_a_client_that_stopped_reading(c_path: bool, clock: FakeTime) -> None:
    app = Stream([b"a", b"b"])
    server = Server(app, c_path)
    server.transport.high_water = 1
    clock.now = T0 + 1
    server.conn.data_received(GET)
    server.transport.take()
    server.tick(clock, T0 + 1 + SEND_TIMEOUT - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + 1 + SEND_TIMEOUT)
    # One abort, no bytes (the paused exchange's disconnect() re-enters abort() once;
    # the transport is aborted by that inner call only).
    assert server.transport.take() == [("abort",)]
    assert app.closed == 1


# ---------------------------------------------------------------- timeouts


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_keep_alive_idle_timeout_closes_cleanly(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    clock.now = T0 + 2
    server.conn.data_received(GET)
    server.transport.take()
    server.tick(clock, T0 + 2 + KEEP_ALIVE - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + 2 + KEEP_ALIVE)
    # No 408 for an idle connection: half-close, then the lingering close.
    assert server.transport.take() == [("write_eof",)]
    server.tick(clock, T0 + 2 + KEEP_ALIVE + LINGER)
    assert server.transport.take() == [("close",)]


@in_loop
async def test_a_connection_that_sends_nothing_closes_at_the_header_timeout(clock: FakeTime) -> None:
    server = Server(hello)
    server.tick(clock, T0 + HEADER_TIMEOUT - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + HEADER_TIMEOUT)
    assert server.transport.take() == [("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_header_timeout_from_the_first_byte_of_the_head_is_408(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    clock.now = T0 + 3
    server.conn.data_received(b"GET / HTTP/1.1\r\nHo")
    clock.now = T0 + 8
    server.conn.data_received(b"st: x\r\n")  # more bytes do not extend it
    server.tick(clock, T0 + 3 + HEADER_TIMEOUT - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + 3 + HEADER_TIMEOUT)
    assert server.transport.take() == [("write", error(408, b"Request Timeout")), ("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_body_timeout_counts_from_the_last_body_bytes(c_path: bool, clock: FakeTime) -> None:
    server = Server(echo_path, c_path)
    server.conn.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    clock.now = T0 + 20
    server.conn.data_received(b"def")
    server.tick(clock, T0 + 20 + BODY_TIMEOUT - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + 20 + BODY_TIMEOUT)
    assert server.transport.take() == [("write", error(408, b"Request Timeout")), ("write_eof",)]


@in_loop
async def test_a_body_completed_in_time_is_answered(clock: FakeTime) -> None:
    server = Server(echo_path)
    server.conn.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
    server.tick(clock, T0 + BODY_TIMEOUT - 0.001)
    server.conn.data_received(b"def")
    assert server.transport.take() == [("write", ok(b"POST /up"))]
    # The keep-alive deadline now runs from the response.
    server.tick(clock, T0 + BODY_TIMEOUT - 0.001 + KEEP_ALIVE)
    assert server.transport.take() == [("write_eof",)]


# ---------------------------------------------------------------- graceful shutdown


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_shutdown_closes_an_idle_direct_client_after_the_grace(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    server.conn.data_received(GET)
    server.transport.take()
    clock.now = T0 + 1
    server.ctx.shutdown()
    assert server.transport.take() == []
    server.tick(clock, T0 + 1 + SHUTDOWN_IDLE_GRACE - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + 1 + SHUTDOWN_IDLE_GRACE)
    assert server.transport.take() == [("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_shutdown_answers_a_request_in_the_grace_with_close(c_path: bool, clock: FakeTime) -> None:
    server = Server(hello, c_path)
    server.ctx.shutdown()
    server.conn.data_received(GET + GET)
    assert server.transport.take() == [("write", ok(b"hello", close=True)), ("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_shutdown_keeps_an_idle_proxy_connection_to_its_keep_alive_deadline(
    c_path: bool, clock: FakeTime
) -> None:
    server = Server(hello, c_path)
    # A trusted peer that forwards for clients pools its connections: see begin_shutdown.
    server.conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
    server.transport.take()
    clock.now = T0 + 1
    server.ctx.shutdown(drain_deadline=T0 + 30)
    server.tick(clock, T0 + KEEP_ALIVE - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + KEEP_ALIVE)
    assert server.transport.take() == [("write_eof",)]


@in_loop
async def test_shutdown_closes_an_idle_proxy_connection_before_the_drain_deadline(clock: FakeTime) -> None:
    server = Server(hello)
    server.conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
    server.transport.take()
    server.ctx.shutdown(drain_deadline=T0 + 3)
    server.tick(clock, T0 + 3 - LINGER - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + 3 - LINGER)
    assert server.transport.take() == [("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_shutdown_while_the_application_runs_closes_after_its_response(
    c_path: bool, clock: FakeTime
) -> None:
    servers: list[Server] = []

    def stopping(environ: Environ, start_response: StartResponse) -> list[bytes]:
        servers[0].ctx.shutdown()
        return hello(environ, start_response)

    server = Server(stopping, c_path)
    servers.append(server)
    server.conn.data_received(GET + GET)
    assert server.transport.take() == [("write", ok(b"hello", close=True)), ("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_shutdown_with_a_body_in_flight_answers_with_close(c_path: bool, clock: FakeTime) -> None:
    server = Server(echo_path, c_path)
    server.conn.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    server.ctx.shutdown()
    server.conn.data_received(b"cd")
    assert server.transport.take() == [("write", ok(b"POST /up", close=True)), ("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_shutdown_after_the_head_went_out_closes_when_idle(c_path: bool, clock: FakeTime) -> None:
    app = Stream([b"a", b"b"])
    server = Server(app, c_path)
    server.transport.high_water = 1
    server.conn.data_received(GET)
    assert server.transport.take() == [("write", chunked_head() + chunk(b"a"))]
    clock.now = T0 + 1
    server.ctx.shutdown()
    server.transport.drain()
    server.transport.drain()
    # The response ends as it began (keep-alive framing); the idle connection then
    # gets the stop's grace, and a request in it is answered with close.
    assert server.transport.take() == [("write", chunk(b"b")), ("write", b"0\r\n\r\n")]
    server.tick(clock, T0 + 1 + SHUTDOWN_IDLE_GRACE - 0.001)
    server.conn.data_received(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.transport.take() == [("write", ok(b"GET /late", close=True)), ("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_a_connection_made_during_shutdown_closes_after_its_first_response(
    c_path: bool, clock: FakeTime
) -> None:
    server = Server(hello, c_path, connect=False)
    server.ctx.shutdown()
    conn, transport = server.connect()
    conn.data_received(GET)
    assert transport.take() == [("write", ok(b"hello", close=True)), ("write_eof",)]


@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_close_after_response_keeps_the_idle_deadline_and_closes_after_the_next(
    c_path: bool, clock: FakeTime
) -> None:
    server = Server(hello, c_path)
    server.conn.data_received(GET)
    server.transport.take()
    server.ctx.announce_stop()
    assert server.ctx.ready is False
    server.tick(clock, T0 + KEEP_ALIVE - 0.001)
    assert server.transport.take() == []
    server.conn.data_received(GET)
    assert server.transport.take() == [("write", ok(b"hello", close=True)), ("write_eof",)]


@in_loop
async def test_announce_stop_lets_an_idle_connection_reach_its_keep_alive_deadline(clock: FakeTime) -> None:
    server = Server(hello)
    server.conn.data_received(GET)
    server.transport.take()
    server.ctx.announce_stop()
    server.tick(clock, T0 + KEEP_ALIVE - 0.001)
    assert server.transport.take() == []
    server.tick(clock, T0 + KEEP_ALIVE)
    assert server.transport.take() == [("write_eof",)]
