"""How a worker talks to its master: the one-byte messages of its heartbeat pipe.

A leaf module (``os`` and ``typing`` only) so that the master, which reads these
messages, does not import the worker, its event loop and the protocol modules: those
are imported in the worker process, after the fork (supervisor.py).
"""

from __future__ import annotations

import os
from typing import Any, Final


class Supervision:
    """How a worker talks to its master (absent when a Worker runs on its own).

    ``notify_fd`` is the write end of this worker's pipe to the master: the worker
    writes ``READY`` once it serves, ``BEAT`` every ``beat_interval`` seconds from its
    event loop (so a blocked loop falls silent), and one of the ``RETIRE`` messages
    once it wants to be replaced: it has served ``max_requests`` requests, its memory
    is over ``--max-worker-memory``, or a thread is stuck past ``--request-timeout``.
    ``master_pid`` lets the worker notice an orphaning.

    With ``report_load`` (an adaptive worker count, --workers-max), each beat also says how
    much of the worker's application capacity was in use at that moment: ``BEAT`` none,
    ``BEAT_BUSY`` some, ``BEAT_FULL`` all of it (see :meth:`Worker._beat`). Every message
    is one byte, so the master finds each of them in whatever one read returns.
    """

    READY: Final = b"R"
    BEAT: Final = b"."
    BEAT_BUSY: Final = b"+"
    BEAT_FULL: Final = b"*"
    #: The load each beat reports: 0 idle, 1 busy, 2 full (the master's WorkerProcess.load).
    LOADS: Final = {BEAT: 0, BEAT_BUSY: 1, BEAT_FULL: 2}
    RETIRING: Final = b"Q"
    RETIRING_MEMORY: Final = b"M"
    RETIRING_STUCK: Final = b"S"
    #: Each retirement message: (why, for the log; the restart cause, for the metrics).
    RETIRE: Final = {
        RETIRING: ("served its --max-requests", "max_requests"),
        RETIRING_MEMORY: ("over --max-worker-memory", "memory"),
        RETIRING_STUCK: ("a thread stuck past --request-timeout", "stuck"),
    }

    def __init__(
        self,
        notify_fd: int,
        master_pid: int,
        beat_interval: float,
        max_requests: int,
        metrics_region: Any = None,
        slot: int = -1,
        report_load: bool = False,
    ) -> None:
        self.notify_fd = notify_fd
        self.master_pid = master_pid
        self.beat_interval = beat_interval
        self.max_requests = max_requests
        #: The master's shared metrics region and this worker's slot in it (metrics.py).
        self.metrics_region = metrics_region
        self.slot = slot
        #: Each beat says BEAT, BEAT_BUSY or BEAT_FULL (the master adapts the worker count).
        self.report_load = report_load

    def send(self, message: bytes) -> None:
        try:
            os.write(self.notify_fd, message)
        except (BlockingIOError, InterruptedError):
            pass  # a full pipe already says "alive"
        except OSError:
            pass  # the master is gone; the orphan check stops this worker
