"""One serving process: event loop, listeners, connections, graceful stop.

Contract: ``Worker(config, app, sockets).run()`` serves on already-bound listening
sockets until it is told to stop, and returns the process exit status. It installs
its own signal handling (SIGTERM/SIGINT: graceful, SIGQUIT: immediate); the handlers
only record the signal, the loop acts on it. The supervisor of a multi-process server
(master) reuses this class unchanged in each child process.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TextIO, cast

from . import __version__
from .config import Config
from .connection import HTTPConnection, ServerContext
from .log import AccessLog, Clock, error_log
from .protocols.http1 import Limits
from .sockets import describe
from .wsgi import Environ, FileWrapper, WSGIApp

TICK: Final = 1.0


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


def base_environ(config: Config, errors: TextIO) -> Environ:
    """The environ keys that are the same for every request of this process."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": errors,
        "wsgi.multithread": config.threads > 1,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": f"rapidwsgi/{__version__}",
        "SCRIPT_NAME": config.root_path.rstrip("/"),
    }


class Worker:
    """Serves ``app`` on ``sockets`` in this process (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        app: WSGIApp,
        sockets: list[socket.socket],
        errors: TextIO | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.sockets = sockets
        self.errors = errors if errors is not None else sys.stderr
        self._signal: int | None = None
        self._stuck_threads = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

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

    def _on_signal(self, signum: int) -> None:
        # Only record the signal; _serve() acts on it.
        self._signal = signum
        if self._stop is not None:
            self._stop.set()

    async def _serve(self) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        clock = Clock(server="rapidwsgi" if config.server_header else None, date=config.date_header)
        access_log = (
            AccessLog(config.access_logfile, config.access_logformat, clock)
            if config.access_logfile
            else None
        )
        executor = (
            ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="rapidwsgi-app")
            if config.threads > 1
            else None
        )
        ctx = ServerContext(
            app=self.app,
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
        )
        # HTTPConnection implements the Protocol API without subclassing asyncio.Protocol.
        factory = cast(Callable[[], asyncio.BaseProtocol], functools.partial(HTTPConnection, ctx))
        servers = []
        for sock in self.sockets:
            servers.append(await loop.create_server(factory, sock=sock, backlog=config.backlog))
            error_log.info("Listening at: %s (%d)", describe(sock), os.getpid())
        error_log.info(
            "Serving %s with %s, %s",
            config.app,
            type(loop).__module__.split(".")[0],
            f"{config.threads} application threads" if config.threads > 1 else "the application inline",
        )
        ticker = loop.call_later(TICK, self._tick, ctx)
        self._ticker = ticker
        await self._stop.wait()

        graceful = self._signal != signal.SIGQUIT
        error_log.info(
            "Shutting down (%s)%s",
            signal.Signals(self._signal).name if self._signal else "stop",
            "" if not graceful else f", waiting up to {config.graceful_timeout:g}s for requests",
        )
        for server in servers:
            server.close()
        ctx.shutdown()
        if graceful:
            deadline = time.monotonic() + config.graceful_timeout
            while ctx.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for conn in list(ctx.connections):
            conn.abort()
        self._ticker.cancel()
        if access_log is not None:
            access_log.flush()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            self._stuck_threads = ctx.threads_busy
        error_log.info("Stopped")
        return 0

    def _tick(self, ctx: ServerContext) -> None:
        ctx.tick()
        assert self._loop is not None
        self._ticker = self._loop.call_later(TICK, self._tick, ctx)

    def stop(self) -> None:
        """Ask the worker to stop gracefully (thread-safe)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_signal, signal.SIGTERM)
