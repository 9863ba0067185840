"""supervisor.Master without processes: fork, kill and waitpid are fakes, the clock is a
number the test moves.

Each test drives the master's loop one turn at a time (``Master._turn``, with a poll
interval of 0: a turn never waits) and plays the children's part by hand: a worker
"serves" or "beats" when the test writes ``Supervision.READY``/``BEAT`` into its pipe,
"exits" when the test queues its wait status for the fake ``waitpid``; a zygote
"imports" when the test sends ``Ready`` on its channel and "forks" when it answers a
``Spawn`` with ``Spawned``. What the master decides is read back from what it forked,
which signals it sent (to which PID, at which clock time), and its records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from rapidwsgi.config import Config
from rapidwsgi.errors import ExitCode
from rapidwsgi.processes import Processes
from rapidwsgi.supervision import Supervision
from rapidwsgi.supervisor import CRASH_LIMIT, CRASH_WINDOW, KILL_GRACE, MAX_BACKOFF, Master, WorkerProcess
from rapidwsgi.zygote import Exit, Ready, Spawn, Spawned, decode

SIGTERM, SIGKILL, SIGABRT = int(signal.SIGTERM), int(signal.SIGKILL), int(signal.SIGABRT)

#: The fake clock starts here (any value: the master only subtracts times).
START = 100.0


class Clock:
    """The master's clock: ``now`` seconds, moved by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Child:
    """What the fake process table knows of one forked child."""

    pid: int
    at: float
    #: A worker forked by the master: the write end of its pipe (a duplicate, the
    #: master closed its own), through which the test speaks for the worker.
    pipe_w: int | None = None
    #: A zygote: the zygote's end of its channel (a duplicate, likewise).
    channel: socket.socket | None = None


@dataclass
class FakeProcesses(Processes):
    """processes.Processes with no process: ``fork`` hands out PIDs from 1000 up and
    remembers the pipe or channel made just before it; ``kill`` records; ``waitpid``
    returns the exits the test queued, then ``(0, 0)`` (WNOHANG: nothing exited)."""

    clock: Clock = field(default_factory=Clock)
    children: dict[int, Child] = field(default_factory=dict)
    #: (pid, signal, clock time) in the order the master sent them.
    signals: list[tuple[int, int, float]] = field(default_factory=list)
    exits: deque[tuple[int, int]] = field(default_factory=deque)
    #: Every fd and socket made for the test's side, closed at the end.
    held: list[int] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    _next_pid: int = 1000
    _pipe_w: int | None = None
    _channel: socket.socket | None = None

    def __post_init__(self) -> None:
        super().__init__()
        self.fork = self._fork
        self.kill = self._kill
        self.waitpid = self._waitpid
        self.pipe = self._pipe
        self.seqpacket_pair = self._seqpacket_pair

    def _fork(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        self.children[pid] = Child(pid, self.clock.now, self._pipe_w, self._channel)
        self._pipe_w = self._channel = None
        return pid

    def _kill(self, pid: int, signum: int) -> None:
        self.signals.append((pid, int(signum), self.clock.now))

    def _waitpid(self, pid: int, options: int) -> tuple[int, int]:
        assert (pid, options) == (-1, os.WNOHANG)
        return self.exits.popleft() if self.exits else (0, 0)

    def _pipe(self) -> tuple[int, int]:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self._pipe_w = os.dup(write_fd)
        self.held.append(self._pipe_w)
        return read_fd, write_fd

    def _seqpacket_pair(self) -> tuple[socket.socket, socket.socket]:
        master_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._channel = zygote_end.dup()
        self.sockets.append(self._channel)
        return master_end, zygote_end

    # -- the children's part

    def exit(self, pid: int, code: int = 0, signum: int = 0) -> None:
        """``pid`` exits with ``code`` (or is killed by ``signum``): reaped next turn."""
        self.exits.append((pid, signum if signum else code << 8))

    def signals_since(self, index: int) -> list[tuple[int, int, float]]:
        return self.signals[index:]


def write(fd: int, message: bytes) -> None:
    assert os.write(fd, message) == len(message)


@pytest.fixture
def fake() -> Iterator[FakeProcesses]:
    processes = FakeProcesses()
    yield processes
    for fd in processes.held:
        with contextlib.suppress(OSError):  # a duplicate the test already closed
            os.close(fd)
    for sock in processes.sockets:
        sock.close()


def make_master(fake: FakeProcesses, **settings: object) -> Master:
    config = Config(app="tests.apps:hello", **settings)  # type: ignore[arg-type]
    return Master(config, [], clock=fake.clock, poll_interval=0, processes=fake)


def turn(master: Master, at: float | None = None) -> None:
    """One turn of the master's loop, at clock time ``at`` (unchanged if None)."""
    if at is not None:
        assert isinstance(master.clock, Clock)
        master.clock.now = at
    master._turn()


def live(master: Master, generation: int | None = None) -> list[WorkerProcess]:
    """The master's workers not told to stop (of ``generation``), oldest first."""
    return sorted(
        (w for w in master.workers.values() if not w.stopping and generation in (None, w.generation)),
        key=lambda w: w.pid,
    )


def serve(fake: FakeProcesses, *pids: int) -> None:
    """The workers ``pids`` (forked by the master) say they serve."""
    for pid in pids:
        pipe_w = fake.children[pid].pipe_w
        assert pipe_w is not None
        write(pipe_w, Supervision.READY)


# ---------------------------------------------------------------------- respawn


def test_a_crashed_worker_is_replaced_at_once_in_its_metrics_slot(fake: FakeProcesses) -> None:
    master = make_master(fake, workers=2, metrics_bind="127.0.0.1:0")
    turn(master)
    assert sorted(master.workers) == [1000, 1001]
    serve(fake, 1000, 1001)
    turn(master)
    crashed = master.workers[1000]
    assert crashed.ready and crashed.slot >= 0
    slot = crashed.slot

    fake.exit(1000, signum=SIGKILL)
    turn(master, START + 1.0)

    assert sorted(master.workers) == [1001, 1002]
    new = master.workers[1002]
    assert (new.generation, new.slot, new.spawned, new.ready) == (1, slot, START + 1.0, False)
    assert new.info.age == 3  # the third worker the master started
    assert fake.children[1002].at == START + 1.0
    assert master.restarts == {"crash": 1}
    assert list(master.crashes) == [START + 1.0]
    assert (master.backoff, fake.signals) == (0.0, [])


def test_a_worker_stopped_on_purpose_is_not_counted_as_a_crash(fake: FakeProcesses) -> None:
    master = make_master(fake, workers=1)
    turn(master)
    serve(fake, 1000)
    turn(master)
    master.handle_ttin()  # 2 workers
    turn(master)
    serve(fake, 1001)
    turn(master)
    master.handle_ttou()  # 1 worker: the oldest stops
    turn(master, START + 3.0)
    assert fake.signals == [(1000, SIGTERM, START + 3.0)]
    fake.exit(1000, 0)
    turn(master)
    assert sorted(master.workers) == [1001]
    assert master.restarts == {"scale_down": 1}
    assert list(master.crashes) == []


# ---------------------------------------------------------------------- crash loop


def crash_at_once(master: Master, fake: FakeProcesses, times: int) -> list[float]:
    """The worker crashes as soon as it is replaced, ``times`` times: the delay of each
    respawn (checked to the moment: not before the back-off is over, at once when it is)."""
    delays: list[float] = []
    for _ in range(times):
        (worker,) = master.workers.values()
        crashed_at = fake.clock.now
        serve(fake, worker.pid)  # it served, so this is no boot failure
        fake.exit(worker.pid, 1)
        turn(master)
        if master.workers:
            delays.append(0.0)
            continue
        delay = master.next_spawn - crashed_at
        turn(master, master.next_spawn - 0.25)
        assert not master.workers
        turn(master, master.next_spawn)
        assert len(master.workers) == 1
        assert fake.children[max(fake.children)].at == crashed_at + delay
        delays.append(delay)
    return delays


def test_a_crash_loop_backs_off_1_2_4_8_16_30_seconds_and_stays_at_30(
    fake: FakeProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """From the CRASH_LIMIT-th exit within CRASH_WINDOW on, each respawn waits twice as
    long (1 s first, MAX_BACKOFF at most); a worker crashing within CRASH_WINDOW of its
    delayed spawn keeps the loop going, although the earlier exits left the window."""
    assert (CRASH_LIMIT, CRASH_WINDOW, MAX_BACKOFF) == (5, 10.0, 30.0)
    master = make_master(fake, workers=1)
    turn(master)
    delays = crash_at_once(master, fake, 11)
    assert delays == [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert master.restarts == {"crash": 11}
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Crash loop")]
    assert logged == [
        f"Crash loop: {n} unexpected worker exits (the first 5 within 10s); next spawn in {d}s"
        for n, d in [(5, 1), (6, 2), (7, 4), (8, 8), (9, 16), (10, 30), (11, 30)]
    ]


def test_a_crash_loop_ends_when_the_worker_runs_for_the_window_after_its_delayed_spawn(
    fake: FakeProcesses,
) -> None:
    """The back-off resets once a worker outlives CRASH_WINDOW after the delayed spawn:
    just inside it the loop goes on (2 s), just past it the next respawn is immediate and
    a new loop needs CRASH_LIMIT exits again."""
    master = make_master(fake, workers=1)
    turn(master)
    assert crash_at_once(master, fake, 5) == [0.0, 0.0, 0.0, 0.0, 1.0]
    spawned = master.next_spawn
    # Crashes exactly CRASH_WINDOW after its spawn: still the loop.
    turn(master, spawned + CRASH_WINDOW)
    assert crash_at_once(master, fake, 1) == [2.0]
    spawned = master.next_spawn
    # Runs a moment longer than the window: the loop is over.
    turn(master, spawned + CRASH_WINDOW + 0.25)
    assert crash_at_once(master, fake, 1) == [0.0]
    assert (master.backoff, master.loop_exits) == (0.0, 0)
    assert crash_at_once(master, fake, 5) == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_workers_that_never_serve_stop_the_master_with_worker_boot(fake: FakeProcesses) -> None:
    master = make_master(fake, workers=1)
    turn(master)
    for attempt in range(5):
        (worker,) = master.workers.values()
        fake.exit(worker.pid, 1)
        turn(master, START + 100.0 * (attempt + 1))  # far apart: no crash loop
    assert master.exit_code == ExitCode.WORKER_BOOT
    assert master.stopping == "quick"
    assert sorted(fake.children) == [1000, 1001, 1002, 1003, 1004]


# ---------------------------------------------------------------------- watchdog


def test_the_watchdog_aborts_a_silent_worker_after_timeout_then_kills_it_after_kill_grace(
    fake: FakeProcesses,
) -> None:
    assert KILL_GRACE == 2.0
    master = make_master(fake, workers=1, timeout=10.0)
    turn(master)
    serve(fake, 1000)
    turn(master)  # ready at START: its last beat
    pipe_w = fake.children[1000].pipe_w
    assert pipe_w is not None
    write(pipe_w, Supervision.BEAT)
    turn(master, START + 5.0)  # a beat: silent since START + 5
    turn(master, START + 15.0)  # silent for exactly --timeout: not over it
    assert fake.signals == []
    turn(master, START + 15.5)
    assert fake.signals == [(1000, SIGABRT, START + 15.5)]
    turn(master, START + 17.5)  # exactly KILL_GRACE after the SIGABRT: not over it
    assert fake.signals == [(1000, SIGABRT, START + 15.5)]
    turn(master, START + 18.0)
    assert fake.signals == [(1000, SIGABRT, START + 15.5), (1000, SIGKILL, START + 18.0)]

    fake.exit(1000, signum=SIGKILL)
    turn(master, START + 18.5)
    assert master.restarts == {"watchdog": 1}
    assert sorted(master.workers) == [1001]
    assert master.workers[1001].spawned == START + 18.5


def test_the_watchdog_times_a_booting_worker_from_its_spawn(fake: FakeProcesses) -> None:
    master = make_master(fake, workers=1, timeout=4.0)
    turn(master)  # spawned at START, never ready
    turn(master, START + 4.0)
    assert fake.signals == []
    turn(master, START + 4.25)
    assert fake.signals == [(1000, SIGABRT, START + 4.25)]


def test_a_worker_that_does_not_stop_gets_sigkill_after_the_graceful_timeout_plus_5s(
    fake: FakeProcesses,
) -> None:
    master = make_master(fake, workers=1, graceful_timeout=20.0)
    turn(master)
    serve(fake, 1000)
    turn(master)
    master.handle_ttin()
    turn(master)
    serve(fake, 1001)
    turn(master)
    master.handle_ttou()
    turn(master, START + 1.0)
    assert fake.signals == [(1000, SIGTERM, START + 1.0)]
    turn(master, START + 26.0)  # 25 s: exactly the limit
    assert len(fake.signals) == 1
    turn(master, START + 26.5)
    assert fake.signals[1:] == [(1000, SIGKILL, START + 26.5)]


# ---------------------------------------------------------------------- reload


def test_a_reload_stops_the_old_generation_only_once_every_new_worker_serves(fake: FakeProcesses) -> None:
    master = make_master(fake, workers=2)
    turn(master)
    serve(fake, 1000, 1001)
    turn(master)

    master._signals.append(signal.SIGHUP)
    turn(master, START + 1.0)
    assert master.pending == 2
    assert [(w.pid, w.generation) for w in live(master)] == [(1000, 1), (1001, 1), (1002, 2), (1003, 2)]

    serve(fake, 1002)
    turn(master, START + 2.0)
    assert (master.generation, master.pending, fake.signals) == (1, 2, [])  # one of two serves

    serve(fake, 1003)
    turn(master, START + 3.0)
    assert master.generation == 2
    assert master.pending is None
    assert fake.signals == [(1000, SIGTERM, START + 3.0), (1001, SIGTERM, START + 3.0)]
    assert master.reloads == {"completed": 1}

    fake.exit(1000, 0)
    fake.exit(1001, 0)
    turn(master, START + 4.0)
    assert sorted(master.workers) == [1002, 1003]  # nothing respawned for them
    assert master.restarts == {"reload": 2}
    assert sorted(fake.children) == [1000, 1001, 1002, 1003]


def test_a_superseded_reload_stops_its_workers_and_the_newest_generation_takes_over(
    fake: FakeProcesses,
) -> None:
    master = make_master(fake, workers=1)
    turn(master)
    serve(fake, 1000)
    turn(master)
    master._signals.append(signal.SIGHUP)
    turn(master, START + 1.0)
    assert [(w.pid, w.generation) for w in live(master)] == [(1000, 1), (1001, 2)]

    master._signals.append(signal.SIGHUP)  # before generation 2 serves
    turn(master, START + 2.0)
    assert master.pending == 3
    assert fake.signals == [(1001, SIGTERM, START + 2.0)]  # generation 2 only
    assert master.reloads == {"aborted": 1}
    assert master.failed_generations == {2}
    assert [(w.pid, w.generation) for w in live(master)] == [(1000, 1), (1002, 3)]

    serve(fake, 1002)
    turn(master, START + 3.0)
    assert master.generation == 3
    assert master.pending is None
    assert fake.signals[1:] == [(1000, SIGTERM, START + 3.0)]
    assert master.reloads == {"aborted": 1, "completed": 1}


def test_a_new_worker_that_dies_before_it_serves_aborts_the_reload(fake: FakeProcesses) -> None:
    master = make_master(fake, workers=1)
    turn(master)
    serve(fake, 1000)
    turn(master)
    master.reload()
    turn(master, START + 1.0)
    fake.exit(1001, int(ExitCode.APP_LOAD))
    turn(master, START + 2.0)
    assert (master.generation, master.pending, master.failed_generations) == (1, None, {2})
    assert master.reloads == {"aborted": 1}
    assert [(w.pid, w.generation) for w in live(master)] == [(1000, 1)]
    assert fake.signals == []
    assert sorted(fake.children) == [1000, 1001]  # the old worker serves on; nothing respawned


# ---------------------------------------------------------------------- zygote


class ZygoteSide:
    """The test's end of a zygote's channel."""

    def __init__(self, fake: FakeProcesses, pid: int) -> None:
        channel = fake.children[pid].channel
        assert channel is not None
        self.channel = channel
        self.fake = fake
        self.pid = pid

    def send(self, message: Ready | Spawned) -> None:
        self.channel.send(message.encode())

    def received(self) -> list[tuple[Spawn | Exit | None, int]]:
        """The messages the master sent, with the pipe fd each carried (-1: none)."""
        self.channel.setblocking(False)
        got: list[tuple[Spawn | Exit | None, int]] = []
        for _ in range(100):
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 256, 1)
            except BlockingIOError:
                break
            message = decode(data)
            assert not isinstance(message, Ready | Spawned)
            self.fake.held.extend(fds)
            got.append((message, fds[0] if fds else -1))
        return got


def preloaded(fake: FakeProcesses, workers: int) -> tuple[Master, ZygoteSide]:
    """A --preload master whose zygote (PID 1000) imported the application."""
    master = make_master(fake, workers=workers, preload=True)
    master.zygotes.start(master.generation)  # as Master.run does
    zygote = ZygoteSide(fake, 1000)
    turn(master)
    assert master.workers == {}  # the zygote still imports
    zygote.send(Ready())
    turn(master)
    assert master.zygotes.live[1000].ready
    return master, zygote


def test_the_zygote_messages_round_trip_and_junk_decodes_to_none() -> None:
    for message in (Ready(), Exit(), Spawn(7, 1000, -1), Spawned(7, 4321)):
        assert decode(message.encode()) == message
    assert Spawn(3, 0, 2).encode() == b"spawn 3 0 2"
    assert Spawned(3, 99).encode() == b"pid 3 99"
    assert (Ready().encode(), Exit().encode()) == (b"ok", b"exit")
    for junk in (b"", b"spawn 1 2", b"pid x 3", b"ok 1", b"hello", b"pid 1 2 3"):
        assert decode(junk) is None


def test_the_workers_a_zygote_reports_are_adopted_with_their_pipes(fake: FakeProcesses) -> None:
    master, zygote = preloaded(fake, workers=2)
    requests = zygote.received()
    assert [message for message, _ in requests] == [Spawn(1, 0, -1), Spawn(2, 0, -1)]
    assert master._spawns_in_flight(1) == 2
    turn(master)
    assert zygote.received() == []  # in flight: not asked again

    zygote.send(Spawned(1, 5001))
    turn(master, START + 1.0)
    assert sorted(master.workers) == [5001]
    worker = master.workers[5001]
    assert (worker.generation, worker.spawned, worker.info.age) == (1, START + 1.0, 1)
    write(requests[0][1], Supervision.READY)  # through the pipe the zygote was given
    turn(master)
    assert worker.ready
    assert master._spawns_in_flight(1) == 1
    assert sorted(fake.children) == [1000]  # the master forked the zygote only


def test_replies_still_queued_when_the_zygote_exits_are_adopted_and_it_is_restarted(
    fake: FakeProcesses,
) -> None:
    master, zygote = preloaded(fake, workers=2)
    zygote.received()
    zygote.send(Spawned(1, 5001))
    zygote.send(Spawned(2, 5002))
    fake.exit(1000, signum=SIGKILL)  # reaped in the turn that reads the first reply
    turn(master, START + 1.0)
    assert sorted(master.workers) == [5001, 5002]
    assert sorted(master.zygotes.live) == [1001]  # a new zygote for generation 1
    assert master.zygotes.live[1001].generation == 1
    assert [z.pid for z in master.zygotes.draining] == [1000]  # its channel is still open

    # An intermediate process that outlived the zygote closes the last end: forgotten.
    zygote.channel.close()
    turn(master)
    assert master.zygotes.draining == []


def test_a_late_reply_after_the_zygote_was_reaped_is_adopted(fake: FakeProcesses) -> None:
    master, zygote = preloaded(fake, workers=1)
    zygote.received()
    master.stop(graceful=True, reason="test")  # the zygote is told to exit
    assert zygote.received() == [(Exit(), -1)]
    fake.exit(1000, 0)
    turn(master, START + 1.0)
    assert sorted(master.zygotes.live) == []  # stopping: not restarted
    assert [z.pid for z in master.zygotes.draining] == [1000]
    assert not master.done  # its reply may still come

    zygote.send(Spawned(1, 5001))  # from the intermediate, which still holds the channel
    turn(master, START + 2.0)
    # Adopted, and stopped like the rest (the master is stopping): it is not left serving.
    assert master.workers[5001].stop_sent == START + 2.0
    assert fake.signals == [(5001, SIGTERM, START + 2.0)]
    zygote.channel.close()
    turn(master)
    assert master.zygotes.draining == []
    fake.exit(5001, 0)
    turn(master)
    assert master.done


def test_a_worker_reaped_before_its_report_is_recorded_as_exited_when_the_report_comes(
    fake: FakeProcesses,
) -> None:
    master, zygote = preloaded(fake, workers=1)
    zygote.received()
    fake.exit(5001, 1)  # the new worker dies at once; the reply is not read yet
    turn(master, START + 1.0)
    assert master.zygotes.early_exits == {5001: 256 >> 8}
    zygote.send(Spawned(1, 5001))
    turn(master, START + 2.0)
    assert 5001 not in master.workers
    assert master.restarts == {"crash": 1}
    assert master.zygotes.early_exits == {}
    # Replaced: a new spawn request.
    assert [message for message, _ in zygote.received()] == [Spawn(2, 0, -1)]


def test_a_superseded_generations_zygote_is_not_restarted_and_its_late_worker_is_stopped(
    fake: FakeProcesses,
) -> None:
    master, first = preloaded(fake, workers=1)
    ((_, pipe_w),) = first.received()
    first.send(Spawned(1, 5001))
    turn(master)
    write(pipe_w, Supervision.READY)
    turn(master)
    assert master.workers[5001].ready

    master.reload()  # generation 2: zygote 1001
    second = ZygoteSide(fake, 1001)
    second.send(Ready())
    turn(master, START + 1.0)
    assert [message for message, _ in second.received()] == [Spawn(2, 0, -1)]
    master.reload()  # generation 3 supersedes it before its worker is reported
    assert second.received() == [(Exit(), -1)]
    assert sorted(master.zygotes.live) == [1000, 1001, 1002]
    assert master.zygotes.live[1001].stopping

    second.send(Spawned(2, 5002))  # generation 2's fork was under way
    fake.exit(1001, 0)
    turn(master, START + 2.0)
    assert fake.signals == [(5002, SIGTERM, START + 2.0)]
    assert master.workers[5002].stop_cause == "reload_aborted"
    assert sorted(master.zygotes.live) == [1000, 1002]  # 1001 not restarted
    assert sorted(fake.children) == [1000, 1001, 1002]


def test_a_zygote_that_fails_to_import_at_boot_stops_the_master_with_app_load(
    fake: FakeProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    master = make_master(fake, workers=1, preload=True)
    master.zygotes.start(1)
    fake.exit(1000, int(ExitCode.APP_LOAD))
    turn(master)
    assert master.exit_code == ExitCode.APP_LOAD
    assert master.stopping == "quick"
    assert sorted(fake.children) == [1000]
    assert "The application failed to load in zygote 1000 (exit code 4 (APP_LOAD)); exiting" in [
        r.getMessage() for r in caplog.records
    ]
