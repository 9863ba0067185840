"""The asyncio connection: transport I/O, flow control, timeouts and sendfile.

One :class:`HTTPConnection` per accepted socket, driven by the event loop. It feeds
received bytes to the sans-IO protocol, turns events into WSGI exchanges, and writes
what the protocol frames. Thread rules: every method of ``HTTPConnection`` runs on the
loop thread; an application thread only ever talks to :class:`ThreadedSink`, which
marshals its calls onto the loop with ``call_soon_threadsafe``.

Dispatch rules:

* ``threads == 1`` (inline): the application runs on the loop thread once the whole
  request is in hand. A body still in flight is spooled first (memory, then a
  temporary file beyond ``SPOOL_MEMORY``, never more than ``--limit-request-body``), so
  a blocking read can never stall the loop. Except when the client asked
  ``Expect: 100-continue`` and waits: it must get ``100 Continue`` only if the
  application reads the body (RFC 9110 §10.1.1; a client may wait for the final status
  instead, and an application may answer without reading). Such a request runs on a
  helper thread (``EXPECT_THREADS``, started on demand) with a streaming ``wsgi.input``,
  as in threaded mode; the ``ServerContext.gate`` lock keeps it from running
  application code at the same time as the loop thread, so ``--threads 1`` still never
  runs two application calls at once (``wsgi.multithread`` stays false). A call that
  has started on the loop thread cannot move to another thread when it first reads
  (re-running it would repeat its side effects; waiting would block the loop), so the
  choice is made from the head, before the application starts.
* ``threads > 1``: the application runs on the thread pool as soon as the head is
  parsed; ``wsgi.input`` streams the body, and ``100 Continue`` is sent when the
  application first reads it (RFC 9110 §10.1.1).

Flow control: reading pauses while a body buffer or pipelined bytes pile up beyond a
bound; the response side pulls from the application only while the transport is
below its high-water mark (``pause_writing`` / ``resume_writing``).

Timeouts (one tick per second checks every connection; deadlines are set from the
precise clock, so a timeout never fires early, at most one tick late): an idle keep-alive
connection closes after ``keep_alive``; a request head must be complete within
``header_timeout`` of its first byte (a trickling client is cut off, answered 408);
body bytes must keep coming within ``body_timeout``; a client that stops reading the
response for ``send_timeout`` is dropped. Closing after a response half-closes first
and discards what the client still sends for up to ``LINGER`` seconds, so a client
never sees a reset instead of its response (nginx's lingering close).
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import os
import socket
import sys
import tempfile
import termios
import threading
import time
import traceback
from asyncio.events import _set_running_loop
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from time import monotonic
from typing import IO, Any, Final, cast

from . import metrics
from .bridge import Exchange
from .errors import (
    AppError,
    AppTimeout,
    ClientDisconnected,
    LocalProtocolError,
    RemoteProtocolError,
    RequestTimeout,
)
from .events import NEED_DATA, PAUSED, Data, EndOfMessage, Reply, Request, Response
from .forwarded import ForwardingPolicy, TrustedPeers
from .log import AccessLog, AccessRecord, Clock, RequestIds, error_log
from .metrics import Meter
from .protocols._state import DONE, ERROR, IDLE, MUST_CLOSE, SEND_BODY
from .protocols.base import Limits, ServerConnection
from .protocols.http1 import H1Connection
from .protocols.proxy import ProxyHeader
from .protocols.proxy import parse as parse_proxy_header
from .static import StaticFiles
from .wsgi import (
    EMPTY_INPUT,
    Environ,
    Released,
    StreamInput,
    WSGIApp,
    _headers_cache,
    _parse_status,
    _status_cache,
    buffered_input,
    connection_environ,
    environ_template,
    error_response,
    forward_environ,
    header_parts,
    request_environ,
    set_client,
)

try:
    from . import _cfast
except ImportError:  # no C compiler at install time, or a pure-Python build
    C_PATH_AVAILABLE = False
else:
    C_PATH_AVAILABLE = True
    _cfast.setup(
        request=Request,
        response=Response,
        parse_status=_parse_status,
        header_parts=header_parts,
        status_cache=_status_cache,
        headers_cache=_headers_cache,
        app_error=AppError,
        set_running_loop=_set_running_loop,
    )
#: Whether connections use the C request path by default: when it is built, unless
#: ``RAPIDWSGI_NO_C=1`` (the test suite's mypyc-only pass, or a suspected C bug).
C_PATH_DEFAULT: Final = C_PATH_AVAILABLE and os.environ.get("RAPIDWSGI_NO_C") != "1"

INF: Final = float("inf")
#: Request body bytes kept in memory before spooling to a temporary file (inline mode).
SPOOL_MEMORY: Final = 1 << 20
#: Unparsed bytes (pipelined requests) held while a response is in progress before
#: reading from the socket pauses.
MAX_PIPELINE_BUFFER: Final = 256 * 1024
#: Seconds a closing connection keeps reading (and discarding) after half-closing.
LINGER: Final = 2.0
#: On graceful shutdown, seconds an idle keep-alive connection of a direct client may
#: still send a request (a proxy's or gateway's keeps its keep-alive deadline: see
#: ``begin_shutdown``).
SHUTDOWN_IDLE_GRACE: Final = 0.5
_FIONREAD_BUF: Final = bytes(4)
#: Body chunks an inline exchange may produce before yielding to other connections.
PUMP_BUDGET: Final = 32
#: Bytes one sendfile step may send before yielding to other connections.
SENDFILE_BUDGET: Final = 4 << 20
#: What a request answered 503 by load shedding (--backlog-requests) is told: try again
#: in a second (RFC 9110 §10.2.3), when a thread is likely free.
SHED_HEADERS: Final = b"Retry-After: 1\r\n"
#: The same 503 in the shapes the C path writes (StaticFiles.quick's): (status, its
#: line), (header block before Date/Server, Content-Length, close, date variant), body.
_SHED_BODY: Final = b"503 Service Unavailable\n"
_SHED_QUICK: Final = (
    (503, b"503 Service Unavailable"),
    (b"Content-Type: text/plain; charset=utf-8\r\n" + SHED_HEADERS, len(_SHED_BODY), False, 0),
    [_SHED_BODY],
)
#: The health path's answer is never cached on the way (a proxy, a browser).
HEALTH_HEADERS: Final = b"Cache-Control: no-store\r\n"
#: Bytes an application thread may have queued for the loop before it waits.
THREAD_HIGH_WATER: Final = 256 * 1024
#: Inline mode: helper threads at most for requests waiting for ``100 Continue``; more
#: such requests queue for a free one (each holds its thread until its body has come,
#: at most ``--body-timeout`` without progress).
EXPECT_THREADS: Final = 8

# Read-side phases, for timeouts.
_IDLE: Final = 0  # between requests (keep-alive)
_HEAD: Final = 1  # a request head has started arriving
_BODY: Final = 2  # waiting for request body bytes
_APP: Final = 3  # the application owns the exchange
_LINGER: Final = 4  # closing: half-closed, discarding input


class ServerContext:
    """What every connection of one server process shares (built once by the worker)."""

    def __init__(
        self,
        *,
        app: WSGIApp,
        loop: asyncio.AbstractEventLoop,
        base_environ: Environ,
        limits: Limits,
        clock: Clock,
        executor: Executor | None = None,
        keep_alive: float = 5.0,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        send_timeout: float = 60.0,
        access_log: AccessLog | None = None,
        on_request_done: Callable[[], None] | None = None,
        forwarding: ForwardingPolicy | None = None,
        proxy_protocol: bool = False,
        c_path: bool | None = None,
        static: StaticFiles | None = None,
        meter: Meter | None = None,
        threads: int = 1,
        request_ids: RequestIds | None = None,
        health_path: str | None = None,
        admit_limit: int = 0,
        request_timeout: float = 0.0,
        pre_request: Callable[[Request], None] | None = None,
        post_request: Callable[[Request, Environ, Response | None, int], None] | None = None,
    ) -> None:
        self.app = app
        #: --health-path: answered here, never by the application (see ``health``).
        self.health_path = health_path
        self._health_raw = health_path.encode("latin-1") if health_path is not None else None
        #: Threaded mode: requests submitted to the pool (running or queued) beyond which
        #: a new one is answered 503 (--limit-concurrency + --backlog-requests); 0: none.
        self.admit_limit = admit_limit
        #: A stop is coming (--shutdown-delay): the health path answers 503 already.
        self.unready = False
        self._answers: dict[tuple[int, bool, bytes], tuple[Any, Response, bytes]] = {}
        #: The pre_request / post_request hooks (hooks.py), bound to the worker.
        self.pre_request = pre_request
        self.post_request = post_request
        #: --request-timeout (threaded mode): see ``check_stuck``.
        self.request_timeout = request_timeout
        #: The exchanges running on application threads, by thread id (request_timeout).
        self._running: dict[int, _Running] = {}
        #: Threads given up on (answered 504 or reset) that are still running.
        self.stuck = 0
        #: --request-id-header / the JSON access log: each request's id (Python path).
        self.request_ids = request_ids
        #: This worker's slot in the master's metrics (metrics.py), or None.
        self.meter = meter
        self.threads = threads
        #: Each application thread's record in the meter (1..): see _thread_record.
        self._records = threading.local()
        self._next_record = 1
        #: ``--static`` mounts: answered by the server, on the loop thread, never the app.
        self.static = static
        self.loop = loop
        self.base_environ = base_environ
        #: Stage 1 of the environ (wsgi.py) for plain and for TLS listeners.
        self.environ_template = _presized(environ_template(base_environ))
        self.tls_environ_template = _presized(environ_template(base_environ, tls=True))
        self.limits = limits
        self.clock = clock
        self.executor = executor
        self.keep_alive = keep_alive
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.access_log = access_log
        self.on_request_done = on_request_done
        if forwarding is None:
            forwarding = ForwardingPolicy(TrustedPeers(("127.0.0.1", "::1", "unix")))
        self.forwarding = forwarding
        self.trusted = forwarding.trusted
        self.proxy_protocol = proxy_protocol
        #: Each exchange runs in a copy of this (the context the server was set up in),
        #: not of whatever context is current when it starts: a loop callback scheduled
        #: from inside the previous exchange (call_soon copies the caller's context)
        #: would otherwise carry that exchange's context variables into the next one.
        self.base_context = contextvars.copy_context()
        #: Plain HTTP/1.1 connections run their common requests in C (``_cfast.c``).
        self.c_path = C_PATH_DEFAULT if c_path is None else (c_path and C_PATH_AVAILABLE)
        #: The meter the C path writes itself; a pure-Python meter turns the C path off
        #: (every request is counted, by the Python path).
        self.c_meter: Any = None
        if self.c_path and meter is not None:
            if isinstance(meter, _cfast.Meter):
                self.c_meter = meter
            else:
                self.c_path = False
        #: What the C path compares PATH_INFO with to hand a request to ``_dispatch``
        #: (the --static mounts and the health path), and StaticFiles.quick.
        self.c_prefixes: tuple[str, ...] | None = None if static is None else static.prefixes
        self.c_bares: tuple[str, ...] | None = None if static is None else static.bares
        self.c_quick: Any = None if static is None else static.quick
        if health_path is not None:
            self.c_prefixes = self.c_prefixes or ()
            self.c_bares = (*(self.c_bares or ()), health_path)
        self._static_raw = () if static is None else tuple(p.encode("latin-1") for p in static.prefixes)
        self.c_shed: Any = self.shed_quick if executor is not None and admit_limit else None
        self.connections: set[HTTPConnection] = set()
        #: --limit-connections: called (on the loop) when ``connections`` reaches the
        #: limit and when it is below it again (the worker stops / resumes accepting).
        self.limit_connections = 0
        self.on_connections_full: Callable[[bool], None] | None = None
        self.accepting = True
        self.shutting_down = False
        #: When a graceful stop gives up waiting (set by ``shutdown``).
        self.drain_deadline = INF
        #: Exchanges running on application threads (see ``run_threaded``).
        self.threads_busy = 0
        self._busy_lock = threading.Lock()
        #: Inline mode: held by whichever thread runs application code, the loop thread
        #: or a helper thread (``run_helper``), so two application calls never run at
        #: once. A helper releases it while it waits for the loop (a read, a full
        #: output queue); the loop takes it only while ``gated`` counts helpers.
        self.gate = threading.RLock()
        self.gated = 0
        self._helpers: ThreadPoolExecutor | None = None

    def run_threaded(
        self, exchange: Exchange, method: bytes = b"", path: bytes = b"", started_ns: int = 0
    ) -> None:
        """Submit an exchange to the thread pool, counting it while it runs (``method``,
        ``path``, ``started_ns``: what the meter shows of it while it runs)."""
        assert self.executor is not None
        with self._busy_lock:
            self.threads_busy += 1
        self.executor.submit(self._thread_main, exchange, method, path, started_ns)

    def _thread_main(self, exchange: Exchange, method: bytes, path: bytes, started_ns: int) -> None:
        meter = self.meter
        record = self._thread_record() if meter is not None else -1
        ident = threading.get_ident()
        if self.request_timeout:
            with self._busy_lock:
                self._running[ident] = _Running(exchange, method, path)
        try:
            if meter is not None:
                meter.begin(record, method, path, started_ns)
            exchange.context.run(exchange.run_blocking)
        finally:
            if meter is not None:
                meter.end(record)
            with self._busy_lock:
                self.threads_busy -= 1
                if self.request_timeout:
                    running = self._running.pop(ident, None)
                    if running is not None and running.given_up:
                        self.stuck -= 1

    def _give_up(self, ident: int, entry: _Running) -> bool:
        """Mark ``entry`` given up on, unless its thread finished meanwhile."""
        with self._busy_lock:
            if ident not in self._running:
                return False
            entry.given_up = True
            self.stuck += 1
            return True

    def check_stuck(self, now: float) -> int:
        """--request-timeout, from the loop's tick: each request on a thread past the
        timeout gets its thread's stack logged and is answered 504 (or reset, if its
        response has started); its thread runs on, out of reach (Python threads cannot
        be stopped). Returns how many such threads are still running: the worker asks to
        be retired while there are some (worker.py)."""
        timeout = self.request_timeout
        with self._busy_lock:
            running = list(self._running.items())
        frames: dict[int, Any] | None = None
        for ident, entry in running:
            if entry.given_up or now - entry.started < timeout:
                continue
            if frames is None:
                frames = sys._current_frames()
            frame = frames.get(ident)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)\n"
            error_log.error(
                "%s %s still running after %.1fs (--request-timeout %gs); thread %d stack:\n%s",
                entry.method.decode("latin-1"),
                entry.path.decode("latin-1"),
                now - entry.started,
                timeout,
                ident,
                stack.rstrip("\n"),
            )
            if not self._give_up(ident, entry):
                continue  # it finished meanwhile
            if self.meter is not None:
                self.meter.count(metrics.STUCK)
            sink = entry.exchange.sink
            if isinstance(sink, ThreadedSink):
                sink.give_up()
        return self.stuck

    def server_response(self, status: int, close: bool, extra: bytes) -> tuple[Response, bytes]:
        """A response the server writes itself (``error_response``), made once per
        second (its Date) for each kind: answers under overload must be cheap. Shared,
        so never changed: ``close`` is part of the kind (``send_head`` only sets a
        closing response's ``close`` again)."""
        date = self.clock.date_server
        key = (status, close, extra)
        cached = self._answers.get(key)
        if cached is None or cached[0] is not date:
            response, body = error_response(status, date, close, extra)
            cached = self._answers[key] = (date, response, body)
        return cached[1], cached[2]

    def shed_quick(self, environ: Environ) -> Any:
        """The C path's shortcut for ``overloaded`` (threaded mode; the health path and
        --static are claimed before it is asked): the 503 in StaticFiles.quick's shapes,
        counted, or None. While stopping, None: the Python path answers (and counts) it,
        with close. tests/test_ops.py holds both paths to the same bytes."""
        if self.threads_busy < self.admit_limit or self.shutting_down:
            return None
        if self.meter is not None:
            self.meter.count(metrics.SHED)
        return _SHED_QUICK

    def overloaded(self, request: Request) -> bool:
        """Threaded mode: the pool has ``admit_limit`` requests (running or queued) and
        this one would wait for a thread. The server's own answers (the health path, a
        --static mount, compared on the raw path) never wait for one."""
        if self.executor is None or not self.admit_limit or self.threads_busy < self.admit_limit:
            return False
        path = request.path
        return path != self._health_raw and not (self._static_raw and path.startswith(self._static_raw))

    @property
    def ready(self) -> bool:
        """What the health path says: serving, and no stop begun or announced."""
        return not (self.shutting_down or self.unready)

    def announce_stop(self) -> None:
        """--shutdown-delay began (the worker's SIGUSR2, acted on from the loop): the
        health path answers 503, and every connection closes after its next response
        (``Connection: close``; new ones too, ``HTTPConnection.connection_made``), while
        the server goes on accepting and serving. A front-end's pool of connections to
        this worker is so used up, each with a clean close after a response, before the
        drain begins: a front-end without active health checks (open-source nginx)
        never sends a request on a keep-alive connection the drain closes, which for a
        POST it could not retry. Idle connections keep their keep-alive deadlines."""
        self.unready = True
        for conn in list(self.connections):
            conn.close_after_response()

    def connection_opened(self, conn: HTTPConnection) -> None:
        self.connections.add(conn)
        limit = self.limit_connections
        if limit and self.accepting and len(self.connections) >= limit and self.on_connections_full:
            self.accepting = False
            self.on_connections_full(True)

    def connection_closed(self, conn: HTTPConnection) -> None:
        self.connections.discard(conn)
        limit = self.limit_connections
        if not self.accepting and len(self.connections) < limit and self.on_connections_full:
            self.accepting = True
            self.on_connections_full(False)

    def _thread_record(self) -> int:
        """This application thread's record in the meter (the loop thread has 0)."""
        record: int | None = getattr(self._records, "index", None)
        if record is None:
            with self._busy_lock:
                record = self._next_record
                self._next_record += 1
            self._records.index = record
        return record

    @property
    def helper_gate(self) -> Any:
        """The gate an application thread holds: ``gate`` on an inline worker's helper
        thread, None on a threaded worker's pool (its calls may run side by side)."""
        return self.gate if self.executor is None else None

    def run_helper(
        self, exchange: Exchange, method: bytes = b"", path: bytes = b"", started_ns: int = 0
    ) -> None:
        """Inline mode: run one exchange on a helper thread, under the gate.

        ``gated`` goes up here, on the loop thread, before the helper can start, and
        down only once the helper has left application code: the loop never sees 0
        while a helper may run the application. The helper is started from the next
        loop callback, not from here: this call can come from inside an inline step
        that took no gate (a response finishing, then a pipelined request parsed), and
        that step's application code (the previous iterable's ``close()``) must be
        over before a helper may enter application code.
        """
        with self._busy_lock:
            self.threads_busy += 1
            self.gated += 1
        self.loop.call_soon(self._start_helper, exchange, method, path, started_ns)

    def _start_helper(self, exchange: Exchange, method: bytes, path: bytes, started_ns: int) -> None:
        helpers = self._helpers
        if helpers is None:
            helpers = self._helpers = ThreadPoolExecutor(
                max_workers=EXPECT_THREADS, thread_name_prefix="rapidwsgi-expect"
            )
        try:
            helpers.submit(self._helper_main, exchange, method, path, started_ns)
        except RuntimeError:  # stop_helpers ran in between: the worker is exiting
            with self._busy_lock:
                self.threads_busy -= 1
                self.gated -= 1

    def _helper_main(self, exchange: Exchange, method: bytes, path: bytes, started_ns: int) -> None:
        meter = self.meter
        record = self._thread_record() if meter is not None else -1
        try:
            with self.gate:
                if meter is not None:
                    meter.begin(record, method, path, started_ns)
                exchange.context.run(exchange.run_blocking)
        finally:
            if meter is not None:
                meter.end(record)
            with self._busy_lock:
                self.threads_busy -= 1
                self.gated -= 1

    def stop_helpers(self) -> None:
        """At exit: no new helper work (a running one is counted in ``threads_busy``)."""
        if self._helpers is not None:
            self._helpers.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> None:
        """Refresh the clock and enforce timeouts; called once per second."""
        self.clock.update()
        self.check_timeouts(self.clock.now)
        if self.meter is not None:
            self.update_gauges()

    def update_gauges(self) -> None:
        """The meter's gauges, sampled (metrics.py rule 4): ``threads_busy`` counts the
        exchanges submitted to the pool, running or queued."""
        assert self.meter is not None
        idle = sum(1 for conn in self.connections if conn.idle)
        submitted = self.threads_busy
        running = min(submitted, self.threads) if self.executor is not None else submitted
        self.meter.gauges(len(self.connections), idle, running, submitted - running)

    def check_timeouts(self, now: float) -> None:
        for conn in list(self.connections):
            conn.check_timeout(now)
        if self.access_log is not None:
            self.access_log.flush()

    def shutdown(self, drain_deadline: float = INF) -> None:
        """Stop reusing connections: each closes after its next response, an idle one of
        a direct client soon, an idle one of a proxy or gateway at its keep-alive
        deadline (``HTTPConnection.begin_shutdown``), all before ``drain_deadline``."""
        self.shutting_down = True
        self.drain_deadline = drain_deadline
        for conn in list(self.connections):
            conn.begin_shutdown()


#: Spare room in an environ template for the request's own keys (its header fields).
TEMPLATE_SPARE: Final = 32


def _presized(template: Environ) -> Environ:
    """``template`` with room for a browser's header fields, so that copying it (one
    per connection, one per request) is one table copy, never a resize."""
    if C_PATH_AVAILABLE:
        return _cfast.presized(template, TEMPLATE_SPARE)
    return template


class HTTPConnection:
    """asyncio protocol for one accepted connection, whatever front-end protocol it
    speaks (see the module docstring).

    ``wire_factory`` builds the connection's sans-IO wire protocol, chosen per listener
    by ``--protocol`` (``worker.WIRE_PROTOCOLS``): :class:`H1Connection` for HTTP/1.x
    clients and proxies, ``UwsgiConnection`` (nginx ``uwsgi_pass``) or
    ``FastCGIConnection`` (``fastcgi_pass``). This class drives each only through the
    :class:`ServerConnection` contract; what differs between them it reads from the
    wire's class attributes: ``GATEWAY`` (uwsgi, FastCGI: the peer's CGI variables are
    authoritative, so no forwarding fields are applied, and the peer pools its
    connections), ``RAW_BODY_OK`` (sendfile; false for FastCGI's records and over TLS)
    and ``METRICS_PROTOCOL``. The C request path (``_cfast.Fast``) is attached only to
    plain HTTP/1.1 connections (``type(wire) is H1Connection``).
    """

    def __init__(
        self,
        ctx: ServerContext,
        wire_factory: Callable[[Limits], ServerConnection] = H1Connection,
        tls: bool = False,
    ) -> None:
        self.ctx = ctx
        self.wire = wire_factory(ctx.limits)
        # Over TLS the bytes must pass through the TLS layer: no sendfile.
        self._raw_ok = self.wire.RAW_BODY_OK and not tls
        self._tls = tls
        #: The forwarding policy to apply (a trusted HTTP peer), or None.
        self._forwarding: ForwardingPolicy | None = None
        self._peer_trusted = False
        #: The peer is on this host (loopback or a unix socket): see StaticFiles.sendfile.
        self._same_host = False
        #: The peer is a gateway or a proxy that pools its connections to us (see
        #: ``begin_shutdown``): a gateway protocol, or a trusted HTTP peer that sent
        #: forwarding fields.
        self._pooled = False
        self._proxy_pending = False  # waiting for a PROXY protocol header
        self._proxy_buf = b""
        self.transport: asyncio.Transport | None = None
        self._environ_base: Environ = {}
        self._request: Request | None = None
        self._chunks: list[bytes] | None = None
        self._spool: IO[bytes] | None = None
        self._stream: StreamInput | None = None
        self._exchange: Exchange | None = None
        self._tsink: ThreadedSink | None = None
        self._dispatched = False
        self._draining = False
        self._drained = 0
        self._in_process = False
        self._write_paused = False
        self._read_paused = False
        self._lost = False
        self._lingering = False
        self._closing = False
        self._phase = _IDLE
        self._deadline = INF
        self._write_deadline = INF
        self._budget = PUMP_BUDGET
        self._response: Response | None = None
        self._environ: Environ | None = None
        self._sent = 0
        self._started_ns = 0  # time.monotonic_ns() at the head (access log, meter)
        self._method = 0  # metrics.METHODS index of the request
        self._request_id = ""  # its id (ctx.request_ids), or ""
        self._body_in = 0  # request body bytes received (the meter)
        self._record = -1  # the meter record this connection's inline request shows
        self._proto = self.wire.METRICS_PROTOCOL
        # sendfile state
        self._sf_active = False
        self._sf_fd = -1
        self._sf_offset = 0
        self._sf_count = 0
        self._sf_sock = -1
        self._sf_dup = -1
        self._finish_pending = False
        self._fin_sent = False  # the FIN went out with the last response (_write_last)
        #: The C request path of this connection (``_cfast.Fast``), or None.
        self._fast: Any = None

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport API without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        self._environ_base = connection_environ(
            ctx.tls_environ_template if self._tls else ctx.environ_template,
            transport.get_extra_info("sockname"),
            transport.get_extra_info("peername"),
        )
        peer = self._environ_base["REMOTE_ADDR"] or "unix"
        self._peer_trusted = peer in ctx.trusted
        self._same_host = peer in ("unix", "::1") or peer.startswith(("127.", "::ffff:127."))
        self._forwarding = ctx.forwarding if self._peer_trusted and not self.wire.GATEWAY else None
        self._pooled = self.wire.GATEWAY
        self._proxy_pending = ctx.proxy_protocol
        ctx.connection_opened(self)
        self._deadline = monotonic() + ctx.header_timeout
        if ctx.shutting_down or ctx.unready:
            self._closing = True  # (the C path serves none of its requests: see data_received)
        if (
            ctx.c_path
            and ctx.access_log is None
            and ctx.request_ids is None
            and ctx.pre_request is None
            and ctx.post_request is None
            and type(self.wire) is H1Connection
        ):
            limits = ctx.limits
            self._fast = _cfast.Fast(
                self,
                ctx,
                ctx.app,
                self._environ_base,
                self.transport.write,
                ctx.loop,
                ctx.base_context,
                ctx.on_request_done,
                limits.max_line,
                limits.max_fields,
                limits.max_field_size,
                ctx.c_prefixes,
                ctx.c_bares,
                ctx.c_quick,
                ctx.c_meter,
                ctx.c_shed,
            )

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._proxy_pending:
            data = self._proxy_header(data)
            if not data:
                return
        if self._fast is not None and self._request is None and not self._in_process and not self._closing:
            data = self._serve_fast(data)
            if not data:
                return
        self.wire.receive_data(data)
        if not self._in_process:
            self._process()

    def _serve_fast(self, data: bytes) -> bytes:
        """Between requests: the C path serves the common requests of ``data`` itself;
        what it declines or hands over (returned, or now in the Python machinery)
        continues exactly as without it."""
        wire = cast(H1Connection, self.wire)
        ctx = self.ctx
        if not wire.at_rest or ctx.shutting_down:
            return data
        self._in_process = True
        try:
            done: int = self._fast.serve(data, ctx.clock.date_server, ctx.executor is None and not ctx.gated)
        finally:
            self._in_process = False
        if done and self._request is None and not self._lingering:
            self._phase = _IDLE
            self._deadline = monotonic() + ctx.keep_alive
        if done == len(data) or self._lingering or self._lost:
            return b""
        return data[done:]

    def _proxy_header(self, data: bytes) -> bytes:
        """Consume a PROXY protocol header (HAProxy v1/v2); return the bytes after it."""
        buf = self._proxy_buf + data
        try:
            header = parse_proxy_header(buf)
        except RemoteProtocolError as exc:
            self._proxy_pending = False
            self._on_protocol_error(exc)
            return b""
        if header is NEED_DATA:
            self._proxy_buf = buf
            return b""
        self._proxy_pending = False
        self._proxy_buf = b""
        if header is None:
            return buf  # no header: an ordinary connection
        assert isinstance(header, ProxyHeader)
        if not self._peer_trusted:
            error_log.warning(
                "PROXY header from untrusted peer %s refused", self._environ_base["REMOTE_ADDR"] or "unix"
            )
            self._close_transport()
            return b""
        # A trusted peer that sends PROXY headers is a proxy (HAProxy send-proxy, an NLB)
        # that keeps its connection to us for a client session: at a graceful stop it
        # is treated like any pooling front-end (begin_shutdown).
        self._pooled = True
        if header.source is not None:
            address, port = header.source
            set_client(self._environ_base, address, port)
            # The forwarding fields of the client itself are not to be trusted.
            self._peer_trusted = address in self.ctx.trusted
            self._forwarding = self.ctx.forwarding if self._peer_trusted and not self.wire.GATEWAY else None
        return buf[header.consumed :]

    def eof_received(self) -> bool:
        if self._lingering:
            self._close_transport()
            return False
        self.wire.receive_data(b"")
        if not self._in_process:
            self._process()
        # True keeps a plain transport half-open: the response to a request that came
        # before the client's FIN can still be written (RFC 9112 §9.6). A TLS transport
        # ignores the value (the client's close_notify ended the session) and logs a
        # warning when it is True.
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        fast = self._fast
        if fast is not None:
            self._fast = None
            fast.clear()  # (it refers back to this connection)
        self.ctx.connection_closed(self)
        if self._sf_active:
            self._sf_cleanup()
        if self._stream is not None:
            self._stream.feed_error(ClientDisconnected("client disconnected"))
        if self._tsink is not None:
            self._tsink.set_disconnected()
        exchange = self._exchange
        self._exchange = None
        if exchange is not None and not exchange.finished:
            self._run_inline(exchange, exchange.disconnect)
        self._drop_spool()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_deadline = monotonic() + self.ctx.send_timeout
        if self._tsink is not None:
            self._tsink.update(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._write_deadline = INF
        if self._tsink is not None:
            self._tsink.update(self._sf_active)
        else:
            self._resume_exchange()

    # ------------------------------------------------------------ request side

    def _process(self) -> None:
        """Consume protocol events until more bytes are needed or parsing pauses."""
        self._in_process = True
        wire = self.wire
        try:
            while not self._lingering and not self._lost:
                try:
                    event = wire.next_event()
                except RemoteProtocolError as exc:
                    self._on_protocol_error(exc)
                    return
                if isinstance(event, Request):
                    self._on_request(event)
                elif isinstance(event, EndOfMessage):
                    self._on_end()
                elif event is NEED_DATA:
                    self._on_need_data()
                    return
                elif isinstance(event, Data):
                    self._on_data(event.data)
                elif isinstance(event, Reply):
                    if self.transport is not None:
                        self.transport.write(event.data)
                elif event is PAUSED:
                    if wire.buffered > MAX_PIPELINE_BUFFER:
                        self._pause_reading()
                    return
                else:  # ConnectionClosed
                    self._close_transport()
                    return
        finally:
            self._in_process = False

    def _on_request(self, request: Request) -> None:
        self._request = request
        self._dispatched = False
        self._body_in = 0
        if self.ctx.overloaded(request):
            self._chunks = None
            self._shed(request)
            return
        if request.has_body:
            self._chunks = []
            self._phase = _BODY
            self._deadline = monotonic() + self.ctx.body_timeout
        else:
            # A request without a body is complete with its head.
            self._chunks = None
            self._dispatch(EMPTY_INPUT, self.ctx.executor is not None)

    def _on_data(self, data: bytes) -> None:
        if self._draining:
            self._drained += len(data)
            if self._drained > self.ctx.limits.max_drain:
                self._close_after_response()
            return
        self._deadline = monotonic() + self.ctx.body_timeout
        self._body_in += len(data)
        if self._stream is not None:
            if self._stream.feed(data):
                self._pause_reading()
        elif self._spool is not None:
            self._spool.write(data)
        elif self._chunks is not None:
            self._chunks.append(data)

    def _on_end(self) -> None:
        if self._draining:
            self._draining = False
            self._continue_cycle()
            return
        if self._stream is not None:
            self._stream.feed_eof()
            self._phase = _APP
            self._deadline = INF
            return
        if self._spool is not None:
            spool = self._spool
            spool.seek(0)
            self._dispatch(spool, False)
        else:
            self._dispatch(buffered_input(self._chunks or []), self.ctx.executor is not None)

    def _on_need_data(self) -> None:
        if self._request is None:
            if self._phase == _IDLE and self.wire.receiving_head:
                # The first bytes of a head: it must now complete within header_timeout.
                self._phase = _HEAD
                self._deadline = monotonic() + self.ctx.header_timeout
            return
        if self._dispatched or self._draining or self._spool is not None:
            return
        # The body is still in flight.
        chunks = self._chunks or []
        self._chunks = None
        ctx = self.ctx
        if ctx.executor is not None or self.wire.client_waiting_for_continue:
            # Threaded, or inline with a client waiting for 100 Continue before it sends
            # the body: the application runs now (inline: on a helper thread, under the
            # gate) and 100 Continue goes out only if it reads (RFC 9110 §10.1.1). If it
            # answers without reading, that response closes the connection (the client
            # may or may not send the body now: base._begin_response).
            stream = StreamInput(self._input_wanted_threadsafe, gate=ctx.helper_gate)
            for chunk in chunks:
                stream.feed(chunk)
            self._stream = stream
            self._dispatch(stream, True)
        else:
            # The body is already on its way (no Expect, or the client did not wait):
            # read it all for the application, which then never blocks on a read. The
            # protocol refuses a body beyond --limit-request-body with 413 before its
            # bytes reach us, which bounds the spool file too.
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
            for chunk in chunks:
                spool.write(chunk)
            self._spool = spool

    def _input_wanted_threadsafe(self) -> None:
        self.ctx.loop.call_soon_threadsafe(self._input_wanted)

    def _input_wanted(self) -> None:
        """The application read (or drained) ``wsgi.input``: 100 Continue, resume reading."""
        if self._lost or self._lingering or self.transport is None:
            return
        cont = self.wire.send_continue()
        if cont:
            self.transport.write(cont)
        stream = self._stream
        if stream is not None and stream.buffered < THREAD_HIGH_WATER // 2:
            self._resume_reading()

    def _dispatch(self, wsgi_input: object, on_thread: bool, environ: Environ | None = None) -> None:
        """Run the application for the current request: inline, or on a thread.

        ``environ`` is given when the C path built it (``_c_dispatch``)."""
        request = self._request
        assert request is not None
        ctx = self.ctx
        if environ is None:
            environ = request_environ(self._environ_base, request, wsgi_input, self._forwarding)
            if request.forwarded:
                self._pooled = True  # a proxy: see _c_forwarded
        self._begin_exchange(environ)
        head_request = request.method == b"HEAD"
        static = ctx.static
        if (
            ctx.health_path is not None
            and environ["PATH_INFO"] == ctx.health_path
            and request.method in (b"GET", b"HEAD")
        ):
            # --health-path: the server's own answer, on the loop thread.
            self._answer(200 if ctx.ready else 503, False, HEALTH_HEADERS)
        elif static is not None and static.claims(environ):
            # Under a --static mount: answered here on the loop thread, whatever
            # --threads says, through the same exchange and writer as an app's response.
            response, body = static.respond(environ, ctx.clock.date_server)
            exchange = self._inline_exchange(environ, head_request, None)
            exchange.response = response
            exchange.use_sendfile = self._raw_ok and static.sendfile_to(self._same_host)
            exchange.adopt(body, None)
            exchange.resume()
        elif not on_thread:
            exchange = self._inline_exchange(environ, head_request, None)
            if ctx.meter is not None:
                self._record = 0
                ctx.meter.begin(0, request.method, request.path, self._started_ns)
            self._run_inline(exchange, exchange.start)
        else:
            gate = ctx.helper_gate
            sink = ThreadedSink(self, gate)
            self._tsink = sink
            exchange = Exchange(
                ctx.app,
                environ,
                sink,
                ctx.clock,
                head_request=head_request,
                blocking=True,
                use_sendfile=self._raw_ok,
                context=ctx.base_context.copy(),
            )
            if gate is None:
                ctx.run_threaded(exchange, request.method, request.path, self._started_ns)
            else:
                ctx.run_helper(exchange, request.method, request.path, self._started_ns)

    def _shed(self, request: Request, environ: Environ | None = None) -> None:
        """Overloaded (``ServerContext.overloaded``): 503 with Retry-After at once,
        without the application. A request with a body is answered before any of it is
        read, and the connection closes after the answer (RFC 9110 §15.6.4)."""
        ctx = self.ctx
        if environ is None:
            environ = request_environ(self._environ_base, request, EMPTY_INPUT, self._forwarding)
            if request.forwarded:
                self._pooled = True  # a proxy: see _c_forwarded
        if ctx.meter is not None:
            ctx.meter.count(metrics.SHED)
        has_body = request.has_body
        if has_body:
            self._closing = True
        self._begin_exchange(environ)
        self._answer(503, has_body, SHED_HEADERS)

    def _answer(self, status: int, close: bool, extra: bytes) -> None:
        """Answer the current request with the server's own plain-text ``status``
        (``ServerContext.server_response``), written like an error: logged and counted
        as any response (``_after_response``), the body dropped for HEAD by the wire."""
        close = close or self._closing or self.ctx.shutting_down
        response, body = self.ctx.server_response(status, close, extra)
        self.send_head(response, body, True)

    def _begin_exchange(self, environ: Environ) -> None:
        """The request is complete enough to run: the application owns the time now."""
        ctx = self.ctx
        self._environ = environ
        self._dispatched = True
        if self.wire.their_state is not SEND_BODY:
            # The body (if any) is complete: the application owns the time now. While
            # a threaded app still reads the body, the body timeout stays armed.
            self._phase = _APP
            self._deadline = INF
        self._sent = 0
        if ctx.request_ids is not None:
            self._request_id = ctx.request_ids.assign(environ, self._peer_trusted)
        if ctx.access_log is not None or ctx.meter is not None:
            self._started_ns = time.monotonic_ns()
            request = self._request
            if request is not None:
                self._method = metrics.METHOD_INDEX.get(request.method, metrics.OTHER_METHOD)
        if ctx.pre_request is not None and self._request is not None:
            ctx.pre_request(self._request)

    def _inline_exchange(self, environ: Environ, head_request: bool, context: Any) -> Exchange:
        ctx = self.ctx
        self._budget = PUMP_BUDGET
        exchange = Exchange(
            ctx.app,
            environ,
            self,
            ctx.clock,
            head_request=head_request,
            use_sendfile=self._raw_ok,
            context=context if context is not None else ctx.base_context.copy(),
        )
        self._exchange = exchange
        return exchange

    # ------------------------------------------------------------ the C path's hooks
    # ``_cfast.Fast.serve`` calls these (on the loop thread, inside data_received) to
    # hand a request to the Python machinery in the state the Python path would have
    # reached by the same point: one seam, so a client cannot tell the paths apart.

    def _c_forwarded(self, environ: Environ) -> None:
        """A request with forwarding fields: a peer that forwards for clients is a
        proxy, which pools its connections to us (see begin_shutdown), trusted or not;
        only a trusted one is believed (stage 4 of the environ, wsgi.forward_environ)."""
        self._pooled = True
        if self._forwarding is not None:
            forward_environ(environ, self._forwarding)

    def _c_dispatch(self, request: Request, environ: Environ) -> None:
        """Parsed and built in C; run here (threaded, or inline while a helper thread
        holds the gate)."""
        self.wire.adopt_request(request)
        self._request = request
        self._chunks = None
        self._body_in = 0
        if self.ctx.overloaded(request):
            self._shed(request, environ)
            return
        self._dispatch(EMPTY_INPUT, self.ctx.executor is not None, environ)

    def _c_exchange(
        self, request: Request, environ: Environ, context: Any, response: Response | None, started_ns: int = 0
    ) -> Exchange:
        """The application, called by the C path, needs the Python exchange (write(), a
        streaming or unusual result, an exception): the exchange as ``_dispatch``
        would have made it, with the response ``start_response`` gave so far."""
        self.wire.adopt_request(request)
        self._request = request
        self._chunks = None
        self._body_in = 0
        self._begin_exchange(environ)
        if started_ns:
            self._started_ns = started_ns  # the meter's clock (time.monotonic_ns's) at the head
        self._record = 0  # begun by the C path
        exchange = self._inline_exchange(environ, request.method == b"HEAD", context)
        exchange.response = response
        return exchange

    def _c_adopt(self, exchange: Exchange, result: Any, exc: BaseException | None) -> None:
        """Continue an exchange from ``_c_exchange`` after the application returned."""
        exchange.adopt(result, exc)
        self._run_inline(exchange, exchange.resume)

    def _c_closed(self) -> None:
        """The C path wrote a final response after which the connection closes."""
        self.wire.closed_by_c_path()
        self._after_response()

    def _run_inline(self, exchange: Exchange, step: Callable[[], object]) -> None:
        """Run one step of an inline exchange as application code.

        Application code must not see the server's event loop as running (Django, for
        one, refuses synchronous database access when it does), and every step of one
        exchange runs in the exchange's own context, so context variables an
        application sets while generating a response survive between chunks.
        """
        ctx = self.ctx
        if ctx.gated:
            # A helper thread may be running application code: wait for it to leave it.
            with ctx.gate:
                self._run_step(exchange, step)
        else:
            self._run_step(exchange, step)

    def _run_step(self, exchange: Exchange, step: Callable[[], object]) -> None:
        loop = self.ctx.loop
        _set_running_loop(None)
        try:
            exchange.context.run(step)
        finally:
            _set_running_loop(loop)

    # ------------------------------------------------------------ Sink (loop thread)

    @property
    def disconnected(self) -> bool:
        return self._lost

    def writable(self) -> bool:
        if self._write_paused or self._sf_active or self._lost:
            return False
        self._budget -= 1
        if self._budget < 0:
            # Fairness: let other connections run, then continue.
            self.ctx.loop.call_soon(self._resume_exchange)
            return False
        return True

    def wait_writable(self) -> bool:
        return not self._lost

    @property
    def send_blocked(self) -> bool:
        """The transport is paused or a sendfile is running."""
        return self._write_paused or self._sf_active

    def send_head(self, response: Response, body: bytes, end: bool) -> None:
        transport = self.transport
        if transport is None or self._lost or self.wire.our_state is not IDLE:
            return
        if self._closing or self.ctx.shutting_down:
            response.close = True
        wire = self.wire
        ids = self.ctx.request_ids
        if ids is not None and self._request_id and ids.response_name is not None:
            # A new Response: the one given may be shared (a cached static answer).
            response = Response(
                response.status,
                response.status_line,
                ids.add_to(response.headers, self._request_id),
                response.content_length,
                response.close,
            )
        self._response = response
        out = wire.send_response(response)
        if body:
            framed = wire.send_data(body)
            if framed:
                self._sent += len(body)
            if len(framed) > 16384:
                transport.write(out)
                out = framed
            else:
                out += framed
        if not end:
            transport.write(out)
            return
        try:
            out += wire.send_end()
        except LocalProtocolError as exc:
            transport.write(out)
            self._abort_response(str(exc))
            return
        if wire.our_state is MUST_CLOSE:
            self._write_last(transport, out)
        else:
            transport.write(out)
        self._after_response()

    def send_body(self, data: bytes) -> None:
        if self._lost or self.transport is None or self.wire.our_state is not SEND_BODY:
            return
        self._sent += len(data)
        self.transport.write(self.wire.send_data(data))

    def send_file(self, fd: int, offset: int, count: int) -> None:
        if self._lost or self.transport is None or self.wire.our_state is not SEND_BODY:
            return
        if not self.wire.prepare_raw(count):
            return  # HEAD: the head was the whole response
        sock = self.transport.get_extra_info("socket")
        self._sf_sock = sock.fileno()
        self._sf_fd = fd
        self._sf_offset = offset
        self._sf_count = count
        self._sf_active = True
        self._sent += count
        self._sf_step()

    def finish(self) -> None:
        if self._lost or self.transport is None or self.wire.our_state is not SEND_BODY:
            return
        if self._sf_active:
            self._finish_pending = True
            return
        try:
            tail = self.wire.send_end()
        except LocalProtocolError as exc:
            self._abort_response(str(exc))
            return
        self._write_last(self.transport, tail)
        self._after_response()

    def send_error(self, status: int) -> None:
        if self.wire.our_state is not IDLE:
            self.abort()
            return
        response, body = error_response(status, self.ctx.clock.date_server)
        self.send_head(response, body, True)

    def abort(self) -> None:
        """Abort the response: reset the connection (never a well-framed truncated body)."""
        exchange = self._exchange
        self._exchange = None
        if exchange is not None and not exchange.finished and self._tsink is None:
            # An inline exchange paused on a slow client: stop it (its close() runs).
            # This connection is its sink, so its _abandon() calls abort() again, which,
            # with _exchange now None, does the rest below exactly once.
            self._run_inline(exchange, exchange.disconnect)
            return
        self.wire.send_failed()
        self._log_access(aborted=True)
        if self._sf_active:
            self._sf_cleanup()
        if self.transport is not None and not self._lost:
            self.transport.abort()

    def _abort_response(self, reason: str) -> None:
        environ = self._environ or {}
        error_log.error(
            "%s %s: %s; connection aborted",
            environ.get("REQUEST_METHOD"),
            environ.get("RAW_URI"),
            reason,
        )
        self.abort()

    def _resume_exchange(self) -> None:
        exchange = self._exchange
        if exchange is None or self._tsink is not None or exchange.finished:
            return
        if self._write_paused or self._sf_active or self._lost:
            return
        self._budget = PUMP_BUDGET
        self._run_inline(exchange, exchange.pump)

    # ------------------------------------------------------------ after a response

    def app_failed(self) -> None:
        """The application raised (bridge.Exchange._fail); from any thread."""
        if self.ctx.meter is not None:
            self.ctx.meter.count(metrics.APP_EXCEPTIONS)

    def _log_access(self, aborted: bool = False) -> None:
        """The exchange is over (answered, or ``aborted``): access log and meter."""
        ctx = self.ctx
        meter = ctx.meter
        if meter is not None and self._environ is not None:
            response = self._response
            meter.finish(
                self._record,
                self._proto,
                self._method,
                response.status if response is not None else 0,
                self._started_ns,
                self._body_in,
                self._sent,
            )
            self._record = -1
            if aborted:
                meter.count(metrics.ABORTED)
        if ctx.access_log is not None and self._environ is not None:
            response = self._response
            ctx.access_log.log(
                AccessRecord(
                    self._environ,
                    response.status if response is not None else 0,
                    self._sent,
                    (time.monotonic_ns() - self._started_ns) / 1e9,
                    response.headers if response is not None else b"",
                )
            )
        if ctx.post_request is not None and self._environ is not None and self._request is not None:
            ctx.post_request(self._request, self._environ, self._response, self._sent)
        self._environ = None

    def _after_response(self) -> None:
        """The response is fully handed to the transport: next request, drain or close."""
        self._log_access()
        self._exchange = None
        self._tsink = None
        self._response = None
        if self.ctx.on_request_done is not None:
            self.ctx.on_request_done()
        self._continue_cycle()

    def _continue_cycle(self) -> None:
        """Start the next request cycle, drain an unread body, or close."""
        ctx = self.ctx
        wire = self.wire
        their = wire.their_state
        if wire.our_state is not DONE or their is MUST_CLOSE or their is ERROR:
            if their is MUST_CLOSE and wire.has_pending:
                # Bytes after the last message of a connection: ignored over HTTP (RFC
                # 9112 §9.6), a framing error for a gateway protocol (uwsgi), which is
                # logged. The response is complete either way: a clean close.
                try:
                    wire.next_event()
                except RemoteProtocolError as exc:
                    error_log.info(
                        "Bad request from %s: %s", self._environ_base.get("REMOTE_ADDR") or "unix", exc.reason
                    )
            self._close_after_response()
            return
        if their is SEND_BODY:
            # The application did not read the whole body: drain it so the next
            # request starts at a message boundary, or close if it is too large.
            if self._stream is not None:
                self._stream.discard()
                self._stream = None
            self._draining = True
            self._drained = 0
            self._phase = _BODY
            self._deadline = monotonic() + ctx.body_timeout
            self._resume_reading()
            if not self._in_process:
                self._process()
            return
        self._request = None
        self._stream = None
        self._drop_spool()
        wire.start_next_cycle()
        self._phase = _IDLE
        self._deadline = monotonic() + ctx.keep_alive
        if self._closing or ctx.shutting_down:
            # Stopping, but this response went out without ``Connection: close`` (the
            # stop began after its head was sent): the client may be sending its next
            # request right now, so it is treated like any idle connection at shutdown
            # (begin_shutdown): answered, with close, if it comes in time.
            self._closing = True
            self._deadline = self._stop_idle_deadline()
        self._resume_reading()
        if not self._in_process and (wire.has_pending or wire.eof):
            self._process()

    def _close_after_response(self) -> None:
        """Close once the last response is written, without resetting the client."""
        transport = self.transport
        if transport is None or self._lost or self._lingering or transport.is_closing():
            return
        wire = self.wire
        if wire.eof:
            transport.close()
            return
        # Half-close and discard whatever the client still sends, so the kernel does
        # not answer unread data with a reset that could destroy our response.
        self._lingering = True
        self._phase = _LINGER
        self._deadline = monotonic() + LINGER
        self._drop_spool()
        self._resume_reading()
        if not transport.can_write_eof():
            transport.close()
        elif not self._fin_sent:
            transport.write_eof()  # after the queued bytes (TLS: after close_notify)

    def _write_last(self, transport: asyncio.Transport, out: bytes) -> None:
        """Write a response's last bytes (``out`` may be empty); if the connection closes
        after them, the FIN goes out with them.

        A gateway that pools its connections reads the end of our response, hands the
        connection to its next request at once, and checks it for EOF first (Apache
        ``ap_proxy_check_connection``). If our FIN is not there yet, that request goes
        out on a connection we are closing and fails: mod_proxy_fcgi answers 503
        ("Failed to read FastCGI header") and does not retry. ``write_eof`` sends the
        FIN only on a later loop iteration (libuv shuts down from its pending queue),
        milliseconds later in a busy worker, and even a shutdown right after the write
        leaves the peer the microseconds in between. So over TCP the socket is corked
        (TCP_CORK) while the last bytes are written and shut down: the FIN leaves in
        the same segment as END_REQUEST (or the end of the HTTP response).

        Only a pooling peer (``_pooled``: a gateway, or a proxy) reuses a connection
        that way, and only when we close a connection it would have kept (a stop, or an
        error): a direct client's closing response (every HTTP/1.0 one, as ab sends
        them), a uwsgi or non-keep-conn FastCGI response keep the plain write and the
        FIN after it, without the five extra system calls.
        """
        if (
            self.wire.our_state is not MUST_CLOSE
            or self._tls
            or not self._pooled
            or not (self._closing or self.ctx.shutting_down)
        ):
            if out:
                transport.write(out)
            return
        corked = self._cork(transport, True)
        if out:
            transport.write(out)
        if not transport.get_write_buffer_size():  # else: write_eof, after the flush
            self._fin_sent = self._shutdown_now(transport)
        if corked:
            self._cork(transport, False)

    def _cork(self, transport: asyncio.Transport, on: bool) -> bool:
        """Set or clear TCP_CORK (TCP only); True if it was set."""
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)
        except OSError:
            return False
        return True

    def _shutdown_now(self, transport: asyncio.Transport) -> bool:
        """Half-close now (the transport has nothing queued); False if it cannot."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            dup = socket.socket(fileno=os.dup(sock.fileno()))
        except (OSError, ValueError):
            return False
        try:
            dup.shutdown(socket.SHUT_WR)
        except OSError:
            transport.close()  # the peer is gone (ENOTCONN): nothing to linger for
        finally:
            dup.close()  # the dup only: the transport's own descriptor stays open
        return True

    def _close_transport(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.close()

    def _drop_spool(self) -> None:
        spool = self._spool
        if spool is not None:
            self._spool = None
            spool.close()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self._lost:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self._lost:
            self._read_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------ errors and timeouts

    def _on_protocol_error(self, exc: RemoteProtocolError) -> None:
        meter = self.ctx.meter
        if meter is not None and exc.status in metrics.PARSE_STATUSES:
            meter.count(metrics.PARSE_ERRORS + metrics.PARSE_STATUSES.index(exc.status))
        environ = self._environ_base
        error_log.info(
            "Bad request from %s: %s (%d)", environ.get("REMOTE_ADDR") or "unix", exc.reason, exc.status
        )
        self._reply_error(exc)

    def give_up(self, sink: ThreadedSink) -> None:
        """--request-timeout (``ServerContext.check_stuck``): answer 504 for the stuck
        exchange of ``sink``, if it is still this connection's; its thread's output is
        dropped from now on."""
        if self._tsink is not sink or self._lost:
            return
        self._reply_error(AppTimeout("the application did not answer within --request-timeout"))

    def _reply_error(self, exc: RemoteProtocolError | AppTimeout) -> None:
        """Answer ``exc.status`` if no response has started, then close; else abort."""
        if self._stream is not None:
            self._stream.feed_error(exc)
        if self._tsink is not None:
            # The application thread may still be running: its output is discarded.
            self._tsink.cancel()
            self._tsink = None
        self._exchange = None
        self._draining = False
        wire = self.wire
        if wire.our_state is IDLE and wire.can_answer_error:
            response, body = error_response(exc.status, self.ctx.clock.date_server)
            self._closing = True
            self.send_head(response, body, True)
        elif wire.our_state is IDLE:
            self._closing = True
            self._close_after_response()  # no request to answer: a clean close
        else:
            self.abort()

    def check_timeout(self, now: float) -> None:
        if now >= self._write_deadline:
            error_log.debug("client stopped reading the response; connection dropped")
            self._count_timeout("send")
            self.abort()
            return
        if now < self._deadline:
            return
        self._deadline = INF
        phase = self._phase
        if phase == _IDLE:
            if self._input_waiting():
                # A request is in the socket, not yet read: the tick runs before this
                # loop iteration reads its input. Closing now would lose that request
                # (a gateway such as mod_proxy_fcgi does not retry it); it is read next.
                self._deadline = now + 1.0
                return
            self._count_timeout("keepalive")
            self._close_after_response()  # lingering: a request racing the close is not reset
        elif phase == _LINGER:
            self._close_transport()
        elif phase == _HEAD:
            self._count_timeout("header")
            self._reply_error(RequestTimeout("request head not received in time"))
        elif phase == _BODY:
            if self._draining:
                self._close_transport()
            else:
                self._count_timeout("body")
                self._reply_error(RequestTimeout("request body not received in time"))

    def _count_timeout(self, phase: str) -> None:
        if self.ctx.meter is not None:
            self.ctx.meter.count(metrics.TIMEOUTS + metrics.TIMEOUT_PHASES.index(phase))

    @property
    def idle(self) -> bool:
        """Between requests of a keep-alive connection (the gauge)."""
        return self._phase == _IDLE and not self._lingering

    def close_after_response(self) -> None:
        """Close after the next response (``Connection: close``), however it is idle
        now: ``ServerContext.announce_stop``. The Python path serves the rest of this
        connection (``data_received`` skips the C path once ``_closing`` is set)."""
        self._closing = True

    def begin_shutdown(self) -> None:
        """Graceful shutdown: close after the current response, or when idle too long.

        An idle keep-alive connection is not closed at once: a client may be sending
        its next request right now, and closing under it would fail that request. A
        request that comes is answered with close (HTTP ``Connection: close``; FastCGI:
        the connection closes right after END_REQUEST, which a gateway sees before it
        reuses the connection). An idle connection of a direct client is closed after
        SHUTDOWN_IDLE_GRACE: a client retries a request that a keep-alive close cut
        (RFC 9112 §9.3.1), and the stop should not wait for it.

        An idle connection of a gateway or proxy (``_pooled``) is another matter: it
        sits in the front-end's pool and is handed a request at any moment, without
        warning, and mod_proxy_fcgi answers 503 instead of retrying one that our close
        cut. So it is kept, and closed only at the deadline it would have had without
        the stop (``--keep-alive`` after its last response; a front-end configured to
        stop reusing idle connections before that, e.g. Apache ``ttl=``, never races
        it) or just before the drain deadline: the stop adds no close that normal
        operation would not make.
        """
        self._closing = True
        if self._phase == _IDLE:
            self._deadline = min(self._deadline, self._stop_idle_deadline())

    def _stop_idle_deadline(self) -> float:
        """When an idle connection closes once the stop has begun (see begin_shutdown)."""
        if self._pooled:
            # LINGER before the drain deadline: the close is a clean one, not an abort.
            return min(self._deadline, self.ctx.drain_deadline - LINGER)
        return min(self._deadline, monotonic() + SHUTDOWN_IDLE_GRACE)

    def _input_waiting(self) -> bool:
        """Bytes are waiting in the socket's receive buffer (not yet read)."""
        transport = self.transport
        if transport is None or self._lost:
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            count = fcntl.ioctl(sock.fileno(), termios.FIONREAD, _FIONREAD_BUF)
        except (OSError, ValueError):
            return False
        return int.from_bytes(count, sys.byteorder) > 0

    # ------------------------------------------------------------ sendfile

    def _sf_step(self) -> None:
        if self._lost or not self._sf_active:
            self._sf_cleanup()
            return
        transport = self.transport
        assert transport is not None
        if transport.get_write_buffer_size():
            self._sf_wait()  # the head is still queued: sendfile must come after it
            return
        sent_now = 0
        while self._sf_count > 0:
            try:
                n = os.sendfile(
                    self._sf_sock, self._sf_fd, self._sf_offset, min(self._sf_count, SENDFILE_BUDGET)
                )
            except BlockingIOError:
                self._sf_wait()
                return
            except OSError as exc:
                error_log.debug("sendfile failed: %s", exc)
                self._sf_cleanup()
                self.abort()
                return
            if n == 0:
                self._sf_cleanup()
                self._abort_response("file shorter than its Content-Length")
                return
            self._sf_offset += n
            self._sf_count -= n
            sent_now += n
            if sent_now >= SENDFILE_BUDGET and self._sf_count:
                self._sf_unwait()
                self.ctx.loop.call_soon(self._sf_step)
                return
        self._sf_cleanup()
        if self._tsink is not None:
            self._tsink.update(self._write_paused)
        if self._finish_pending:
            self._finish_pending = False
            self.finish()
        elif self._tsink is None:
            # Possibly still inside the exchange that started this sendfile: continue
            # it from the loop, never re-entrantly.
            self.ctx.loop.call_soon(self._resume_exchange)

    def _sf_wait(self) -> None:
        if self._sf_dup < 0:
            self._sf_dup = os.dup(self._sf_sock)
            self.ctx.loop.add_writer(self._sf_dup, self._sf_step)

    def _sf_unwait(self) -> None:
        if self._sf_dup >= 0:
            self.ctx.loop.remove_writer(self._sf_dup)
            os.close(self._sf_dup)
            self._sf_dup = -1

    def _sf_cleanup(self) -> None:
        self._sf_unwait()
        self._sf_active = False


class _Running:
    """An exchange on an application thread, for --request-timeout."""

    __slots__ = ("exchange", "given_up", "method", "path", "started")

    def __init__(self, exchange: Exchange, method: bytes, path: bytes) -> None:
        self.exchange = exchange
        self.method = method
        self.path = path
        self.started = monotonic()
        self.given_up = False


class ThreadedSink:
    """The :class:`~rapidwsgi.bridge.Sink` an application thread uses.

    Application-thread methods queue the call onto the loop and account the bytes in
    flight; ``writable``/``wait_writable`` hold the thread back while the loop has more
    than ``THREAD_HIGH_WATER`` bytes queued, the transport is paused or a sendfile
    runs. Loop-thread methods (``update``, ``set_disconnected``, ``cancel``) release it.
    """

    def __init__(self, conn: HTTPConnection, gate: Any = None) -> None:
        self._conn = conn
        #: ``ServerContext.gate`` for a helper thread of an inline worker: released while
        #: waiting for the loop, which may need it to run another application step.
        self._gate = gate
        self._call: Callable[..., Any] = conn.ctx.loop.call_soon_threadsafe
        self._cond = threading.Condition(threading.Lock())
        self._pending = 0
        self._blocked = False
        self._disconnected = False
        self._cancelled = False

    # -- application thread

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    def writable(self) -> bool:
        return not self._disconnected and not self._blocked and self._pending < THREAD_HIGH_WATER

    def wait_writable(self) -> bool:
        with Released(self._gate):
            return self._wait_writable()

    def _wait_writable(self) -> bool:
        with self._cond:
            while not self.writable():
                if self._disconnected:
                    return False
                self._cond.wait(1.0)
            return True

    def _queue(self, size: int) -> None:
        with self._cond:
            self._pending += size

    def send_head(self, response: Response, body: bytes, end: bool) -> None:
        self._queue(len(body))
        self._call(self._deliver, self._conn.send_head, len(body), response, body, end)

    def send_body(self, data: bytes) -> None:
        self._queue(len(data))
        self._call(self._deliver, self._conn.send_body, len(data), data)

    def send_file(self, fd: int, offset: int, count: int) -> None:
        with self._cond:
            self._blocked = True
        self._call(self._deliver_file, fd, offset, count)

    def finish(self) -> None:
        self._call(self._deliver, self._conn.finish, 0)

    def app_failed(self) -> None:
        self._conn.app_failed()  # a counter: safe from this thread

    def send_error(self, status: int) -> None:
        self._call(self._deliver, self._conn.send_error, 0, status)

    def abort(self) -> None:
        self._call(self._deliver, self._conn.abort, 0)

    # -- loop thread

    def _deliver(self, method: Callable[..., None], size: int, *args: Any) -> None:
        if not self._cancelled:
            method(*args)
        if size:
            with self._cond:
                self._pending -= size
                self._cond.notify_all()

    def _deliver_file(self, fd: int, offset: int, count: int) -> None:
        conn = self._conn
        if not self._cancelled:
            conn.send_file(fd, offset, count)
        self.update(conn.send_blocked)

    def update(self, blocked: bool) -> None:
        with self._cond:
            self._blocked = blocked
            self._cond.notify_all()

    def set_disconnected(self) -> None:
        with self._cond:
            self._disconnected = True
            self._cond.notify_all()

    def cancel(self) -> None:
        """The server answered for the application (e.g. 400): drop its output."""
        self._cancelled = True
        self.set_disconnected()

    def give_up(self) -> None:
        """--request-timeout: the server answers for the stuck application (504)."""
        self._conn.give_up(self)
