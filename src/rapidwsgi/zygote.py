"""The ``--preload`` zygote: the application imported once, workers forked from it.

Rules (supervisor.py rule 6 is the master's side of them):

1. A zygote is a fork of the master, which never imports the application: the zygote
   imports it, says ``Ready``, then forks a worker for each ``Spawn`` the master sends
   over their channel (a SOCK_SEQPACKET socket pair: one message per packet), until it
   reads ``Exit`` or the end of the channel. A reload starts a new zygote, which imports
   the new code.
2. Each worker is forked through a short-lived intermediate process, so that it is
   orphaned at once and re-parented to the master (Linux's child subreaper), which reaps
   it like any other worker. The intermediate reports the worker's PID (``Spawned``,
   with the number of the ``Spawn`` it answers) on the channel before it exits.
3. The master adopts every worker a zygote reports, even after the zygote exited: a
   reaped zygote's channel is read to its end (the zygote, and every intermediate that
   outlived it, closed their ends) before it is forgotten. A worker reaped before its
   report was read is remembered (``early_exits``) and recorded as exited when the report
   comes. A worker of a superseded generation is stopped at once (the master's
   ``_adopt``).
4. A zygote told to exit (superseded, its reload aborted, the master stopping) is never
   restarted; one of a current generation that dies after its import is restarted, one
   that dies before is an application load failure (the master's ``_load_failed``).
5. SIGUSR1 reopens the zygote's error log, so that the workers forked after a log
   rotation write to the new file.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import gc
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

from . import hooks
from .errors import AppLoadError, ExitCode
from .log import error_log, reopen_error_log
from .processes import Processes, close_quietly, describe_exit, drain, flush_and_exit, fork, pipe

if TYPE_CHECKING:
    from .config import Config
    from .metrics import Slots
    from .supervision import Supervision
    from .wsgi import WSGIApp

#: The largest message either side sends ("spawn N MAX_REQUESTS SLOT" with 64-bit numbers
#: is under 70 bytes).
MAX_MESSAGE: Final = 256


# ---------------------------------------------------------------------- messages


@dataclasses.dataclass(frozen=True)
class Ready:
    """Zygote -> master: the application is imported; spawns are answered from now on."""

    def encode(self) -> bytes:
        return b"ok"


@dataclasses.dataclass(frozen=True)
class Exit:
    """Master -> zygote: exit (the workers already forked are not affected)."""

    def encode(self) -> bytes:
        return b"exit"


@dataclasses.dataclass(frozen=True)
class Spawn:
    """Master -> zygote: fork worker number ``request`` (sent with the write end of its
    pipe to the master as SCM_RIGHTS), retiring after ``max_requests`` (0: never),
    counting into metrics slot ``slot`` (-1: none)."""

    request: int
    max_requests: int
    slot: int

    def encode(self) -> bytes:
        return b"spawn %d %d %d" % (self.request, self.max_requests, self.slot)


@dataclasses.dataclass(frozen=True)
class Spawned:
    """Intermediate -> master: the worker of spawn ``request`` is process ``pid``."""

    request: int
    pid: int

    def encode(self) -> bytes:
        return b"pid %d %d" % (self.request, self.pid)


Message = Ready | Exit | Spawn | Spawned


def decode(data: bytes) -> Message | None:
    """The message ``data`` holds (what ``encode`` of one of the four gave), or None for
    anything else: an empty read (the end of the channel) is not a message."""
    fields = data.split()
    if not fields:
        return None
    kind, numbers = fields[0], fields[1:]
    if not all(n.isdigit() or (n[:1] == b"-" and n[1:].isdigit()) for n in numbers):
        return None
    values = [int(n) for n in numbers]
    if kind == b"ok" and not values:
        return Ready()
    if kind == b"exit" and not values:
        return Exit()
    if kind == b"spawn" and len(values) == 3:
        return Spawn(values[0], values[1], values[2])
    if kind == b"pid" and len(values) == 2:
        return Spawned(values[0], values[1])
    return None


# ---------------------------------------------------------------------- the master's side


class Zygote:
    """The master's record of one zygote."""

    def __init__(self, pid: int, generation: int, sock: socket.socket) -> None:
        self.pid = pid
        self.generation = generation
        self.sock = sock
        self.ready = False
        #: Told to exit (superseded, reload aborted, the master stopping): never restarted.
        self.stopping = False
        #: Spawn requests it has not answered yet: request number -> the read end of
        #: the new worker's pipe (the worker holds the write end).
        self.spawns: dict[int, int] = {}
        #: The metrics slot reserved for each of those spawns.
        self.spawn_slots: dict[int, int] = {}
        #: ... and the hooks' view of it (hooks.WorkerInfo).
        self.spawn_infos: dict[int, hooks.WorkerInfo] = {}


#: The body of a worker process (supervisor.worker_process): config, sockets,
#: supervision, the preloaded application, the hooks' server, the hooks' worker.
WorkerBody = Callable[
    ["Config", list[socket.socket], "Supervision", "WSGIApp | None", object, "hooks.WorkerInfo | None"],
    NoReturn,
]


class Owner(Protocol):
    """What :class:`Zygotes` needs of the master (supervisor.Master)."""

    config: Config
    sockets: list[socket.socket]
    pid: int
    generation: int
    pending: int | None
    stopping: str | None
    slots: Slots | None
    processes: Processes

    def _beat_interval(self) -> float: ...

    def _region(self) -> object: ...

    def _forget_in_child(self) -> None: ...

    def _adopt(
        self, pid: int, generation: int, read_fd: int, slot: int = -1, info: hooks.WorkerInfo | None = None
    ) -> None: ...

    def _load_failed(self, generation: int, who: str, code: int) -> None: ...


class Zygotes:
    """The master's zygotes: the live ones (``live``, by PID) and the reaped ones whose
    channel is still read for late reports (``draining``); rules 3 and 4."""

    def __init__(self, owner: Owner, worker_body: WorkerBody) -> None:
        self.owner = owner
        self.worker_body = worker_body
        self.live: dict[int, Zygote] = {}
        #: Zygotes reaped while their socket may still hold ``Spawned`` replies (sent by
        #: the zygote, or by an intermediate process that outlived it): read to the end,
        #: so that every worker they forked is adopted.
        self.draining: list[Zygote] = []
        #: Unknown children reaped while spawns were in flight: a worker that exited
        #: before its zygote's report was read (PID -> exit code).
        self.early_exits: dict[int, int] = {}

    @property
    def idle(self) -> bool:
        """No zygote lives and none is read any more."""
        return not self.live and not self.draining

    def all(self) -> list[Zygote]:
        """Every zygote whose channel is open: the live ones, then the draining ones."""
        return [*self.live.values(), *self.draining]

    def of(self, generation: int) -> Zygote | None:
        """The zygote that forks the workers of ``generation`` (not one told to exit)."""
        return next((z for z in self.live.values() if z.generation == generation and not z.stopping), None)

    def in_flight(self, generation: int) -> int:
        """Workers of ``generation`` a zygote was asked for but has not reported yet."""
        return sum(len(z.spawns) for z in self.all() if z.generation == generation)

    def in_flight_anywhere(self) -> bool:
        return any(z.spawns for z in self.all())

    # -------------------------------------------------------------- starting, stopping

    def start(self, generation: int) -> None:
        """Fork a zygote for ``generation``; it says ``Ready`` once it imported the app."""
        owner = self.owner
        master_end, zygote_end = owner.processes.seqpacket_pair()
        pid = owner.processes.fork()
        if pid == 0:
            try:
                master_end.close()
                owner._forget_in_child()
                zygote_process(
                    owner.config,
                    owner.sockets,
                    zygote_end,
                    owner.pid,
                    owner._beat_interval(),
                    self.worker_body,
                    owner._region(),
                    owner,
                    generation,
                )
            finally:
                os._exit(1)
        zygote_end.close()
        self.live[pid] = Zygote(pid, generation, master_end)
        error_log.info("Preloading the application in zygote %d (generation %d)", pid, generation)

    def stop(self, zygote: Zygote) -> None:
        """Tell ``zygote`` to exit (SIGTERM if its channel is broken); never restarted."""
        zygote.stopping = True
        try:
            zygote.sock.send(Exit().encode())
        except OSError:
            self.owner.processes.kill(zygote.pid, signal.SIGTERM)

    def stop_all(self) -> None:
        """Stop every live zygote not told to yet (the master stopping)."""
        for zygote in list(self.live.values()):
            if not zygote.stopping:
                self.stop(zygote)

    def stop_generations(self, keep: Callable[[int], bool]) -> None:
        """Stop every live zygote whose generation ``keep`` refuses (a reload done or
        aborted; one already told to exit is told again, which changes nothing)."""
        for zygote in list(self.live.values()):
            if not keep(zygote.generation):
                self.stop(zygote)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every live zygote."""
        for zygote in self.live.values():
            self.owner.processes.kill(zygote.pid, signum)

    def kill_all(self) -> None:
        """The end of a stop that took too long: SIGKILL the live zygotes and stop
        waiting for the late replies of the reaped ones."""
        self.signal(signal.SIGKILL)
        for zygote in list(self.draining):
            self.forget(zygote)

    def close_in_child(self) -> None:
        """In a freshly forked child: close every channel and unanswered pipe."""
        for zygote in self.all():
            zygote.sock.close()
            for fd in zygote.spawns.values():
                close_quietly(fd)

    # -------------------------------------------------------------- spawning

    def request(
        self, zygote: Zygote, request: int, max_requests: int, slot: int, info: hooks.WorkerInfo
    ) -> bool:
        """Ask ``zygote`` for worker number ``request``; False (the slot dropped) when
        its channel is broken."""
        owner = self.owner
        read_fd, write_fd = owner.processes.pipe()
        try:
            socket.send_fds(zygote.sock, [Spawn(request, max_requests, slot).encode()], [write_fd])
        except OSError as exc:
            error_log.error("Zygote %d unreachable: %s", zygote.pid, exc)
            os.close(read_fd)
            if owner.slots is not None:
                owner.slots.drop(slot)
            return False
        finally:
            os.close(write_fd)
        zygote.spawns[request] = read_fd
        zygote.spawn_slots[request] = slot
        zygote.spawn_infos[request] = info
        return True

    def early_exit(self, pid: int) -> int | None:
        """The exit code of ``pid`` if it was reaped before its report was read."""
        return self.early_exits.pop(pid, None)

    # -------------------------------------------------------------- news

    def read(self, zygote: Zygote) -> bool:
        """Handle one message from ``zygote``; False when there was none to read."""
        try:
            data = zygote.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            # End of file: the zygote and every process it forked closed their ends.
            # A live zygote is exiting (reaped() reports it); a reaped one has said all.
            if zygote in self.draining:
                self.forget(zygote)
            return False
        message = decode(data)
        if isinstance(message, Ready):
            zygote.ready = True
            error_log.info("Zygote %d imported the application", zygote.pid)
        elif isinstance(message, Spawned):
            read_fd = zygote.spawns.pop(message.request, None)
            slot = zygote.spawn_slots.pop(message.request, -1)
            info = zygote.spawn_infos.pop(message.request, None)
            if read_fd is not None:
                self.owner._adopt(message.pid, zygote.generation, read_fd, slot, info)
            if not self.in_flight_anywhere():
                self.early_exits.clear()
        return True

    def reaped(self, pid: int, code: int) -> bool:
        """A child the master reaped that is no worker of its own: True if it was a zygote
        or may be a worker a zygote has not reported yet (remembered for its report)."""
        zygote = self.live.pop(pid, None)
        if zygote is not None:
            self._exited(zygote, code)
            return True
        if self.in_flight_anywhere():
            # Perhaps a worker whose zygote's report is still unread; else an
            # intermediate process that outlived its zygote.
            self.early_exits[pid] = code
            return True
        return False

    def _exited(self, zygote: Zygote, code: int) -> None:
        # Its socket is read to the end before it is closed: the Spawned replies it (or
        # an intermediate process) sent before exiting may still be queued there, and a
        # worker whose reply was dropped would serve on, unknown to the master.
        owner = self.owner
        self.draining.append(zygote)
        while self.read(zygote):
            pass
        if owner.stopping or zygote.stopping or zygote.generation not in (owner.generation, owner.pending):
            # Told to exit (superseded, reload aborted, shutting down): never restarted.
            error_log.info("Zygote %d exited (%s)", zygote.pid, describe_exit(code))
            return
        if code == ExitCode.APP_LOAD or not zygote.ready:
            owner._load_failed(zygote.generation, f"zygote {zygote.pid}", code)
        else:
            error_log.error("Zygote %d exited (%s); starting a new one", zygote.pid, describe_exit(code))
            self.start(zygote.generation)

    def forget(self, zygote: Zygote) -> None:
        """Drop a reaped zygote whose replies were all read (or are no longer awaited)."""
        self.draining.remove(zygote)
        zygote.sock.close()
        for fd in zygote.spawns.values():
            os.close(fd)  # requests it never answered: those workers do not exist
        zygote.spawns.clear()
        slots = self.owner.slots
        if slots is not None:
            for slot in zygote.spawn_slots.values():
                slots.drop(slot)
        zygote.spawn_slots.clear()
        zygote.spawn_infos.clear()
        if not self.in_flight_anywhere():
            self.early_exits.clear()


# ---------------------------------------------------------------------- the zygote process


def zygote_process(
    config: Config,
    sockets: list[socket.socket],
    sock: socket.socket,
    master_pid: int,
    beat: float,
    worker_body: WorkerBody,
    metrics_region: object = None,
    server: object = None,
    generation: int = 0,
) -> NoReturn:
    """Import the application once, then fork workers on the master's request (rules 1,
    2 and 5). ``worker_body`` runs each worker; ``server``: the hooks' ``server``."""
    gc.freeze()  # what the master gave it stays shared (see supervisor.worker_process)
    # The master imports none of these (the application's modules are the zygote's).
    from .loader import load_app
    from .supervision import Supervision
    from .worker import import_event_loop

    faulthandler.enable(all_threads=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reopen_requested = False

    def record_usr1(signum: int, frame: object) -> None:
        # Only record: the loop below reopens the log (supervisor.py rule 2).
        nonlocal reopen_requested
        reopen_requested = True

    # The wakeup pipe makes the poll below return on a signal (PEP 475 retries it).
    wake_r, wake_w = pipe()
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGUSR1, record_usr1)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # see processes.fork()
    # What every worker imports, once here (before the application, as a worker does):
    # the workers forked from the zygote share it.
    import_event_loop(config.loop)
    try:
        app = load_app(config.app or "")
    except AppLoadError as exc:
        error_log.error("%s%s", exc, f"\n{exc.detail.rstrip()}" if exc.detail else "")
        flush_and_exit(ExitCode.APP_LOAD)
    sock.send(Ready().encode())
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        if reopen_requested:
            reopen_requested = False
            reopen_error_log()
        events = dict(poller.poll())
        if wake_r in events:
            drain(wake_r)
        if sock.fileno() not in events:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
        except OSError:
            flush_and_exit(0)
        message = decode(data)
        if not data or isinstance(message, Exit):
            flush_and_exit(0)
        if not isinstance(message, Spawn) or not fds:
            for fd in fds:
                os.close(fd)
            continue
        if reopen_requested:
            # A rotation came meanwhile: the new worker inherits the reopened log.
            reopen_requested = False
            reopen_error_log()
        middle = fork()
        if middle == 0:
            worker = fork()
            if worker == 0:
                try:
                    # Nothing of the zygote's plumbing belongs to the worker (its signal
                    # handling is reset by fork(); SIGUSR1 stays blocked until it serves).
                    for fd in (wake_r, wake_w):
                        close_quietly(fd)
                    sock.close()
                    supervision = Supervision(
                        fds[0],
                        master_pid,
                        beat,
                        message.max_requests,
                        metrics_region,
                        message.slot,
                        config.adaptive,
                    )
                    info = hooks.WorkerInfo(message.request, generation, config)
                    worker_body(config, sockets, supervision, app, server, info)
                finally:
                    os._exit(1)
            sock.send(Spawned(message.request, worker).encode())
            os._exit(0)
        os.close(fds[0])
        while True:
            try:
                os.waitpid(middle, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
