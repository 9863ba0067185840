"""Server hooks: functions a Python config file defines, called at fixed points.

The names and argument shapes are gunicorn's, so that a gunicorn config's hooks work
here as they are (``server.log.info(...)``, ``worker.pid``, ``req.method``):

==================  =======================  ==========================================
hook                process                  when
==================  =======================  ==========================================
on_starting         master                   first thing, before anything is forked
when_ready          master                   the listeners are ready, before the workers
pre_fork            master                   before each worker is forked
post_fork           worker                   right after its fork, before the app loads
post_worker_init    worker                   the application is loaded, before serving
pre_request         worker                   a request head is complete, before the app
post_request        worker                   its response is sent (or aborted)
worker_exit         worker                   it stopped serving, just before it exits
child_exit          master                   a worker exited and was reaped
on_reload           master                   SIGHUP (or --reload), before the new workers
on_exit             master                   just before the master exits
==================  =======================  ==========================================

Rules: a hook that raises is logged with its traceback and the server goes on (a hook
never kills the master, nor a worker); hooks run on the thread that reaches the point
(``pre_request``/``post_request``: the worker's event loop, so keep them short).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .log import error_log

if TYPE_CHECKING:  # annotations only: the master, which runs hooks too, never needs them
    from .events import Request, Response

#: Every hook, in the order of a server's life.
HOOKS: Final = (
    "on_starting",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "pre_request",
    "post_request",
    "worker_exit",
    "child_exit",
    "on_reload",
    "on_exit",
)


def run(hook: Callable[..., object] | None, name: str, *args: Any) -> None:
    """Call ``hook(*args)`` if it is set; an exception is logged, never raised."""
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        error_log.exception("The %s hook failed", name)


class WorkerInfo:
    """The ``worker`` argument of the hooks: ``pid`` (None in ``pre_fork``), ``age`` (the
    number of workers the master started before it, as gunicorn's), ``generation``,
    ``cfg`` (the settings), ``log`` (the error log), and in the worker, once loaded,
    ``app``; in ``child_exit``, ``exit_code`` (as ``os.waitstatus_to_exitcode``)."""

    def __init__(self, age: int, generation: int, cfg: Any) -> None:
        self.pid: int | None = None
        self.age = age
        self.generation = generation
        self.cfg = cfg
        self.log = error_log
        self.app: Any = None
        self.exit_code: int | None = None

    def started(self) -> None:
        """In the new worker process."""
        self.pid = os.getpid()


class HookRequest:
    """The ``req`` of ``pre_request``/``post_request``, with gunicorn's attributes:
    ``method``, ``uri`` (the request-target), ``path`` and ``query`` (still
    percent-encoded), ``version`` ((1, 1)), ``headers`` ([(NAME, value)], names upper-case)."""

    __slots__ = ("headers", "method", "path", "query", "uri", "version")

    def __init__(self, request: Request) -> None:
        self.method = request.method.decode("latin-1")
        self.uri = request.target.decode("latin-1")
        self.path = request.path.decode("latin-1")
        self.query = request.query.decode("latin-1")
        major, _, minor = request.version.decode("latin-1").partition(".")
        self.version = (int(major or 1), int(minor or 0))
        self.headers = [(k.decode("latin-1").upper(), v.decode("latin-1")) for k, v in request.headers]


class HookResponse:
    """The ``resp`` of ``post_request``: ``status`` ("200 OK"), ``status_code``,
    ``headers`` ([(name, value)] as sent), ``sent`` (body bytes sent); status 0 and no
    headers for a request aborted before its response started."""

    __slots__ = ("headers", "sent", "status", "status_code")

    def __init__(self, response: Response | None, sent: int) -> None:
        self.status_code = response.status if response is not None else 0
        self.status = response.status_line.decode("latin-1") if response is not None else ""
        self.sent = sent
        self.headers: list[tuple[str, str]] = []
        if response is not None:
            for line in response.headers.split(b"\r\n"):
                name, sep, value = line.partition(b":")
                if sep:
                    self.headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
