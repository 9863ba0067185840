"""The master process: forks workers, keeps them alive, reloads and stops them.

Rules:

1. The master binds the listening sockets and forks workers that inherit them. It never
   accepts, reads or writes a client connection.
2. Signal handlers only record the signal (and wake the loop through the wakeup pipe);
   the loop dispatches ``handle_<name>``.
3. Each worker has a pipe to the master. It writes ``R`` once it serves, ``.`` every
   beat from its event loop, ``Q`` when it has served ``--max-requests`` requests. A
   ready worker silent for ``--timeout`` gets SIGABRT (faulthandler logs its traceback),
   then SIGKILL after ``KILL_GRACE``, and is replaced.
4. Every exit is reaped and logged with its reason. An unexpected exit is replaced at
   once; exits that repeat within ``CRASH_WINDOW`` back off (a crash loop, reported).
5. At boot, a worker (or the preload zygote) that cannot import the application stops
   the master with ``ExitCode.APP_LOAD``; workers that keep dying before they serve
   stop it with ``ExitCode.WORKER_BOOT``. During a reload the same failure aborts the
   reload and the running workers keep serving.
6. A reload (SIGHUP, ``--reload``) starts a new *generation*: all its workers must be
   serving before any worker of the old generation is told to stop (SIGTERM: it
   finishes what it has and closes its connections cleanly). With ``--preload`` the
   application is imported in a *zygote*, a fork of the master that never imported
   it, so a new zygote imports the new code; workers forked from a zygote are re-parented
   to the master (it is their child subreaper), which reaps them like the others. Every
   worker a zygote reports is adopted, even after the zygote exited (its replies are
   read to the end first); one of a superseded generation is stopped at once, and a
   zygote of a superseded generation is never restarted (zygote.py holds the zygote
   and the master's record of it, the Zygotes).
7. ``--max-requests``, ``--max-worker-memory``, ``--request-timeout``: a worker that
   asks to be retired (``Q``, ``M``, ``S``) keeps serving until a replacement serves,
   then it is stopped gracefully.
8. SIGTERM / SIGINT: graceful stop within ``--graceful-timeout`` (then SIGKILL); a
   repeated SIGTERM changes nothing, a SIGINT during a graceful stop (Ctrl-C twice) or a
   SIGQUIT stops at once: the workers get SIGQUIT, cut their connections and exit (SIGKILL
   only for one whose loop is blocked). With ``--shutdown-delay``, a SIGTERM first sends
   the workers SIGUSR2 (their health path answers 503; they serve on as before) and
   the graceful stop starts when the delay is over. SIGTTIN / SIGTTOU: one worker
   more / fewer (with an adaptive range: the whole range moves by one, rule 9).
   SIGUSR1: reopen logs (master, zygotes, workers).
9. Adaptive worker count (--workers-max): every worker's beat says how much of its
   capacity is in use (worker.Supervision). Once a second, in a steady state only (every
   worker of the serving generation serves, none boots, retires or is in a reload), the
   master adds one worker (up to the maximum) when every serving worker was full at each
   check for --workers-scale-up-after seconds, and retires one (down to the minimum) when
   at least one worker was idle at each check for --workers-idle-timeout: the one idle
   longest, stopped gracefully like any other, so its requests finish. A decision changes the target count
   (``num_workers``); spawning and stopping then follow the ordinary rules (back-off,
   zygotes, replacement-first). Each decision is logged and counted (``scaling``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import random
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, NoReturn

# The master imports only what supervising needs: the worker (its event loop, uvloop,
# the protocol, WSGI and static modules), the loader and the application are imported
# in the worker or zygote process, after the fork (load_app and worker_process below);
# the exporter, the metrics slots, the reloader and ctypes only when their option is on.
# (Without --preload, cli.import_worker_modules imports the serving modules, not the
# application, before the first fork, so that the workers share them.)
# tests/test_master_imports.py holds the master to it.
from . import __version__, hooks
from .config import Config
from .errors import AppLoadError, ExitCode
from .log import error_log, errors_stream, reopen_error_log
from .processes import Processes
from .processes import close_quietly as _close_quietly
from .processes import describe_exit as _describe_exit
from .processes import drain as _drain
from .processes import flush_and_exit as _flush_and_exit
from .processes import fork as _fork  # noqa: F401 (tests/test_supervisor.py imports it from here)
from .sockets import describe
from .supervision import Supervision
from .zygote import Zygotes

if TYPE_CHECKING:
    from .exporter import Exporter
    from .metrics import Slots
    from .reloader import Reloader
    from .wsgi import WSGIApp

#: Seconds between SIGABRT (traceback) and SIGKILL for a worker the watchdog stops.
KILL_GRACE: Final = 2.0
#: Unexpected worker exits within this many seconds count towards a crash loop ...
CRASH_WINDOW: Final = 10.0
#: ... and this many of them trigger a back-off before the next spawn.
CRASH_LIMIT: Final = 5
MAX_BACKOFF: Final = 30.0
#: Workers that never become ready this many times in a row at boot stop the master.
BOOT_ATTEMPTS: Final = 5
#: How often the master's loop wakes up when nothing happens.
POLL_INTERVAL: Final = 0.2
#: Adaptive worker count: seconds between two scaling checks (rule 9) ...
SCALE_TICK: Final = 1.0
#: ... and a ready worker silent for this many beat intervals has its event loop blocked
#: (an inline application running a long request): it counts as full.
SILENT_BEATS: Final = 1.5

_HANDLED_SIGNALS: Final = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)
_PR_SET_CHILD_SUBREAPER: Final = 36


class WorkerProcess:
    """The master's record of one worker."""

    def __init__(
        self,
        pid: int,
        generation: int,
        fd: int,
        now: float,
        slot: int = -1,
        info: hooks.WorkerInfo | None = None,
    ) -> None:
        self.pid = pid
        #: What the hooks are given as ``worker`` (hooks.py).
        self.info = info or hooks.WorkerInfo(0, generation, None)
        self.info.pid = pid
        self.generation = generation
        self.fd = fd
        #: Its slot in the metrics region (metrics.py), -1 without metrics.
        self.slot = slot
        #: Why the master stopped it (a restart cause in the metrics).
        self.stop_cause = ""
        self.spawned = now
        self.last_beat = now
        self.ready_at: float | None = None
        self.retiring = False
        #: Why it asked to be retired (worker.Supervision.RETIRE).
        self.retire_message = b""
        self.stop_sent: float | None = None
        self.abort_sent: float | None = None
        #: Adaptive worker count: the load its last beat reported (Supervision.LOADS) and
        #: since when it has reported nothing but idle beats (None: not idle).
        self.load = 0
        self.idle_since: float | None = None

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def stopping(self) -> bool:
        return self.stop_sent is not None

    @property
    def state(self) -> str:
        if self.stopping:
            return "stopping"
        if not self.ready:
            return "booting"
        return "retiring" if self.retiring else "serving"


class Master:
    """Supervises the workers (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        unlink_at_exit: Sequence[str] = (),
        metrics_socket: socket.socket | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float = POLL_INTERVAL,
        processes: Processes | None = None,
    ) -> None:
        """``unlink_at_exit``: the unix socket files this process created (bound), which
        it removes when it exits; sockets it adopted (systemd, ``fd://``) belong to
        whoever created them and are left in place. ``metrics_socket``: the bound
        ``--metrics-bind`` listener.

        For tests without processes (tests/test_master_unit.py): ``clock``, every time
        the master reads (seconds, monotonic); ``poll_interval``, the longest wait of
        one turn of its loop for a pipe, a channel or a signal; ``processes``, how it
        forks, signals and reaps (processes.Processes, the real functions by default)."""
        self.config = config
        self.clock = clock
        self.poll_interval = poll_interval
        self.processes = processes if processes is not None else Processes()
        #: gunicorn's names, for the hooks (``server.cfg``, ``server.log``).
        self.cfg = config
        self.log = error_log
        self.sockets = sockets
        self.num_workers = config.workers or os.cpu_count() or 1
        #: Adaptive worker count (rule 9): the range num_workers moves in, or (0, 0).
        self.workers_min, self.workers_max = config.workers_range if config.adaptive else (0, 0)
        if config.adaptive:
            # The documented start: --workers, raised to the minimum (config.py refuses a
            # --workers above the maximum; "auto" is clamped to it).
            self.num_workers = min(max(self.num_workers, self.workers_min), self.workers_max)
        #: Scaling decisions by direction ("up", "down"), for the metrics.
        self.scaling: dict[str, int] = {"up": 0, "down": 0}
        self._next_scale = 0.0
        #: Since when every serving worker has been full, and which workers those were.
        self._full_since: float | None = None
        self._full_pids: frozenset[int] = frozenset()
        #: "At --workers-max" was logged for the current stretch of full workers.
        self._at_max_noted = False
        #: Since when at least one serving worker has been idle at every check (and which
        #: workers served), and whether "at --workers-min" was logged for that stretch.
        self._spare_since: float | None = None
        self._spare_pids: frozenset[int] = frozenset()
        self._at_min_noted = False
        self.pid = os.getpid()
        self.workers: dict[int, WorkerProcess] = {}
        #: The --preload zygotes (zygote.py) and the workers they were asked for.
        self.zygotes = Zygotes(self, worker_process)
        self.generation = 1  # the generation that serves
        self.pending: int | None = None  # a generation being started by a reload
        self.failed_generations: set[int] = set()
        self.stopping: str | None = None  # "graceful" or "quick" once asked to stop
        self.stop_reason = ""
        self.stop_deadline = 0.0
        #: --shutdown-delay: when the graceful stop a SIGTERM asked for begins.
        self.stop_at: float | None = None
        self.exit_code = ExitCode.OK
        self.ever_ready = False
        self.boot_failures = 0
        self.crashes: deque[float] = deque()
        self.backoff = 0.0
        #: Unexpected exits since the crash loop began (0: no loop).
        self.loop_exits = 0
        self.next_spawn = 0.0
        self._signals: deque[int] = deque()
        self._spawn_counter = 0
        self._unix_paths = list(unlink_at_exit)
        self._wake_r, self._wake_w = os.pipe()
        self.reloader: Reloader | None = None
        if config.reload:
            from .reloader import Reloader

            self.reloader = Reloader(config)
        self._next_reload_check = 0.0
        self.started = clock()
        #: Workers replaced, by cause, and reloads by outcome (the metrics).
        self.restarts: dict[str, int] = {}
        self.reloads: dict[str, int] = {}
        self.slots: Slots | None = None
        self.exporter: Exporter | None = None
        if config.metrics_bind or config.statsd_host:
            from .exporter import Exporter
            from .metrics import Slots

            self.slots = Slots()
            self.exporter = Exporter(
                self, self.slots, metrics_socket, config.statsd_host, config.statsd_prefix
            )

    @property
    def worker_views(self) -> list[WorkerProcess]:
        return list(self.workers.values())

    @property
    def listener_protocols(self) -> list[str]:
        return [self.config.protocol_for(i) for i in range(len(self.sockets))]

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        hooks.run(self.config.on_starting, "on_starting", self)
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for signum in _HANDLED_SIGNALS:
            signal.signal(signum, self._record_signal)
        if self.config.preload:
            self._become_subreaper()
        self._write_pidfile()
        error_log.info("Starting rapidwsgi %s (master %d)", __version__, self.pid)
        for index, sock in enumerate(self.sockets):
            error_log.info("Listening at: %s (%d)", describe(sock, self.config.tls_for(index)), self.pid)
        if self.exporter is not None and self.exporter.listener is not None:
            error_log.info("Metrics at: %s (%d)", describe(self.exporter.listener), self.pid)
        error_log.info(
            "Using %d worker%s%s%s",
            self.num_workers,
            "s" if self.num_workers != 1 else "",
            ", preloaded" if self.config.preload else "",
            f", adaptive {self.workers_min}..{self.workers_max}" if self.workers_max else "",
        )
        if self.reloader is not None:
            error_log.info("Reloading on changes (%s)", self.reloader.backend)
        if self.config.reuse_port and not _kernel_migrates_queued_connections():
            error_log.warning(
                "--reuse-port: connections queued on the socket of a worker that stops (reload, "
                "--max-requests, a crash) are reset by the kernel; set the sysctl %s=1 "
                "(Linux >= 5.14) to have them handed to another worker",
                TCP_MIGRATE_REQ.replace("/proc/sys/", "").replace("/", "."),
            )
        hooks.run(self.config.when_ready, "when_ready", self)
        if self.config.preload:
            self.zygotes.start(self.generation)
        try:
            while not self.done:
                self._turn()
        finally:
            self._cleanup()
            hooks.run(self.config.on_exit, "on_exit", self)
        error_log.info("Master %d exiting (%d)", self.pid, int(self.exit_code))
        return int(self.exit_code)

    @property
    def done(self) -> bool:
        """Stopping, and no child is left (no worker, no zygote, no zygote's channel)."""
        return bool(self.stopping) and not self.workers and self.zygotes.idle

    def _turn(self) -> None:
        """One turn of the loop: wait up to ``poll_interval`` for news, then act on it."""
        self._wait()
        self._dispatch_signals()
        self._reap()
        self._check_reloader()
        self._watchdog()
        if self.exporter is not None:
            self.exporter.tick(self.clock())
        if self.stop_at is not None and not self.stopping and self.clock() >= self.stop_at:
            self.stop(graceful=True, reason="SIGTERM, after --shutdown-delay")
        if not self.stopping:
            self._manage()
        elif self.clock() > self.stop_deadline:
            self._kill_all()

    def _record_signal(self, signum: int, frame: object) -> None:
        # Only record: the loop acts (rule 2).
        self._signals.append(signum)

    def _wait(self) -> None:
        fds = [self._wake_r] + [w.fd for w in self.workers.values()]
        zygotes = self.zygotes.all()
        fds += [z.sock.fileno() for z in zygotes]
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        exporter = self.exporter
        if exporter is not None:
            for fd, mask in exporter.poll_fds():
                poller.register(fd, mask)
        try:
            events = poller.poll(self.poll_interval * 1000)
        except InterruptedError:
            return
        now = self.clock()
        by_fd = {w.fd: w for w in self.workers.values()}
        by_sock = {z.sock.fileno(): z for z in zygotes}
        for fd, _ in events:
            if fd == self._wake_r:
                _drain(fd)
            elif fd in by_fd:
                self._read_worker(by_fd[fd], now)
            elif fd in by_sock:
                self.zygotes.read(by_sock[fd])
            elif exporter is not None:
                exporter.handle(fd)

    def _dispatch_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            name = signal.Signals(signum).name.lower()
            handler: Callable[[], None] | None = getattr(self, f"handle_{name[3:]}", None)
            if handler is not None:
                handler()

    # ------------------------------------------------------------------ signal handlers

    def handle_chld(self) -> None:
        pass  # reaping happens in every turn of the loop

    def handle_hup(self) -> None:
        if self.stop_at is not None:
            error_log.info("Hang-up during --shutdown-delay: not reloading")
            return
        error_log.info("Hang-up: reloading")
        self.reload()

    def handle_term(self) -> None:
        delay = self.config.shutdown_delay
        if delay and self.stopping is None and self.stop_at is None:
            self.announce_stop(delay)
            return
        if self.stop_at is not None and self.stopping is None:
            error_log.info("SIGTERM again during --shutdown-delay: the stop begins when it is over")
            return
        self.stop(graceful=True, reason="SIGTERM")

    def announce_stop(self, delay: float) -> None:
        """--shutdown-delay: the workers' health path says 503 now (SIGUSR2); they serve
        on as before, and the graceful stop begins in ``delay`` seconds."""
        self.stop_at = self.clock() + delay
        error_log.info("SIGTERM: health checks answer 503; stopping in %gs (--shutdown-delay)", delay)
        if self.pending is not None:
            self._abort_generation(self.pending, "shutting down")
        for worker in self.workers.values():
            if not worker.stopping:
                self.processes.kill(worker.pid, signal.SIGUSR2)

    def handle_int(self) -> None:
        # Ctrl-C twice: the second one stops at once (docs/process.md).
        self.stop(graceful=self.stopping is None, reason="SIGINT")

    def handle_quit(self) -> None:
        self.stop(graceful=False, reason="SIGQUIT")

    def handle_ttin(self) -> None:
        if self.workers_max:
            # Adaptive: the whole range moves up, so that the adaptation keeps the worker.
            self._move_range(+1, "SIGTTIN")
            return
        self.num_workers += 1
        error_log.info("SIGTTIN: %d workers", self.num_workers)

    def handle_ttou(self) -> None:
        if self.workers_max:
            self._move_range(-1, "SIGTTOU")
            return
        if self.num_workers > 1:
            self.num_workers -= 1
        error_log.info("SIGTTOU: %d workers", self.num_workers)

    def _move_range(self, step: int, name: str) -> None:
        """SIGTTIN / SIGTTOU with an adaptive range: one worker more / fewer now, and the
        range moves with it (never below 1 worker); not counted as a scaling decision."""
        low = max(1, self.workers_min + step)
        high = max(low, self.workers_max + step)
        self.workers_min, self.workers_max = low, high
        self.num_workers = min(max(self.num_workers + step, low), high)
        self._full_since = None
        error_log.info(
            "%s: %d worker%s (adaptive %d..%d)",
            name,
            self.num_workers,
            "s" if self.num_workers != 1 else "",
            low,
            high,
        )

    def handle_usr1(self) -> None:
        reopen_error_log()
        for worker in self.workers.values():
            self.processes.kill(worker.pid, signal.SIGUSR1)
        # The zygotes too: the workers they fork later inherit their error log.
        self.zygotes.signal(signal.SIGUSR1)

    # ------------------------------------------------------------------ actions

    def reload(self) -> None:
        """Start a new generation; the old one stops once the new one serves (rule 6)."""
        if self.stopping:
            return
        if self.pending is not None:
            self._abort_generation(self.pending, "superseded by a newer reload")
        self.pending = max(self.generation, self.pending or 0, *self.failed_generations, 0) + 1
        hooks.run(self.config.on_reload, "on_reload", self)
        error_log.info("Starting worker generation %d", self.pending)
        if self.config.preload:
            self.zygotes.start(self.pending)

    def stop(self, graceful: bool, reason: str) -> None:
        if self.stopping == "quick":
            return
        if self.stopping == "graceful":
            if graceful:
                # A repeated SIGTERM (an init system, `timeout`, an impatient script)
                # keeps the graceful stop: only SIGINT or SIGQUIT cut it short.
                error_log.info(
                    "Already shutting down gracefully (%s); %s again: a SIGINT or SIGQUIT stops at once",
                    self.stop_reason,
                    reason,
                )
                return
            reason += " again" if reason == self.stop_reason else f" after {self.stop_reason}"
        else:
            self.stop_reason = reason
        self.stopping = "graceful" if graceful else "quick"
        grace = self.config.graceful_timeout if graceful else KILL_GRACE
        self.stop_deadline = self.clock() + grace + 1.0
        error_log.info("Shutting down (%s)%s", reason, f", up to {grace:g}s for requests" if graceful else "")
        signum = signal.SIGTERM if graceful else signal.SIGQUIT
        now = self.clock()
        for worker in self.workers.values():
            if not worker.stopping or not graceful:
                worker.stop_sent = now
                self.processes.kill(worker.pid, signum)
        self.zygotes.stop_all()
        for sock in self.sockets:
            sock.close()  # the workers hold their own copies until they stop

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            error_log.warning("Worker %d did not stop in time: SIGKILL", worker.pid)
            self.processes.kill(worker.pid, signal.SIGKILL)
        self.zygotes.kill_all()  # and no more waiting for late replies
        self.stop_deadline = self.clock() + 5.0

    def _manage(self) -> None:
        """Spawn, retire and stop workers until the target state holds."""
        now = self.clock()
        if self.pending is not None:
            self._advance_reload(now)
        elif self.workers_max and self.stop_at is None and now >= self._next_scale:
            self._next_scale = now + SCALE_TICK
            self._scale(now)
        if self.config.preload and now >= self.next_spawn and not self.zygotes.of(self.generation):
            # Its zygote failed to import the application again (the code on disk
            # changed under it): retry, backed off like a crash loop.
            self.zygotes.start(self.generation)
        current = [w for w in self.workers.values() if w.generation == self.generation and not w.stopping]
        active = [w for w in current if not w.retiring]
        wanted = self.num_workers - len(active) - self._spawns_in_flight(self.generation)
        if self.pending is None and wanted > 0:
            for _ in range(wanted):
                if not self._spawn(self.generation, now):
                    break
        # Retire workers that asked for it once enough others serve (rule 7).
        ready = [w for w in active if w.ready]
        for worker in current:
            if worker.retiring and len(ready) >= self.num_workers:
                why, cause = Supervision.RETIRE[worker.retire_message]
                self._stop_worker(worker, why, cause)
        # SIGTTOU: stop the oldest extra workers.
        if len(active) > self.num_workers:
            for worker in sorted(active, key=lambda w: w.spawned)[: len(active) - self.num_workers]:
                self._stop_worker(worker, "fewer workers wanted", "scale_down")

    # ------------------------------------------------------------------ adaptive count

    def _scale(self, now: float) -> None:
        """One scaling check (rule 9): at most one decision, which moves ``num_workers``."""
        current = [w for w in self.workers.values() if w.generation == self.generation and not w.stopping]
        serving = [w for w in current if w.ready and not w.retiring]
        if (
            len(serving) != len(current)
            or len(serving) != self.num_workers
            or self._spawns_in_flight(self.generation)
        ):
            # Not steady: a worker boots, retires (its replacement boots) or crashed. The
            # decisions wait for the outcome; a full or idle stretch starts again after it.
            self._full_since = self._spare_since = None
            return
        silent = SILENT_BEATS * self._beat_interval()
        full = [w for w in serving if w.load == 2 or now - w.last_beat > silent]
        pids = frozenset(w.pid for w in serving)
        if len(full) < len(serving):
            self._full_since = None
            self._at_max_noted = False
        elif self._full_since is None or pids != self._full_pids:
            self._full_since, self._full_pids = now, pids
        elif now - self._full_since >= self.config.workers_scale_up_after:
            why = f"{_all_workers(len(serving))} busy for {self.config.workers_scale_up_after:g}s"
            if self.num_workers < self.workers_max:
                error_log.info("Adding worker (%s, %d -> %d)", why, self.num_workers, self.num_workers + 1)
                self.num_workers += 1
                self.scaling["up"] += 1
                self._full_since = None
                return
            if not self._at_max_noted:
                self._at_max_noted = True
                error_log.info("Not adding a worker (%s): at --workers-max %d", why, self.workers_max)
        # Spare capacity: a worker idle at every check. Not "each worker idle for that
        # long": the kernel spreads connections over all workers, so under a light load
        # every worker is busy now and then, and none would ever be retired.
        idle = [w for w in serving if w.idle_since is not None and now - w.last_beat <= silent]
        if not idle:
            self._spare_since = None
            self._at_min_noted = False
            return
        if self._spare_since is None or pids != self._spare_pids:
            self._spare_since, self._spare_pids = now, pids
            return
        timeout = self.config.workers_idle_timeout
        if now - self._spare_since < timeout:
            return
        who = "the only worker" if len(serving) == 1 else "at least one worker"
        why = f"{who} idle for {timeout:g}s"
        if self.num_workers <= self.workers_min:
            if not self._at_min_noted:
                self._at_min_noted = True
                error_log.debug("Not retiring a worker (%s): at --workers-min %d", why, self.workers_min)
            return
        # The one idle longest (the others may have work again soon); of equals, the youngest.
        worker = min(idle, key=lambda w: (w.idle_since, -w.spawned))
        error_log.info(
            "Retiring idle worker %d (%s, %d -> %d)", worker.pid, why, self.num_workers, self.num_workers - 1
        )
        self.num_workers -= 1
        self.scaling["down"] += 1
        self._spare_since = None
        self._stop_worker(worker, "idle", "scale_down")

    def _advance_reload(self, now: float) -> None:
        generation = self.pending
        assert generation is not None
        new = [w for w in self.workers.values() if w.generation == generation and not w.stopping]
        missing = self.num_workers - len(new) - self._spawns_in_flight(generation)
        if missing > 0 or len(new) < self.num_workers:
            for _ in range(max(missing, 0)):
                if not self._spawn(generation, now):
                    break
            return
        if sum(1 for w in new if w.ready) < self.num_workers:
            return
        # Every new worker serves: the old generation stops gracefully (rule 6).
        old_generation = self.generation
        self.generation = generation
        self.pending = None
        error_log.info("Worker generation %d serving; stopping generation %d", generation, old_generation)
        self.reloads["completed"] = self.reloads.get("completed", 0) + 1
        for worker in list(self.workers.values()):
            if worker.generation < generation and not worker.stopping:
                self._stop_worker(worker, "reloaded", "reload")
        self.zygotes.stop_generations(keep=lambda older: older >= generation)

    def _abort_generation(self, generation: int, reason: str) -> None:
        error_log.error(
            "Reload to generation %d aborted: %s; the running workers keep serving", generation, reason
        )
        self.failed_generations.add(generation)
        self.reloads["aborted"] = self.reloads.get("aborted", 0) + 1
        if self.pending == generation:
            self.pending = None
        for worker in list(self.workers.values()):
            if worker.generation == generation and not worker.stopping:
                self._stop_worker(worker, "reload aborted", "reload_aborted")
        self.zygotes.stop_generations(keep=lambda other: other != generation)

    def _spawns_in_flight(self, generation: int) -> int:
        """Workers a zygote was asked for but has not reported yet."""
        return self.zygotes.in_flight(generation)

    def _stop_worker(self, worker: WorkerProcess, why: str, cause: str) -> None:
        """Stop ``worker`` gracefully; ``cause`` is the restart cause it counts as."""
        error_log.info("Stopping worker %d (%s)", worker.pid, why)
        worker.stop_cause = cause
        worker.stop_sent = self.clock()
        self.processes.kill(worker.pid, signal.SIGTERM)

    # ------------------------------------------------------------------ spawning

    def _spawn(self, generation: int, now: float) -> bool:
        """Start one worker of ``generation``; False when it has to wait."""
        if now < self.next_spawn:
            return False
        max_requests = self.config.max_requests
        if max_requests and self.config.max_requests_jitter:
            max_requests += random.randint(0, self.config.max_requests_jitter)
        if self.config.preload:
            zygote = self.zygotes.of(generation)
            if zygote is None or not zygote.ready:
                return False  # the zygote is still importing the application
            # Numbered, so that its reply names the pipe that goes with the worker.
            self._spawn_counter += 1
            request = self._spawn_counter
            info = hooks.WorkerInfo(request, generation, self.config)
            hooks.run(self.config.pre_fork, "pre_fork", self, info)
            slot = self._acquire_slot()
            return self.zygotes.request(zygote, request, max_requests, slot, info)
        self._spawn_counter += 1
        info = hooks.WorkerInfo(self._spawn_counter, generation, self.config)
        hooks.run(self.config.pre_fork, "pre_fork", self, info)
        slot = self._acquire_slot()
        read_fd, write_fd = self.processes.pipe()
        pid = self.processes.fork()
        if pid == 0:  # the worker
            try:
                os.close(read_fd)
                self._forget_in_child()
                supervision = Supervision(
                    write_fd,
                    self.pid,
                    self._beat_interval(),
                    max_requests,
                    self._region(),
                    slot,
                    self.config.adaptive,
                )
                worker_process(self.config, self.sockets, supervision, None, self, info)
            finally:
                os._exit(1)
        os.close(write_fd)
        self._adopt(pid, generation, read_fd, slot, info)
        return True

    def _acquire_slot(self) -> int:
        if self.slots is None:
            return -1
        slot = self.slots.acquire()
        if slot < 0:
            error_log.warning("Every metrics slot is taken: the next worker is not counted")
        return slot

    def _region(self) -> object:
        return self.slots.region if self.slots is not None else None

    def _adopt(
        self, pid: int, generation: int, read_fd: int, slot: int = -1, info: hooks.WorkerInfo | None = None
    ) -> None:
        worker = WorkerProcess(pid, generation, read_fd, self.clock(), slot, info)
        self.workers[pid] = worker
        error_log.info("Booting worker %d (generation %d)", pid, generation)
        code = self.zygotes.early_exit(pid)
        if code is not None:
            # Reaped before its zygote's report was read: it is gone already.
            self._worker_exited(self.workers.pop(pid), code)
        elif self.stopping:
            # Forked just before the stop (a zygote's late reply): stop it like the rest.
            worker.stop_sent = worker.spawned
            self.processes.kill(pid, signal.SIGTERM if self.stopping == "graceful" else signal.SIGQUIT)
        elif generation not in (self.generation, self.pending):
            # Its zygote's generation was superseded or aborted while the fork was
            # under way: never let it serve outdated code unsupervised.
            self._stop_worker(worker, f"generation {generation} superseded", "reload_aborted")

    def _beat_interval(self) -> float:
        timeout = self.config.timeout
        return 1.0 if not timeout else max(0.05, min(1.0, timeout / 4))

    def _forget_in_child(self) -> None:
        """In a freshly forked child: drop what belongs to the master (its signal
        handling is already reset by processes.fork)."""
        for fd in (self._wake_r, self._wake_w):
            _close_quietly(fd)
        for worker in self.workers.values():
            _close_quietly(worker.fd)
        self.zygotes.close_in_child()
        if self.exporter is not None:
            self.exporter.forget()

    # ------------------------------------------------------------------ zygotes

    def _become_subreaper(self) -> None:
        import ctypes  # --preload only

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        except (OSError, AttributeError) as exc:
            error_log.error("--preload needs Linux's child subreaper (%s)", exc)
            raise SystemExit(ExitCode.USAGE) from None

    # ------------------------------------------------------------------ workers' news

    def _read_worker(self, worker: WorkerProcess, now: float) -> None:
        try:
            data = os.read(worker.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return  # closed: the worker is exiting; _reap reports it
        worker.last_beat = now
        if Supervision.READY in data and worker.ready_at is None:
            worker.ready_at = now
            self.ever_ready = True
            self.boot_failures = 0
            error_log.info("Worker %d serving", worker.pid)
            if self.stop_at is not None:
                self.processes.kill(worker.pid, signal.SIGUSR2)  # a replacement started during the delay
        if self.workers_max:
            self._note_load(worker, data, now)
        if not worker.retiring:
            for message in Supervision.RETIRE:
                if message in data:
                    worker.retiring = True
                    worker.retire_message = message
                    break

    def _note_load(self, worker: WorkerProcess, data: bytes, now: float) -> None:
        """The load of the last beat in ``data`` (--workers-max), and the idle stretch."""
        at, load = max((data.rfind(beat), value) for beat, value in Supervision.LOADS.items())
        if at < 0:
            return
        worker.load = load
        if load:
            worker.idle_since = None
        elif worker.idle_since is None:
            worker.idle_since = now

    def _reap(self) -> None:
        while True:
            try:
                pid, status = self.processes.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid in self.workers:
                self._worker_exited(self.workers.pop(pid), code)
            else:
                # A zygote, or a worker whose zygote's report is still unread (zygote.py).
                self.zygotes.reaped(pid, code)

    def _worker_exited(self, worker: WorkerProcess, code: int) -> None:
        os.close(worker.fd)
        worker.info.exit_code = code
        hooks.run(self.config.child_exit, "child_exit", self, worker.info)
        if self.slots is not None:
            # Reaped: nothing writes its slot any more (metrics.py rule 3).
            self.slots.release(worker.slot)
        reason = _describe_exit(code)
        if worker.stopping or self.stopping:
            error_log.info("Worker %d exited (%s)", worker.pid, reason)
            if not self.stopping and worker.stop_cause:
                self._count_restart(worker.stop_cause)
            return
        if worker.abort_sent is not None:
            error_log.error("Worker %d killed by the watchdog (%s)", worker.pid, reason)
            self._count_restart("watchdog")
        else:
            error_log.error("Worker %d died unexpectedly (%s)", worker.pid, reason)
            self._count_restart("crash")
        if not worker.ready and worker.generation == self.pending:
            # Whatever killed it (an import error, os._exit() or a crash during the
            # import, the watchdog), the new code does not serve: keep the old workers
            # rather than crash-loop on it.
            if code == ExitCode.APP_LOAD:
                why = f"the application failed to load in worker {worker.pid}"
            else:
                why = f"worker {worker.pid} exited before it served ({reason})"
            self._abort_generation(worker.generation, why)
            return
        if not worker.ready and code == ExitCode.APP_LOAD:
            self._load_failed(worker.generation, f"worker {worker.pid}", code)
            return
        if not worker.ready:
            self.boot_failures += 1
            if not self.ever_ready and self.boot_failures >= BOOT_ATTEMPTS:
                error_log.error("Workers keep failing to boot; giving up")
                self.exit_code = ExitCode.WORKER_BOOT
                self.stop(graceful=False, reason="boot failure")
                return
        self._note_crash()

    def _count_restart(self, cause: str) -> None:
        self.restarts[cause] = self.restarts.get(cause, 0) + 1

    def _load_failed(self, generation: int, who: str, code: int) -> None:
        if generation == self.pending:
            self._abort_generation(generation, f"the application failed to load in {who}")
        elif not self.ever_ready:
            error_log.error("The application failed to load in %s (%s); exiting", who, _describe_exit(code))
            self.exit_code = ExitCode.APP_LOAD
            self.stop(graceful=False, reason="application load failure")
        else:
            # The serving generation cannot start workers any more (the code on disk
            # changed under it): keep trying, slowly.
            self._note_crash()

    def _note_crash(self) -> None:
        """Count an unexpected exit; from CRASH_LIMIT exits within CRASH_WINDOW on, delay
        the next spawn 1 s, 2 s, 4 s ... MAX_BACKOFF.

        Once backing off, the window is measured from the delayed spawn, not from the
        earlier exits: otherwise the waits themselves would empty the window (after the
        8 s one, the five exits are more than 10 s apart) and a worker that crashes at
        every start would be respawned at once again instead of ever slower. The loop
        ends (the back-off resets) when the workers ran for CRASH_WINDOW after a spawn."""
        now = self.clock()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
            self.crashes.popleft()
        if self.backoff and now - self.next_spawn <= CRASH_WINDOW:
            self.loop_exits += 1
        elif len(self.crashes) >= CRASH_LIMIT:
            self.loop_exits = len(self.crashes)
        else:
            self.backoff = 0.0
            self.loop_exits = 0
            return
        self.backoff = min(MAX_BACKOFF, self.backoff * 2 or 1.0)
        self.next_spawn = now + self.backoff
        error_log.error(
            "Crash loop: %d unexpected worker exits (the first %d within %gs); next spawn in %gs",
            self.loop_exits,
            CRASH_LIMIT,
            CRASH_WINDOW,
            self.backoff,
        )

    # ------------------------------------------------------------------ watchdog

    def _watchdog(self) -> None:
        now = self.clock()
        timeout = self.config.timeout
        for worker in list(self.workers.values()):
            if worker.stopping:
                limit = self.config.graceful_timeout + 5.0
                if self.stopping is None and now - (worker.stop_sent or now) > limit:
                    error_log.warning("Worker %d did not stop in time: SIGKILL", worker.pid)
                    self.processes.kill(worker.pid, signal.SIGKILL)
                    worker.stop_sent = now  # once per limit
                continue
            if not timeout:
                continue
            if worker.abort_sent is not None:
                if now - worker.abort_sent > KILL_GRACE:
                    self.processes.kill(worker.pid, signal.SIGKILL)
                continue
            since = now - (worker.last_beat if worker.ready else worker.spawned)
            if since > timeout:
                error_log.critical(
                    "Worker %d silent for %.1fs (timeout %gs): SIGABRT for its traceback, then SIGKILL",
                    worker.pid,
                    since,
                    timeout,
                )
                worker.abort_sent = now
                self.processes.kill(worker.pid, signal.SIGABRT)

    def _check_reloader(self) -> None:
        if self.reloader is None or self.stopping:
            return
        now = self.clock()
        if now < self._next_reload_check:
            return
        self._next_reload_check = now + 1.0
        changed = self.reloader.changes()
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            error_log.info("Changed: %s; reloading", shown)
            self.reload()

    # ------------------------------------------------------------------ files

    def _write_pidfile(self) -> None:
        if self.config.pid:
            with open(self.config.pid, "w") as fp:
                fp.write(f"{self.pid}\n")

    def _cleanup(self) -> None:
        if self.config.pid:
            try:
                with open(self.config.pid) as fp:
                    if fp.read().strip() == str(self.pid):
                        os.unlink(self.config.pid)
            except OSError:
                pass
        for sock in self.sockets:
            sock.close()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self.exporter is not None:
            self.exporter.close()
        if self.reloader is not None:
            self.reloader.close()


# ---------------------------------------------------------------------- children


def load_app(spec: str) -> WSGIApp:
    """:func:`rapidwsgi.loader.load_app`, imported on first use, in a worker (after the
    fork): with ``--preload`` the master never imports the loader (it imports the WSGI
    modules); without it cli.import_worker_modules has imported it already."""
    from .loader import load_app as load

    return load(spec)


def worker_process(
    config: Config,
    sockets: list[socket.socket],
    supervision: Supervision,
    app: WSGIApp | None,
    server: object = None,
    info: hooks.WorkerInfo | None = None,
) -> NoReturn:
    """The body of a worker process (after fork): load the app if needed, serve, exit.
    ``server`` and ``info``: what the hooks get as ``server`` and ``worker``."""
    # First, before anything allocates: what this process inherited from its parent (the
    # master, or the zygote with the application) stays shared copy-on-write. Without
    # it, the next collection (Worker.run's gc.collect(), then any later one) writes the
    # GC header of every inherited object, copying each page they live on.
    gc.freeze()
    faulthandler.enable(all_threads=True)  # SIGABRT from the watchdog prints tracebacks
    random.seed()
    # Before the application. A worker forked by the master has these already (without
    # --preload, cli.import_worker_modules), one forked by a zygote too (zygote_process);
    # a Master driven without the CLI imports them here, after the fork.
    from .worker import Worker, import_event_loop

    import_event_loop(config.loop)
    if info is None:
        info = hooks.WorkerInfo(0, 0, config)
    info.started()
    hooks.run(config.post_fork, "post_fork", server, info)
    if app is None:
        try:
            app = load_app(config.app or "")
        except AppLoadError as exc:
            error_log.error("%s%s", exc, f"\n{exc.detail.rstrip()}" if exc.detail else "")
            _flush_and_exit(ExitCode.APP_LOAD)
    info.app = app
    hooks.run(config.post_worker_init, "post_worker_init", info)
    try:
        status = Worker(config, app, sockets, errors_stream, supervision, info).run()
    except BaseException:
        error_log.exception("Worker crashed")
        _flush_and_exit(1)
    hooks.run(config.worker_exit, "worker_exit", server, info)
    _flush_and_exit(status)


# ---------------------------------------------------------------------- helpers


def _all_workers(count: int) -> str:
    """The workers of a scaling message: "all 3 workers", "the only worker"."""
    return "the only worker" if count == 1 else f"all {count} workers"


#: Linux >= 5.14 moves the queued connections of a closed SO_REUSEPORT listener to
#: another listener of the group when this (per network namespace) sysctl is 1.
TCP_MIGRATE_REQ: Final = "/proc/sys/net/ipv4/tcp_migrate_req"


def _kernel_migrates_queued_connections() -> bool:
    try:
        with open(TCP_MIGRATE_REQ) as f:
            return f.read().strip() == "1"
    except OSError:
        return False
