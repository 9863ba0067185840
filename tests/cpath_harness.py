"""The differential harness that holds the C request path to the Python one.

:func:`run_connection` drives one :class:`~rapidwsgi.connection.HTTPConnection` on a real
(but socket-less) asyncio loop through a :class:`RecordingTransport`, feeding the given
chunks as ``data_received`` calls, then EOF, then a timeout tick far in the future, then
``connection_lost``; the returned :class:`Run` holds everything a client or the
application could tell apart: the bytes written (``write`` and ``sendfile`` in stream
order), the transport calls that end or half-close the connection (and at which output
offset), whether reading was left paused, what ``eof_received`` returned, the environ
and the other observations of the application, the error log, and any exception that
escaped a protocol callback. :func:`differential` runs the same input and application
twice, ``ServerContext(c_path=False)`` (the reference) and ``c_path=True``, and
:func:`assert_same_run` requires identical runs.

Shared by ``tests/test_cpath.py``, ``tests/fuzz_cparser.py`` and
``tests/test_cparser_fuzz.py``. When the C extension is not built
(``connection.C_PATH_AVAILABLE`` is False) both runs take the reference path: the
comparison then checks that the harness itself is deterministic.

Determinism: the ``Date`` header comes from :func:`fixed_clock`; after every input
step the loop runs until nothing is ready and every application thread has finished
or waits for request body bytes (:func:`_settle`), so a helper thread's ``100
Continue`` is never raced by the next chunk.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any

from rapidwsgi import connection as rconnection
from rapidwsgi.config import Config
from rapidwsgi.connection import HTTPConnection, ServerContext
from rapidwsgi.log import Clock, error_log, errors_stream
from rapidwsgi.protocols.http1 import Limits
from rapidwsgi.static import StaticFiles, parse_mount
from rapidwsgi.worker import base_environ
from rapidwsgi.wsgi import FileWrapper

C_PATH_AVAILABLE: bool = bool(getattr(rconnection, "C_PATH_AVAILABLE", False))

#: The wall time of fixed_clock() (a Tuesday in November 2023).
FIXED_WALL = 1_700_000_000.0
#: Seconds after which _settle gives up (an application thread that never finishes).
SETTLE_TIMEOUT = 10.0

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]
#: An application under test: it also gets the run's log to record what it saw.
LoggingApp = Callable[[Environ, StartResponse, "list[object]"], Iterable[bytes]]


def fixed_clock() -> Clock:
    """A :class:`~rapidwsgi.log.Clock` whose ``Date`` is FIXED_WALL (the harness never
    ticks it; a subclass would not do: the compiled build's Clock is a native class)."""
    clock = Clock()
    date = b"Date: " + formatdate(FIXED_WALL, usegmt=True).encode("ascii") + b"\r\n"
    server = b"Server: rapidwsgi\r\n"
    clock.date_server = (date + server, date, server, b"")
    clock.wall = FIXED_WALL
    clock.log_time = time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(FIXED_WALL))
    return clock


@dataclass(frozen=True)
class Setup:
    """How the server and the connection are configured for one run."""

    peername: tuple[str, int] | None = ("127.0.0.1", 50000)
    sockname: tuple[str, int] | str = ("127.0.0.1", 8000)
    root_path: str = ""
    threads: int = 1
    tls: bool = False
    proxy_protocol: bool = False
    limits: tuple[tuple[str, int], ...] = ()
    shutting_down: bool = False
    #: Whether the application wrapper reads ``wsgi.input`` to the end before the app runs.
    read_body: bool = True
    #: ``--static /static/=DIR --static-index`` (a fresh StaticFiles per run).
    static_root: str | None = None
    static_sendfile: str = "auto"

    def make_limits(self) -> Limits:
        return Limits(**dict(self.limits))


TRUSTED = Setup()
UNTRUSTED = Setup(peername=("10.9.8.7", 41000))


class RecordingTransport:
    """A fake transport that records everything (see the module docstring).

    ``get_extra_info("socket")`` is one end of a socketpair so that sendfile works;
    what reaches the other end is moved into ``out`` before every transport call, so
    ``out`` holds the response bytes in stream order. A half-close of that socket
    (``HTTPConnection._shutdown_now``) is recorded as ``fin``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, setup: Setup) -> None:
        self.loop = loop
        self.setup = setup
        self.out = bytearray()
        #: ("close" | "abort" | "write_eof" | "fin" | "auto-close" | misuse, offset in ``out``).
        self.calls: list[tuple[str, int]] = []
        #: pause_reading / resume_reading, in order (diagnostics).
        self.reading: list[str] = []
        self.paused = False
        self.closing = False
        self.eof_written = False
        self.protocol: HTTPConnection | None = None
        self.sock, self._peer = socket.socketpair()
        # Room for a whole sendfile response: the peer is only drained on transport
        # calls, so a full buffer would leave sendfile waiting for ever.
        for end, option in ((self.sock, socket.SO_SNDBUF), (self._peer, socket.SO_RCVBUF)):
            end.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
        self.sock.setblocking(False)
        self._peer.setblocking(False)
        self._peer_eof = False
        self.lost = False

    # -- the transport API HTTPConnection uses

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.setup.peername
        if name == "sockname":
            return self.setup.sockname
        if name == "socket":
            return None if self.lost else self.sock
        return default

    def write(self, data: bytes) -> None:
        self._sync()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self.eof_written:
            # asyncio and uvloop transports refuse this; record it instead of hiding it.
            self.calls.append(("write-after-write_eof", len(self.out)))
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.closing:
            if data:
                self.calls.append(("write-after-close", len(self.out)))
            return
        self.out += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._sync()
        self.calls.append(("write_eof", len(self.out)))
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._end("close")

    def abort(self) -> None:
        self._end("abort")

    def pause_reading(self) -> None:
        self.reading.append("pause")
        self.paused = True

    def resume_reading(self) -> None:
        self.reading.append("resume")
        self.paused = False

    # -- harness side

    def _end(self, name: str) -> None:
        self._sync()
        self.calls.append((name, len(self.out)))
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self._connection_lost)

    def _connection_lost(self) -> None:
        if not self.lost:
            self._sync()
            self.lost = True
            assert self.protocol is not None
            self.protocol.connection_lost(None)

    def _sync(self) -> None:
        """Move what sendfile put into the socket to ``out``; note a half-close."""
        if self._peer_eof:
            return
        while True:
            try:
                data = self._peer.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                self._peer_eof = True
                self.calls.append(("fin", len(self.out)))
                return
            self.out += data

    def release(self) -> None:
        self._sync()
        self.sock.close()
        self._peer.close()


@dataclass
class Run:
    """What one connection did with one input (compared field by field)."""

    out: bytes = b""
    calls: list[tuple[str, int]] = field(default_factory=list)
    #: Output length and calls once all chunks were fed (before EOF).
    before_eof: tuple[int, tuple[tuple[str, int], ...]] = (0, ())
    #: Output length and calls once EOF was handled (before the timeout tick).
    before_tick: tuple[int, tuple[tuple[str, int], ...]] = (0, ())
    #: Chunks fed before the transport closed (or reading stayed paused).
    fed: int = 0
    stalled: bool = False
    paused_at_end: bool = False
    eof_result: bool | None = None
    #: One list per application call: ("call", environ, thread, loop, context var), then
    #: what the application recorded.
    app_log: list[list[object]] = field(default_factory=list)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    #: pause/resume sequence (diagnostics only, not compared).
    reading: list[str] = field(default_factory=list)
    #: Static answers the C path wrote itself (StaticFiles.quick_served; not compared).
    static_quick: int = 0

    def compared(self) -> dict[str, object]:
        return {
            "out": self.out,
            "calls": self.calls,
            "before_eof": self.before_eof,
            "before_tick": self.before_tick,
            "fed": self.fed,
            "stalled": self.stalled,
            "paused_at_end": self.paused_at_end,
            "eof_result": self.eof_result,
            "app_log": self.app_log,
            # Sorted: with application threads, one request's close() (and what it logs)
            # may overlap the next request on another thread, in either order.
            "errors": sorted(self.errors),
            "exceptions": self.exceptions,
        }


class _Capture(logging.Handler):
    def __init__(self, sink: list[tuple[str, str, str]]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.sink.append((record.levelname, record.getMessage(), "" if exc is None else type(exc).__name__))


#: A context variable the applications may set; each request must start with the default.
REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("rapidwsgi_test_request", default="unset")


def environ_snapshot(environ: Environ, read_body: bool) -> dict[str, object]:
    """Every environ key and value, comparable across runs (and wsgi.input's bytes)."""
    snap: dict[str, object] = {}
    for key, value in environ.items():
        if key == "wsgi.input":
            body = value.read() if read_body else None
            snap[key] = (type(value).__name__, body)
        elif key == "wsgi.errors":
            snap[key] = ("wsgi.errors is errors_stream", value is errors_stream)
        elif key == "wsgi.file_wrapper":
            snap[key] = ("wsgi.file_wrapper is FileWrapper", value is FileWrapper)
        else:
            snap[key] = (type(key).__name__, type(value).__name__, value)
    return dict(sorted(snap.items()))


class RecordingApp:
    """Wraps an application under test: records the environ, the thread and loop
    visibility, the context variable, then calls it with the run's log."""

    def __init__(self, app: LoggingApp, log: list[list[object]], read_body: bool) -> None:
        self.app = app
        self.log = log
        self.read_body = read_body

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        snap = environ_snapshot(environ, self.read_body)
        if self.read_body:
            body = snap["wsgi.input"][1]  # type: ignore[index]
            environ["wsgi.input"] = io.BytesIO(body)
        # One log per request: an application thread's close() may overlap the next
        # request's call (threaded mode), but within a request the order is fixed.
        log: list[object] = [
            (
                "call",
                snap,
                "main thread" if threading.current_thread() is threading.main_thread() else "other thread",
                "loop visible" if asyncio._get_running_loop() is not None else "loop hidden",
                REQUEST_VAR.get(),
            )
        ]
        self.log.append(log)
        return self.app(environ, start_response, log)


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    """One plain asyncio loop for every run (uvloop would hide its ready queue)."""
    return asyncio.new_event_loop()


def _ready(loop: asyncio.AbstractEventLoop) -> int:
    return len(loop._ready)  # type: ignore[attr-defined]


def _threads_waiting(conn: HTTPConnection) -> bool:
    """An application thread of this connection waits for request body bytes."""
    stream = conn._stream
    return stream is not None and bool(stream._cond._waiters)  # type: ignore[attr-defined]


async def _settle(ctx: ServerContext, conn: HTTPConnection) -> None:
    """Run the loop until nothing is ready and no application thread can still act."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + SETTLE_TIMEOUT
    quiet = 0
    while True:
        if ctx.threads_busy and not _threads_waiting(conn):
            quiet = 0
            await asyncio.sleep(0.0005)
        else:
            await asyncio.sleep(0)
            if _ready(loop) or (ctx.threads_busy and not _threads_waiting(conn)):
                quiet = 0
            else:
                quiet += 1
                if quiet >= 2:
                    return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the connection did not settle ({ctx.threads_busy} application threads busy)"
            )


def run_connection(
    chunks: Sequence[bytes], app: LoggingApp, *, c_path: bool, setup: Setup = TRUSTED, eof: bool = True
) -> Run:
    """Feed ``chunks`` to a fresh connection, then EOF (if ``eof``), a far timeout tick
    and connection_lost; return what happened (see the module docstring)."""
    loop = _loop()
    return loop.run_until_complete(_run(loop, chunks, app, c_path, setup, eof))


async def _run(
    loop: asyncio.AbstractEventLoop,
    chunks: Sequence[bytes],
    app: LoggingApp,
    c_path: bool,
    setup: Setup,
    eof: bool,
) -> Run:
    run = Run()
    capture = _Capture(run.errors)
    saved = (error_log.level, error_log.propagate)
    error_log.addHandler(capture)
    error_log.setLevel(logging.DEBUG)
    error_log.propagate = False
    executor = ThreadPoolExecutor(setup.threads) if setup.threads > 1 else None
    config = Config(threads=setup.threads, root_path=setup.root_path)
    ctx = ServerContext(
        app=RecordingApp(app, run.app_log, setup.read_body),
        loop=loop,
        base_environ=base_environ(config, errors_stream),
        limits=setup.make_limits(),
        clock=fixed_clock(),
        executor=executor,
        proxy_protocol=setup.proxy_protocol,
        c_path=c_path,
        static=None
        if setup.static_root is None
        else StaticFiles(
            [parse_mount(f"/static/={setup.static_root}", 60)],
            index=True,
            cache_ttl=3600.0,
            wall=lambda: FIXED_WALL,
            sendfile=setup.static_sendfile,
        ),
    )
    if setup.shutting_down:
        ctx.shutdown()
    conn = HTTPConnection(ctx, tls=setup.tls)
    transport = RecordingTransport(loop, setup)
    transport.protocol = conn

    def call(method: Callable[..., Any], *args: Any) -> Any:
        try:
            return method(*args)
        except Exception as exc:
            run.exceptions.append(f"{method.__name__}: {type(exc).__name__}: {exc}")
            return None

    try:
        call(conn.connection_made, transport)
        await _settle(ctx, conn)
        for chunk in chunks:
            if not chunk:
                continue  # a transport never delivers empty data (b"" would mean EOF)
            if transport.closing:
                break
            if transport.paused:
                await _settle(ctx, conn)
                if transport.paused:
                    run.stalled = True
                    break
            call(conn.data_received, chunk)
            run.fed += 1
            await _settle(ctx, conn)
        run.before_eof = (len(transport.out), tuple(transport.calls))
        if eof and not transport.closing and not run.stalled:
            run.eof_result = call(conn.eof_received)
            if not run.eof_result and not transport.closing:
                # What asyncio's transports do when eof_received returns a false value.
                transport._end("auto-close")
            await _settle(ctx, conn)
        run.before_tick = (len(transport.out), tuple(transport.calls))
        # Every deadline in the past: the timeout of whatever phase the connection is in.
        for _ in range(3):
            if transport.closing:
                break
            call(conn.check_timeout, time.monotonic() + 1e6)
            await _settle(ctx, conn)
        run.paused_at_end = transport.paused
        if not transport.lost:
            transport.lost = True
            transport._sync()
            call(conn.connection_lost, None)
            await _settle(ctx, conn)
    finally:
        transport.release()
        ctx.stop_helpers()
        if executor is not None:
            executor.shutdown(wait=True)
        error_log.removeHandler(capture)
        error_log.setLevel(saved[0])
        error_log.propagate = saved[1]
    run.out = bytes(transport.out)
    run.calls = list(transport.calls)
    run.reading = transport.reading
    run.static_quick = ctx.static.quick_served if ctx.static is not None else 0
    return run


def calls(run: Run) -> list[tuple[Any, ...]]:
    """The ("call", environ, thread, loop, context var) entry of every application call."""
    return [entry[0] for entry in run.app_log]  # type: ignore[misc]


def assert_same_run(reference: Run, candidate: Run, what: str = "") -> None:
    """The two runs must be indistinguishable; the message shows the first difference."""
    ref, cand = reference.compared(), candidate.compared()
    for key, value in ref.items():
        other = cand[key]
        if value != other:
            raise AssertionError(
                f"{what}: C path differs from the reference in {key!r}:\n"
                f"  reference: {_show(value)}\n  C path:    {_show(other)}"
            )


def _show(value: object) -> str:
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "\n    ".join(repr(item) for item in value)
    text = repr(value)
    return text if len(text) < 4000 else text[:4000] + "..."


def differential(
    chunks: Sequence[bytes], app: LoggingApp, setup: Setup = TRUSTED, *, eof: bool = True, what: str = ""
) -> Run:
    """Run the reference and the C path on the same input; they must agree. Returns
    the reference run."""
    reference = run_connection(chunks, app, c_path=False, setup=setup, eof=eof)
    candidate = run_connection(chunks, app, c_path=True, setup=setup, eof=eof)
    assert_same_run(reference, candidate, what or f"{[len(c) for c in chunks]}")
    return reference


def with_limits(setup: Setup, limits: dict[str, int] | None) -> Setup:
    return setup if not limits else replace(setup, limits=tuple(sorted(limits.items())))


# ------------------------------------------------------------------ the default app


def echo_app(environ: Environ, start_response: StartResponse, log: list[object]) -> list[bytes]:
    """The corpus' application: a list of one bytes naming the request."""
    body = environ["wsgi.input"].read()
    text = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']} {len(body)}\n"
    data = text.encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def echo_stream_app(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    """The corpus' second application: a generator, no Content-Length (chunked or close)."""
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])

    def generate() -> Iterable[bytes]:
        yield environ["REQUEST_METHOD"].encode("latin-1")
        yield b" %d\n" % len(body)

    return generate()
