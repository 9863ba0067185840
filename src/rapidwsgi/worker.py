"""One serving process: event loop, listeners, connections, graceful stop.

Contract: ``Worker(config, app, sockets).run()`` serves on already-bound listening
sockets until it is told to stop, and returns the process exit status. It installs
its own signal handling (SIGTERM/SIGINT: graceful, SIGQUIT: immediate, also in the
middle of a graceful stop); the handlers only record the signal, set the context's
``shutting_down`` flag (so that every response that starts after the signal carries
``Connection: close``, even one an inline application is computing while the loop is
blocked) and wake the loop, which acts on it. The supervisor of a multi-process server
(master) reuses this class unchanged in each child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, cast

from . import __version__
from .config import Config
from .connection import C_PATH_DEFAULT, HTTPConnection, ServerContext
from .events import PROTOCOLS, Request, Response
from .forwarded import ForwardingPolicy, TrustedPeers
from .hooks import HookRequest, HookResponse, WorkerInfo
from .hooks import run as run_hook
from .log import AccessLog, Clock, RequestIds, error_log, reopen_error_log
from .metrics import Meter, make_meter
from .protocols.base import Limits, ServerConnection
from .protocols.fastcgi import FastCGIConnection
from .protocols.http1 import H1Connection
from .protocols.uwsgi import UwsgiConnection
from .sockets import describe, reuse_port_twin
from .static import StaticFiles
from .supervision import Supervision
from .tls import worker_context
from .wsgi import Environ, WSGIApp, process_environ

TICK: Final = 1.0
#: Inline mode, --workers-max: a beat that fires this much later than it was due found the
#: loop busy (an application call was running when it came due). Above the timer's own
#: jitter (libuv's millisecond clock), below any request worth a worker.
BUSY_LATENESS: Final = 0.005

#: Listening handles per socket: connections a worker accepts per loop iteration at most.
ACCEPT_HANDLES: Final = 4

#: The wire protocol class for each ``--protocol`` name: ``events.PROTOCOLS``, the one list
#: of names, in its order, which is each class's ``METRICS_PROTOCOL`` index (an instance
#: attribute once mypyc compiles the classes, so it cannot be read here: held together
#: by tests/test_metrics.py).
WIRE_PROTOCOLS: Final[dict[str, Callable[[Limits], ServerConnection]]] = dict(
    zip(PROTOCOLS, (H1Connection, UwsgiConnection, FastCGIConnection), strict=True)
)


def import_event_loop(kind: str) -> None:
    """Import uvloop now if :func:`new_event_loop` will use it: before the application
    and in the process that forks the workers (the master without ``--preload``, and
    before ``--user`` drops privileges; a ``--preload`` zygote), so that they share it."""
    if kind in ("auto", "uvloop"):
        with contextlib.suppress(ImportError):
            import uvloop  # noqa: F401


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked for (or when available with ``auto``), else asyncio's loop."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
_Factory = Callable[[], asyncio.BaseProtocol]


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def base_environ(config: Config, errors: object) -> Environ:
    """Stage 1 of the environ (``wsgi.process_environ``) from this process's settings."""
    return process_environ(
        errors=errors,
        multithread=config.threads > 1,
        script_name=config.root_path,
        software=f"rapidwsgi/{__version__}",
    )


class Worker:
    """Serves ``app`` on ``sockets`` in this process (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        app: WSGIApp,
        sockets: list[socket.socket],
        errors: object = None,
        supervision: Supervision | None = None,
        info: WorkerInfo | None = None,
    ) -> None:
        self.config = config
        #: What the request hooks get as ``worker`` (hooks.py).
        self.info = info if info is not None else WorkerInfo(0, 0, config)
        self.app = app
        self.sockets = sockets
        self.errors = errors if errors is not None else sys.stderr
        self.supervision = supervision
        self._signal: int | None = None
        #: Set by a SIGQUIT (or by SIGTERM/SIGINT when the worker stops immediately):
        #: also ends a graceful stop that is already under way.
        self._quick = False
        self._stuck_threads = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx: ServerContext | None = None
        self._served = 0
        #: Requests one worker can have in the application at once (--threads N,
        #: --limit-concurrency; 1 inline): what a BEAT_FULL is measured against.
        self._capacity = 1
        #: When the next beat is due (monotonic), to tell how late it fired.
        self._beat_due = 0.0
        self._retiring = False
        self._timers: list[asyncio.TimerHandle] = []
        #: SIGUSR2 from the master: a stop is coming (--shutdown-delay).
        self._unready = False
        self._servers: list[asyncio.AbstractServer] = []
        self._listen_task: asyncio.Task[None] | None = None
        #: (socket, protocol factory, TLS context, handshake timeout) per listener.
        self._listeners: list[tuple[socket.socket, _Factory, Any, float | None]] = []

    def run(self) -> int:
        loop = new_event_loop(self.config.loop)
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            status = loop.run_until_complete(self._serve())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        if self._stuck_threads:
            # Application threads cannot be interrupted, and the interpreter would wait
            # for them at exit: the grace period is over, so leave without them.
            error_log.warning("exiting with %d application thread(s) still running", self._stuck_threads)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(status)
        return status

    def _on_signal(self, signum: int, frame: object = None) -> None:
        # A Python-level handler: it runs in the main thread as soon as the signal
        # arrives, even while an inline application blocks the loop (time.sleep, a
        # blocking read). It only records the signal and sets flags; the loop acts.
        self._signal = signum
        if signum == signal.SIGQUIT:
            self._quick = True
        ctx = self._ctx
        if ctx is not None:
            # A flag, not an action: a response the blocked application finishes now
            # already says Connection: close; ctx.shutdown() runs from the loop.
            ctx.shutting_down = True
        loop = self._loop
        if loop is not None and self._stop is not None:
            # Safe from a signal handler (asyncio documents it; uvloop appends to a
            # deque and pokes a libuv async handle). The loop is closed only once the
            # worker has stopped, when there is nothing left to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop.set)

    def _on_unready(self, signum: int, frame: object = None) -> None:
        # SIGUSR2 from the master (--shutdown-delay): a flag, and the loop told to act
        # on it (ServerContext.announce_stop: health 503, connections close after their
        # next response). The flag alone already turns the health path 503.
        self._unready = True
        ctx = self._ctx
        if ctx is not None:
            ctx.unready = True
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(ctx.announce_stop)

    def _install_signals(self) -> None:
        loop = self._loop
        assert loop is not None
        stops = [signal.SIGTERM, signal.SIGQUIT]
        if self.supervision is None:
            stops.append(signal.SIGINT)
        else:
            # A terminal's Ctrl-C reaches the whole process group: the master decides.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGTTIN, signal.SIG_IGN)
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        for signum in stops:
            # signal.signal rather than loop.add_signal_handler: the loop's handler
            # runs only once the loop turns, after the data already queued (a blocked
            # inline application's response, a request that arrived meanwhile) has
            # been handled without knowing that the worker is stopping.
            signal.signal(signum, self._on_signal)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        signal.signal(signal.SIGUSR2, self._on_unready)
        # The master forks its children with SIGUSR1 and SIGUSR2 blocked (a log
        # rotation or a stop announced during the application's import would otherwise
        # kill them): the handlers are in place now, so a pending one is delivered
        # here, and later ones as they come.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1, signal.SIGUSR2})

    def _reopen_logs(self) -> None:
        ctx = self._ctx
        if ctx is not None and ctx.access_log is not None:
            ctx.access_log.reopen()
        reopen_error_log()

    def _listening_sockets(self) -> list[socket.socket]:
        if not self.config.reuse_port:
            return self.sockets
        # Each worker binds its own SO_REUSEPORT socket to the master's TCP addresses.
        return [
            reuse_port_twin(sock, self.config.backlog) if sock.family != socket.AF_UNIX else sock
            for sock in self.sockets
        ]

    async def _serve(self) -> int:
        """Start up, serve until a stop signal, then drain (graceful or not) and stop."""
        self._stop = asyncio.Event()
        self._install_signals()
        ctx = await self._start()
        await self._stop.wait()
        return await self._drain(ctx)

    def _make_context(self) -> ServerContext:
        """The per-process serving state (logs, thread pool, meter, limits, policies)."""
        config = self.config
        loop = asyncio.get_running_loop()
        clock = Clock(server="rapidwsgi" if config.server_header else None, date=config.date_header)
        json_log = bool(config.access_logfile) and config.access_logformat == "json"
        request_ids = RequestIds(config.request_id_header) if config.request_id_header or json_log else None
        access_log = (
            AccessLog(
                config.access_logfile,
                config.access_logformat,
                clock,
                request_ids.key if request_ids is not None else "HTTP_X_REQUEST_ID",
            )
            if config.access_logfile
            else None
        )
        # --limit-concurrency: at most that many requests in the application at once.
        running = min(config.threads, config.limit_concurrency or config.threads)
        self._capacity = running if config.threads > 1 else 1
        executor = (
            ThreadPoolExecutor(max_workers=running, thread_name_prefix="rapidwsgi-app")
            if config.threads > 1
            else None
        )
        supervision = self.supervision
        meter: Meter | None = None
        if supervision is not None and supervision.metrics_region is not None and supervision.slot >= 0:
            meter = make_meter(supervision.metrics_region, supervision.slot, C_PATH_DEFAULT)
        ctx = ServerContext(
            app=self.app,
            meter=meter,
            threads=config.threads,
            request_ids=request_ids,
            loop=loop,
            base_environ=base_environ(config, self.errors),
            limits=Limits(
                max_line=config.limit_request_line,
                max_fields=config.limit_request_fields,
                max_field_size=config.limit_request_field_size,
                max_body=config.limit_request_body,
            ),
            clock=clock,
            executor=executor,
            keep_alive=config.keep_alive,
            header_timeout=config.header_timeout,
            body_timeout=config.body_timeout,
            send_timeout=config.send_timeout,
            access_log=access_log,
            forwarding=ForwardingPolicy(
                TrustedPeers(config.forwarded_allow_ips),
                config.trusted_proxy_headers,
                config.clear_untrusted_proxy_headers,
            ),
            proxy_protocol=config.proxy_protocol,
            static=StaticFiles.from_config(config),
            on_request_done=self._request_done if self.supervision is not None else None,
            health_path=config.health_path,
            # The pool's queue is bounded: --backlog-requests beyond the running ones.
            admit_limit=running + config.backlog_requests if executor is not None else 0,
            request_timeout=config.request_timeout if executor is not None else 0.0,
            pre_request=self._pre_request if config.pre_request is not None else None,
            post_request=self._post_request if config.post_request is not None else None,
        )
        ctx.limit_connections = config.limit_connections
        ctx.on_connections_full = self._connections_full
        self._ctx = ctx
        if self._signal is not None:
            ctx.shutting_down = True  # a signal came while the context was being built
        ctx.unready = self._unready
        return ctx

    async def _start(self) -> ServerContext:
        """Build the context, listen on every socket, start the timers, tell the master."""
        config = self.config
        loop = asyncio.get_running_loop()
        ctx = self._make_context()
        # Everything alive now (modules, the application, its caches) lives as long as
        # the worker: keep the cyclic garbage collector from traversing it again at
        # every collection the requests' allocations trigger (and from touching pages
        # shared with the master after fork).
        gc.collect()
        gc.freeze()
        # Loaded here, in each worker, so that a reload picks up renewed certificate files
        # (the master already checked that they load).
        tls, problem = worker_context(config)
        if problem:
            error_log.warning("%s; serving the certificate loaded at start", problem)
        for index, sock in enumerate(self._listening_sockets()):
            wire = WIRE_PROTOCOLS[config.protocol_for(index)]
            secure = tls is not None and config.tls_for(index)
            # HTTPConnection implements the Protocol API without subclassing asyncio.Protocol.
            factory = cast(
                Callable[[], asyncio.BaseProtocol], functools.partial(HTTPConnection, ctx, wire, secure)
            )
            # The TLS handshake is bounded like a request head: a client that opens a
            # connection and stays silent holds it no longer.
            tls_on = tls if secure else None
            limit = config.header_timeout if secure else None
            self._listeners.append((sock, factory, tls_on, limit))
            if self.supervision is None:
                error_log.info("Listening at: %s (%d)", describe(sock, secure), os.getpid())
        self._servers = await self._listen()
        error_log.info(
            "Serving %s with %s, %s",
            config.app,
            type(loop).__module__.split(".")[0],
            f"{config.threads} application threads" if config.threads > 1 else "the application inline",
        )
        self._every(TICK, ctx.tick)
        if self.supervision is not None and (config.max_worker_memory or ctx.request_timeout):
            self._every(TICK, self._check_health)
        if self.supervision is not None:
            self.supervision.send(Supervision.READY)
            self._beat_due = time.monotonic() + self.supervision.beat_interval
            self._every(self.supervision.beat_interval, self._beat)
        return ctx

    async def _drain(self, ctx: ServerContext) -> int:
        """Stop accepting, serve what is queued and in flight (graceful), then stop."""
        config = self.config
        graceful = not self._quick
        error_log.info(
            "Worker shutting down (%s)%s",
            signal.Signals(self._signal).name if self._signal else "stop",
            "" if not graceful else f", waiting up to {config.graceful_timeout:g}s for requests",
        )
        self._stop_accepting()
        queued = self._close_listeners()
        deadline = time.monotonic() + config.graceful_timeout
        # Idle connections of a front-end's pool stay open until their keep-alive
        # deadline, at most until this one (HTTPConnection.begin_shutdown).
        ctx.shutdown(deadline if graceful else time.monotonic())
        if graceful:
            loop = asyncio.get_running_loop()
            for accepted, factory, tls_on, limit in queued:
                # Each closes after its one response (ctx.shutting_down, connection_made).
                with contextlib.suppress(OSError, ValueError):
                    await loop.connect_accepted_socket(
                        factory, accepted, ssl=tls_on, ssl_handshake_timeout=limit
                    )
            # A SIGQUIT now (the master's "stop at once", e.g. a second Ctrl-C) ends
            # the wait: what is left is aborted below.
            while ctx.connections and time.monotonic() < deadline and not self._quick:
                await asyncio.sleep(0.05)
                ctx.check_timeouts(time.monotonic())
            if self._quick and ctx.connections:
                error_log.info("Stopping at once (SIGQUIT): %d connection(s) cut", len(ctx.connections))
        else:
            for accepted, *_ in queued:
                accepted.close()
        return self._stopped(ctx)

    def _stopped(self, ctx: ServerContext) -> int:
        """The end of a stop: cut what is left, cancel the timers, release the threads."""
        for conn in list(ctx.connections):
            conn.abort()
        for timer in self._timers:
            timer.cancel()
        if ctx.access_log is not None:
            ctx.access_log.flush()
        if ctx.executor is not None:
            ctx.executor.shutdown(wait=False, cancel_futures=True)
        ctx.stop_helpers()
        self._stuck_threads = ctx.threads_busy
        error_log.info("Worker stopped")
        return 0

    async def _listen(self) -> list[asyncio.AbstractServer]:
        """Accept on every listening socket (again, after ``_stop_accepting``).

        libuv accepts one connection per loop iteration and listening handle (libuv
        1.45, PR 3696); an iteration of a worker with thousands of busy connections
        takes tens of milliseconds, so a burst of new clients would wait in the listen
        queue for seconds (wrk -c2000 timeouts). Each extra handle on a dup of the
        socket accepts one more per iteration, natively; when the queue is shorter, it
        costs one accept() that fails with EAGAIN. Every handle is on a dup, so that
        closing them (--limit-connections) leaves the socket itself, and the
        connections queued on it, in place.
        """
        loop = asyncio.get_running_loop()
        servers: list[asyncio.AbstractServer] = []
        for sock, factory, tls_on, limit in self._listeners:
            for _ in range(ACCEPT_HANDLES):
                server = await loop.create_server(
                    factory,
                    sock=sock.dup(),
                    backlog=self.config.backlog,
                    ssl=tls_on,
                    ssl_handshake_timeout=limit,
                )
                servers.append(server)
        return servers

    def _close_listeners(self) -> list[tuple[socket.socket, _Factory, Any, float | None]]:
        """Close this process's copy of each listening socket (once every process that
        holds one has, new connections are refused: a front-end without health checks
        then tries another server, safely even for a POST, since nothing was sent),
        after accepting the connections already in its queue: those completed their
        handshake and may have sent a request, and closing the socket under them would
        reset them, a POST with them, which a front-end cannot retry. Returned, to be
        served (a connection that arrives between the last accept and the close is
        still reset: a window of a system call, not of the whole drain)."""
        queued: list[tuple[socket.socket, _Factory, Any, float | None]] = []
        for sock, factory, tls_on, limit in self._listeners:
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                while len(queued) < self.config.backlog:
                    conn, _ = sock.accept()
                    queued.append((conn, factory, tls_on, limit))
            sock.close()
        return queued

    def _stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []

    def _connections_full(self, full: bool) -> None:
        """--limit-connections (ServerContext.connection_opened / _closed): stop
        accepting at the limit, so that new connections wait in the kernel's queue (for
        this worker or another), and accept again below it."""
        if full:
            error_log.debug("--limit-connections %d reached: not accepting", self.config.limit_connections)
            self._stop_accepting()
        elif self._listen_task is None and self._stop is not None and not self._stop.is_set():
            self._listen_task = asyncio.get_running_loop().create_task(self._accept_again())

    async def _accept_again(self) -> None:
        try:
            servers = await self._listen()
        except OSError:  # the stop closed the sockets meanwhile
            self._listen_task = None
            return
        self._listen_task = None
        ctx = self._ctx
        if (self._stop is not None and self._stop.is_set()) or (ctx is not None and not ctx.accepting):
            for server in servers:
                server.close()  # the stop began, or the limit was reached again, meanwhile
            return
        self._servers = servers

    def _pre_request(self, request: Request) -> None:
        run_hook(self.config.pre_request, "pre_request", self.info, HookRequest(request))

    def _post_request(self, request: Request, environ: Environ, response: Response | None, sent: int) -> None:
        run_hook(
            self.config.post_request,
            "post_request",
            self.info,
            HookRequest(request),
            environ,
            HookResponse(response, sent),
        )

    def _check_health(self) -> None:
        """Every tick: --max-worker-memory and --request-timeout (replace-first)."""
        ctx = self._ctx
        supervision = self.supervision
        if ctx is None or supervision is None:
            return
        stuck = ctx.check_stuck(time.monotonic()) if ctx.request_timeout else 0
        if self._retiring:
            return
        limit = self.config.max_worker_memory
        if limit:
            rss = rss_bytes()
            if rss > limit << 20:
                self._retire(
                    Supervision.RETIRING_MEMORY,
                    f"resident memory {rss / (1 << 20):.1f} MiB is over --max-worker-memory {limit} MiB",
                )
                return
        if stuck:
            self._retire(Supervision.RETIRING_STUCK, f"{stuck} thread(s) stuck past --request-timeout")

    def _retire(self, message: bytes, why: str) -> None:
        """Ask the master for a replacement; keep serving until it stops this worker."""
        assert self.supervision is not None
        self._retiring = True
        error_log.warning("%s; asking to be retired", why)
        self.supervision.send(message)

    def _every(self, interval: float, action: Callable[[], object]) -> None:
        """Run ``action`` every ``interval`` seconds on the loop until the worker stops."""
        loop = self._loop
        assert loop is not None
        slot = len(self._timers)

        def fire() -> None:
            action()
            self._timers[slot] = loop.call_later(interval, fire)

        self._timers.append(loop.call_later(interval, fire))

    def _beat(self) -> None:
        supervision = self.supervision
        assert supervision is not None
        if os.getppid() != supervision.master_pid:
            error_log.warning("master %d is gone; stopping", supervision.master_pid)
            self._on_signal(signal.SIGTERM)
            return
        if not supervision.report_load:
            supervision.send(Supervision.BEAT)
            return
        self._report_load(supervision)

    def _report_load(self, supervision: Supervision) -> None:
        """A beat that says how much of this worker's capacity is in use (--workers-max).

        Nothing is measured per request: the beat samples what the worker keeps anyway.
        Threaded: ``threads_busy`` (running and queued) against the capacity. Inline, the
        beat runs on the loop, so never while an application call runs; it asks instead
        (1) whether it came due while the loop was busy (it fired late: busy) and (2)
        whether requests were already waiting when it fired: two ``call_soon`` steps later
        the loop has run one poll and its callbacks, and the requests those answered had
        arrived before and waited for the loop (busy; full when they were a queue, see
        ``_inline_load``). An inline loop blocked by a long request sends nothing at all:
        the master counts its silence as full.
        """
        now = time.monotonic()
        late = now - self._beat_due > BUSY_LATENESS
        self._beat_due = now + supervision.beat_interval
        ctx = self._ctx
        busy = ctx.threads_busy if ctx is not None else 0
        if self._capacity > 1 or busy:
            # Threaded; or inline with a helper thread holding the gate (a request with
            # a body the application streams): another request would wait for it.
            full = busy >= self._capacity
            supervision.send(
                Supervision.BEAT_FULL if full else Supervision.BEAT_BUSY if busy else Supervision.BEAT
            )
            return
        loop = self._loop
        assert loop is not None
        served = self._served
        # This step runs before the loop's next poll, the second one after it.
        loop.call_soon(self._inline_probe, supervision, served, late)

    def _inline_probe(self, supervision: Supervision, served: int, late: bool) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_soon(self._inline_load, supervision, served, late)

    def _inline_load(self, supervision: Supervision, served: int, late: bool) -> None:
        # Requests answered since the beat had arrived before it: they waited. One alone
        # may be a single client's next request, sent while the beat ran; it is a queue
        # only if the loop was busy anyway (late). Two or more are a queue.
        waited = self._served - served
        if waited >= 2 or (late and waited):
            supervision.send(Supervision.BEAT_FULL)
        else:
            supervision.send(Supervision.BEAT_BUSY if late or waited else Supervision.BEAT)

    def _request_done(self) -> None:
        self._served += 1
        supervision = self.supervision
        if (
            supervision is not None
            and supervision.max_requests
            and not self._retiring
            and self._served >= supervision.max_requests
        ):
            # Keep serving: the master retires this worker once a replacement serves.
            self._retiring = True
            error_log.info("Served %d requests; asking to be retired", self._served)
            supervision.send(Supervision.RETIRING)
