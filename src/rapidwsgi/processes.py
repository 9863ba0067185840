"""The master's reach into the process table, and the small helpers its children share.

``Processes`` is the one seam through which the master (supervisor.Master) and its
zygote bookkeeping (zygote.Zygotes) fork, signal and reap: the real functions by
default, fakes in tests/test_master_unit.py, so that the supervision rules are tested
without child processes. The zygote process itself (zygote.zygote_process) and the
workers call the functions here directly: nothing replaces them there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Final, NoReturn

from .errors import ExitCode

#: A new child's handling of the signals until it installs its own: a stop request
#: (the master stopping a worker that is still importing the application, say)
#: terminates it; terminal signals meant for the master are ignored.
_CHILD_DEFAULT: Final = (signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD)
_CHILD_IGNORE: Final = (signal.SIGHUP, signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU)


def fork() -> int:
    """``os.fork()`` for workers and zygotes: the child starts with its own signal
    handling, not the master's.

    Inherited, the parent's handlers would only queue a signal in the child's copy of
    the parent's state, where nothing ever acts on it: a SIGTERM the master sends a worker
    that is still importing the application would be swallowed, and that worker would
    serve on. So the child resets them (``_CHILD_DEFAULT``, ``_CHILD_IGNORE``) and drops
    the parent's wakeup fd; the signals stay blocked across the fork, so that one sent in
    between is delivered only once the child's own handling is in place. SIGUSR1 (reopen
    the logs) and SIGUSR2 (a stop announced, --shutdown-delay) stay blocked in the child
    until it installs its handler (the worker's event loop; the zygote's loop, for
    SIGUSR1): their default action would kill the child. The parent's mask is restored
    at once.
    """
    blocked = {signal.SIGUSR1, signal.SIGUSR2, *_CHILD_DEFAULT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    pid = os.fork()
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return pid
    signal.set_wakeup_fd(-1)
    for signum in (*_CHILD_DEFAULT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    for signum in _CHILD_IGNORE:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _CHILD_DEFAULT)
    return 0


def kill(pid: int, signum: int) -> None:
    """``os.kill``, where a process already gone (ESRCH) is no error; any other is raised."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def pipe() -> tuple[int, int]:
    """A pipe whose two ends are non-blocking: (read end, write end)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    """The master's end and the zygote's end of a zygote's channel: SOCK_SEQPACKET keeps
    each message whole (one ``recv`` is one message), and a closed end reads as b""."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def drain(fd: int) -> None:
    """Read a non-blocking ``fd`` until nothing is left (a wakeup pipe)."""
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def flush_and_exit(code: int) -> NoReturn:
    """End a child process: flush what Python buffered, then ``os._exit`` (a forked child
    must not run the parent's ``atexit`` handlers or ``finally`` blocks)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def describe_exit(code: int) -> str:
    """An exit code as ``os.waitstatus_to_exitcode`` gives it, for the log."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    try:
        return f"exit code {code} ({ExitCode(code).name})"
    except ValueError:
        return f"exit code {code}"


class Processes:
    """How the master forks, signals and reaps (and makes the pipes and channels of its
    children): the real functions, the attributes a test replaces with fakes.

    Contract of each, as the master relies on it: ``fork()`` returns 0 in the child and
    the child's PID in the parent; ``kill(pid, signum)`` ignores a process already gone;
    ``waitpid(pid, options)`` is ``os.waitpid`` (``(0, 0)`` when nothing exited under
    ``WNOHANG``, ``ChildProcessError`` when there is no child); ``pipe()`` and
    ``seqpacket_pair()`` as the functions of this module.
    """

    def __init__(self) -> None:
        self.fork: Callable[[], int] = fork
        self.kill: Callable[[int, int], None] = kill
        self.waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid
        self.pipe: Callable[[], tuple[int, int]] = pipe
        self.seqpacket_pair: Callable[[], tuple[socket.socket, socket.socket]] = seqpacket_pair
