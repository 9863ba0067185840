#!/usr/bin/env python3
"""Instructions per request of each server under callgrind: user space, stable on a noisy VM.

Each server (the hello app; one process, or a master and ``--workers 1``) runs under
``valgrind --tool=callgrind --trace-children=yes``. The process that holds the client
connections (the worker) is found from ``/proc``; for each load shape:

- ``keep-alive``: 20 HTTP/1.1 keep-alive connections, one request in flight each, the head
  wrk sends (``GET /``, Host only), as ``wrk -c20``;
- ``browser``: the same with a browser-like head (``common.BROWSER``: 7 fields, a cookie, a
  query string);
- ``new-conn``: a new HTTP/1.0 connection per request, 20 at a time, the head ab sends, as
  ``ab -c20`` without ``-k``,

the client below (plain asyncio, outside valgrind, bounded in count and time) sends a
warm-up of 2,000 requests, the worker's counters are zeroed (``callgrind_control -z PID``),
exactly N requests are sent and answered, the worker is dumped (``callgrind_control -d
PID``) and the dump's total Ir is divided by N. Kernel time is not counted. The method:
../shared/BENCH-NOTES.md, "Instruction counts". ``uvloop-floor`` (bench/apps/uvloop_floor.py)
answers a fixed response per request with no parsing: what uvloop itself costs.
``--breakdown`` adds the top inclusive functions per new connection (``callgrind_annotate
--inclusive=yes``) of rapidwsgi and the uvloop floor.

Usage: python bench/instructions.py [-n N] [--n-new N] [--servers a,b] [--shapes a,b]
       [--breakdown] [--out FILE.md] [--rapidwsgi-python PY] [--dumps DIR]
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import peers
import run
from common import APPS_DIR, BROWSER, HOST, free_port, last_line, log, run_capture, write_atomic
from probe import response_end

FLOOR = "uvloop-floor"
DEFAULT_SERVERS = ("rapidwsgi", "bjoern", "fastwsgi", "granian", FLOOR)
BREAKDOWN_SERVERS = ("rapidwsgi", FLOOR)
APP_TARGET = "hello:app"
CONNS = 20
WARMUP = 2000
KEEPALIVE_N = 20_000
NEW_CONN_N = 5_000
TOP = 25
START_TIMEOUT_S = 240.0
PHASE_TIMEOUT_S = 600.0
RESPONSE_TIMEOUT_S = 60.0
CONTROL_TIMEOUT_S = 120.0
ANNOTATE_TIMEOUT_S = 600.0
SETTLE_S = 0.5
IDLE_S = 1.0
VALGRIND_HINT = "apt-get install -y valgrind"


class MeasureError(Exception):
    """A server or a measurement failed: reported in its cell, the run goes on."""


# --------------------------------------------------------------------------
# Load shapes and the client
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    name: str
    label: str  # the column heading
    keepalive: bool


SHAPES = (
    Shape("keep-alive", "keep-alive (as wrk -c20)", True),
    Shape("browser", "keep-alive, browser-like head", True),
    Shape("new-conn", "new HTTP/1.0 connection per request (as ab -c20)", False),
)
SHAPE_BY_NAME = {s.name: s for s in SHAPES}


def request_head(shape: str, port: int) -> bytes:
    """The bytes each request of a shape sends (wrk's, the browser-like one, ab's)."""
    if shape == "keep-alive":
        return f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    if shape == "browser":
        return BROWSER
    if shape == "new-conn":
        ab = f"GET / HTTP/1.0\r\nHost: {HOST}:{port}\r\nUser-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n"
        return ab.encode()
    raise ValueError(f"unknown shape {shape!r}")


class BadResponse(MeasureError):
    pass


def check_status(buf: bytes) -> None:
    if not (buf.startswith(b"HTTP/1.") and buf[8:13] == b" 200 "):
        raise BadResponse(f"not a 200 response: {buf[:80]!r}")


def keepalive_response_done(buf: bytes) -> bool:
    """Whether buf holds exactly one complete keep-alive response (one request in flight)."""
    try:
        done = response_end(buf)
    except ValueError as exc:
        raise BadResponse(f"{exc}: {buf[:80]!r}") from exc
    if done is None:
        return False
    check_status(buf)
    end, announces_close = done
    if end != len(buf):
        raise BadResponse(f"{len(buf) - end} bytes after the response with one request in flight")
    if announces_close:
        raise BadResponse("the server closes a keep-alive connection (Connection: close)")
    return True


def check_closed_response(buf: bytes) -> None:
    """buf is all a server sent on a connection it closed: one complete 200 response."""
    check_status(buf)
    try:
        done = response_end(buf)
    except ValueError:
        return  # no framing: the body ends with the connection (HTTP/1.0)
    if done is None or done[0] != len(buf):
        raise BadResponse(f"not one complete response before the close: {len(buf)} bytes")


async def all_or_cancel(coros: Sequence[Awaitable[None]]) -> None:
    """Run coros together; the first failure cancels the others (Python 3.10 has no TaskGroup)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(asyncio.open_connection(HOST, port), RESPONSE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError) as exc:
        raise MeasureError(f"connect to {HOST}:{port}: {type(exc).__name__}: {exc}") from exc


async def read_keepalive_response(reader: asyncio.StreamReader) -> None:
    buf = b""
    while not keepalive_response_done(buf):
        try:
            data = await asyncio.wait_for(reader.read(65536), RESPONSE_TIMEOUT_S)
        except asyncio.TimeoutError as exc:
            raise MeasureError(f"no complete response within {RESPONSE_TIMEOUT_S:.0f}s") from exc
        if not data:
            raise BadResponse("the server closed a keep-alive connection")
        buf += data


class KeepAlive:
    """conns keep-alive connections, one request in flight on each."""

    def __init__(self, port: int, head: bytes, conns: int) -> None:
        self.port = port
        self.head = head
        self.conns = conns
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self) -> None:
        for _ in range(self.conns):
            self.streams.append(await connect(self.port))

    async def send(self, count: int) -> None:
        """Exactly count requests, each answered, spread over the connections."""
        left = [count]

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while left[0] > 0:
                left[0] -= 1
                writer.write(self.head)
                await read_keepalive_response(reader)

        await all_or_cancel([one(r, w) for r, w in self.streams])

    def close(self) -> None:
        for _, writer in self.streams:
            writer.close()
        self.streams.clear()


async def one_connection(port: int, head: bytes) -> None:
    reader, writer = await connect(port)
    try:
        writer.write(head)
        buf = await asyncio.wait_for(reader.read(), RESPONSE_TIMEOUT_S)  # to the server's close
    except asyncio.TimeoutError as exc:
        raise MeasureError(f"HTTP/1.0 connection not closed within {RESPONSE_TIMEOUT_S:.0f}s") from exc
    finally:
        writer.close()
    check_closed_response(buf)


async def new_connections(port: int, head: bytes, count: int, concurrency: int) -> None:
    """Exactly count connections, one request each, concurrency of them at a time."""
    left = [count]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await one_connection(port, head)

    await all_or_cancel([worker() for _ in range(min(concurrency, count))])


async def bounded(coro: Awaitable[None], seconds: float, what: str) -> float:
    """Await coro within seconds; returns the time it took."""
    start = time.monotonic()
    try:
        await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError as exc:
        raise MeasureError(f"{what}: not done within {seconds:.0f}s") from exc
    return time.monotonic() - start


# --------------------------------------------------------------------------
# Callgrind: parsing its files (pure)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DumpTotals:
    summary: int | None  # callgrind's event counter since the last zero or dump
    totals: int | None  # the sum of the cost lines written

    @property
    def ir(self) -> int:
        value = self.summary if self.summary is not None else self.totals
        if value is None:
            raise ValueError("no summary: or totals: line")
        return value


def parse_dump_totals(text: str) -> DumpTotals:
    """The Ir of a callgrind dump from its ``summary:`` and ``totals:`` lines.

    summary: is the measure: callgrind's event counter since the last zero or dump (it
    agreed with ``callgrind_control -e``); totals: is the sum of the cost lines written,
    the same unless a zero left costs behind (see zero()). The counts are the column of
    ``Ir`` in the ``events:`` line (the first if none). Raises ValueError when the dump has
    neither line.
    """
    events = re.search(r"^events:\s*(.+)$", text, re.MULTILINE)
    names = events.group(1).split() if events else []
    column = names.index("Ir") if "Ir" in names else 0

    def count(key: str) -> int | None:
        hit = re.search(rf"^{key}:\s*(.+)$", text, re.MULTILINE)
        if hit is None:
            return None
        values = hit.group(1).split()
        return int(values[column]) if column < len(values) else 0

    found = DumpTotals(count("summary"), count("totals"))
    if found.summary is None and found.totals is None:
        raise ValueError("not a callgrind dump: no summary: or totals: line")
    return found


def per_request_k(ir: int, n: int) -> float:
    """Thousands of instructions per request."""
    if n <= 0:
        raise ValueError("n must be positive")
    return ir / n / 1000.0


def fmt_k(value: float) -> str:
    return f"{value:,.1f}k" if value >= 1 else f"{value * 1000:,.0f}"


@dataclass(frozen=True)
class FunctionCost:
    ir: int
    function: str
    obj: str  # the object file's name ('' when callgrind_annotate gives none)


ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)\s*$")


def parse_annotate(text: str) -> list[FunctionCost]:
    """The function lines of ``callgrind_annotate`` output, in its order (by cost).

    A line reads ``1,234 (12.3%)  file:function [/path/object]``; the PROGRAM TOTALS
    line and the per-line source annotation (after the function table) are skipped.
    """
    costs: list[FunctionCost] = []
    in_table = False
    for line in text.splitlines():
        if re.match(r"^Ir\s+file:function\s*$", line.strip()):
            in_table = True
            continue
        if not in_table:
            continue
        hit = ANNOTATE_LINE.match(line)
        if not hit:
            continue
        ir, rest = int(hit.group(1).replace(",", "")), hit.group(2)
        obj = ""
        objhit = re.search(r"\s\[([^\]]*)\]$", rest)
        if objhit:
            obj = os.path.basename(objhit.group(1))
            rest = rest[: objhit.start()]
        _, colon, function = rest.partition(":")  # file:function (Rust names hold '::' after it)
        costs.append(FunctionCost(ir, (function if colon else rest).strip(), obj))
    return costs


def self_by_object(text: str) -> dict[str, int]:
    """Self cost (Ir) of a callgrind dump per object file (its base name).

    Reads the cost lines of the file directly: each counts for the object of the last
    ``ob=`` line; the line after ``calls=`` (a call's inclusive cost) and after
    ``jump=``/``jcnd=`` is skipped. Names may be compressed (``ob=(3) /lib/x.so``, later
    ``ob=(3)``; ``cob=`` shares the ids). The values add up to the dump's totals: line.
    """
    positions, column = 1, 0
    names: dict[str, str] = {}
    obj = "???"
    skip = False
    costs: dict[str, int] = {}

    def resolve(spec: str) -> str:
        hit = re.match(r"^\((\d+)\)\s*(.*)$", spec)
        if hit is None:
            return os.path.basename(spec.strip()) or "???"
        if hit.group(2):
            names[hit.group(1)] = os.path.basename(hit.group(2).strip())
        return names.get(hit.group(1), "???")

    for line in text.splitlines():
        if not line:
            continue
        if line[0].isdigit() or line[0] in "+-*":
            if skip:
                skip = False
                continue
            fields = line.split()
            if len(fields) > positions + column:
                costs[obj] = costs.get(obj, 0) + int(fields[positions + column])
            continue
        skip = False
        if line.startswith("positions:"):
            positions = max(1, len(line.split()) - 1)
        elif line.startswith("events:"):
            events = line.split()[1:]
            column = events.index("Ir") if "Ir" in events else 0
        elif line.startswith("ob="):
            obj = resolve(line[3:])
        elif line.startswith("cob="):
            resolve(line[4:])
        elif line.startswith(("calls=", "jump=", "jcnd=")):
            skip = True
    return costs


WHOLE_SHARE = 0.99


def breakdown_rows(costs: Sequence[FunctionCost], total: int, top: int) -> list[FunctionCost]:
    """The top inclusive functions worth reading, in order.

    Left out: the frames that enclose the whole measurement (the program's and the event
    loop's: at least 99 % of the total), callgrind's copies for recursion levels
    (``name'2``), and entries without an object file or name (``callgrind_annotate`` lists
    inlined header copies of CPython's call functions beside the real ones).
    """
    rows = [
        c
        for c in costs
        if c.ir < WHOLE_SHARE * total
        and not re.search(r"'\d+$", c.function)
        and c.obj not in ("", "???")
        and not c.function.startswith("0x")
    ]
    return rows[:top]


# --------------------------------------------------------------------------
# Callgrind: driving it
# --------------------------------------------------------------------------


def valgrind_missing(breakdown: bool) -> list[str]:
    tools = ["valgrind", "callgrind_control", *(["callgrind_annotate"] if breakdown else [])]
    return [tool for tool in tools if shutil.which(tool) is None]


def valgrind_argv(argv: Sequence[str], dumps: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={dumps}/callgrind.out.%p",
        *argv,
    ]


def control(action: str, pid: int) -> None:
    """callgrind_control ACTION PID: always for one pid (without one it acts on every run)."""
    if pid <= 0:
        raise MeasureError(f"no pid for callgrind_control {action}")
    code, out = run_capture(["callgrind_control", action, str(pid)], CONTROL_TIMEOUT_S)
    if code or "OK" not in out:
        raise MeasureError(f"callgrind_control {action} {pid} (exit {code}): {last_line(out)}")


def dump_files(dumps: Path, pid: int) -> dict[int, Path]:
    """part number -> file of the dumps callgrind wrote for pid."""
    files: dict[int, Path] = {}
    for path in dumps.glob(f"callgrind.out.{pid}.*"):
        part = path.name.rsplit(".", 1)[1]
        if part.isdigit():
            files[int(part)] = path
    return files


def dump(pid: int, dumps: Path) -> Path:
    """Dump pid's counters (callgrind zeroes them after a dump); returns the new file."""
    before = set(dump_files(dumps, pid))
    control("-d", pid)
    deadline = time.monotonic() + CONTROL_TIMEOUT_S
    while time.monotonic() < deadline:
        new = {part: path for part, path in dump_files(dumps, pid).items() if part not in before}
        if new:
            path = new[max(new)]
            with contextlib.suppress(OSError):
                if "\ntotals:" in path.read_text(errors="replace"):
                    return path
        time.sleep(0.1)
    raise MeasureError(f"callgrind dump of pid {pid} did not appear in {dumps}")


def zero(pid: int, dumps: Path) -> None:
    """Zero pid's counters: a dump that is thrown away, then ``callgrind_control -z``.

    valgrind 3.19's zero resets the event counter (the next dump's summary: line) but leaves
    part of the per-function costs gathered since the last dump in place: the next dump's
    totals: line then exceeded summary: by 0.2-0.5M Ir here. A dump just before the zero
    clears them: both lines then agree to a few instructions, and the per-function costs
    (the breakdown) cover only what follows.
    """
    dump(pid, dumps).unlink()
    control("-z", pid)


def tcp_inodes(table: str, server_port: int, client_ports: set[int]) -> set[int]:
    """Socket inodes of the server ends of our connections in a /proc/net/tcp[6] table."""
    inodes: set[int] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if local_port == server_port and remote_port in client_ports and fields[9] != "0":
            inodes.add(int(fields[9]))
    return inodes


def socket_holders(pids: Sequence[int], inodes: set[int]) -> list[int]:
    """The pids among pids holding a socket with one of these inodes."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders: list[int] = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                        holders.append(pid)
                        break
    return holders


def serving_pid(sid: int, port: int, head: bytes) -> int:
    """The process of session sid that serves our connections (the worker): the one that
    holds the server end of a keep-alive connection we hold open."""
    with socket.create_connection((HOST, port), timeout=RESPONSE_TIMEOUT_S) as sock:
        sock.settimeout(RESPONSE_TIMEOUT_S)
        sock.sendall(head)
        buf = b""
        while not keepalive_response_done(buf):
            data = sock.recv(65536)
            if not data:
                raise MeasureError("the server closed the probe connection")
            buf += data
        client_port = int(sock.getsockname()[1])
        inodes: set[int] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                inodes |= tcp_inodes(Path(table).read_text(), port, {client_port})
        holders = socket_holders(run.session_pids(sid), inodes)
    if len(holders) != 1:
        raise MeasureError(f"expected one process serving the connection, found {holders or 'none'}")
    return holders[0]


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------


@dataclass
class Cell:
    shape: str
    n: int = 0
    ir: int = 0
    totals: int | None = None
    seconds: float = 0.0
    error: str = ""
    dump: Path | None = None

    @property
    def k(self) -> float:
        return per_request_k(self.ir, self.n)


@dataclass
class ServerRun:
    name: str
    label: str
    pid: int = 0
    error: str = ""
    idle_ir_per_s: float | None = None
    cells: dict[str, Cell] = field(default_factory=dict)
    breakdown: list[FunctionCost] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)
    breakdown_error: str = ""


def server_command(name: str, port: int, rapidwsgi_python: str) -> list[str]:
    if name == FLOOR:
        return [rapidwsgi_python, str(APPS_DIR / "uvloop_floor.py"), HOST, str(port)]
    values = {"port": str(port), "bind": f"{HOST}:{port}", "sock": "", "target": APP_TARGET, "workers": "1"}
    return peers.server_argv(peers.SERVER_BY_NAME[name], "http", values, rapidwsgi_python)


@contextlib.contextmanager
def under_callgrind(
    argv: Sequence[str], dumps: Path, cpus: str, logfile: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start argv under callgrind in its own session; always stop it (by its process group)."""
    pin = ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []
    with logfile.open("ab") as sink:
        proc = subprocess.Popen(
            [*pin, *valgrind_argv(argv, dumps)],
            cwd=APPS_DIR,
            env=run.server_env(dumps),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        run.stop_server(proc)


@dataclass(frozen=True)
class Plan:
    servers: tuple[str, ...]
    shapes: tuple[str, ...]
    keepalive_n: int
    new_n: int
    warmup: int
    conns: int
    breakdown: bool
    top: int
    rapidwsgi_python: str
    server_cpus: str
    phase_timeout: float
    start_timeout: float

    def n(self, shape: str) -> int:
        return self.keepalive_n if SHAPE_BY_NAME[shape].keepalive else self.new_n


async def measure_shape(plan: Plan, shape: str, port: int, pid: int, dumps: Path) -> Cell:
    cell = Cell(shape, n=plan.n(shape))
    head = request_head(shape, port)
    timeout = plan.phase_timeout
    if SHAPE_BY_NAME[shape].keepalive:
        client = KeepAlive(port, head, plan.conns)
        try:
            await bounded(client.open(), timeout, "opening the connections")
            await bounded(client.send(plan.warmup), timeout, "warm-up")
            await asyncio.sleep(SETTLE_S)
            zero(pid, dumps)
            cell.seconds = await bounded(client.send(cell.n), timeout, f"{cell.n} requests")
            await asyncio.sleep(SETTLE_S)
            cell.dump = dump(pid, dumps)
        finally:
            client.close()
    else:
        await bounded(new_connections(port, head, plan.warmup, plan.conns), timeout, "warm-up")
        await asyncio.sleep(SETTLE_S)
        zero(pid, dumps)
        cell.seconds = await bounded(
            new_connections(port, head, cell.n, plan.conns), timeout, f"{cell.n} connections"
        )
        await asyncio.sleep(SETTLE_S)
        cell.dump = dump(pid, dumps)
    found = parse_dump_totals(cell.dump.read_text(errors="replace"))
    cell.ir, cell.totals = found.ir, found.totals
    return cell


def idle_cost(pid: int, dumps: Path) -> float:
    """Instructions per second the worker spends with no traffic (timers, polling)."""
    time.sleep(SETTLE_S)  # the probe connection's close
    zero(pid, dumps)
    time.sleep(IDLE_S)
    path = dump(pid, dumps)
    ir = parse_dump_totals(path.read_text(errors="replace")).ir
    path.unlink()
    return ir / IDLE_S


def annotate(path: Path) -> list[FunctionCost]:
    code, out = run_capture(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no", str(path)],
        ANNOTATE_TIMEOUT_S,
    )
    if code:
        raise MeasureError(f"callgrind_annotate (exit {code}): {last_line(out)}")
    return parse_annotate(out)


def measure_server(name: str, label: str, plan: Plan, dumps: Path) -> ServerRun:
    result = ServerRun(name, label)
    port = free_port()
    argv = server_command(name, port, plan.rapidwsgi_python)
    logfile = dumps / f"{name}.log"
    log(f"{name}: {' '.join(argv)} (under callgrind)")
    with under_callgrind(argv, dumps, plan.server_cpus, logfile) as proc:
        ready = run.wait_ready(proc, run.get_check(port, "/"), "under callgrind", plan.start_timeout)
        if ready:
            result.error = f"{ready}; log: {last_line(logfile.read_text(errors='replace'))}"
            log(f"  {name} FAILED: {result.error}")
            return result
        try:
            result.pid = serving_pid(proc.pid, port, request_head("keep-alive", port))
            result.idle_ir_per_s = idle_cost(result.pid, dumps)
        except (MeasureError, OSError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            log(f"  {name} FAILED: {result.error}")
            return result
        log(f"  serving process {result.pid}; idle {result.idle_ir_per_s / 1000:,.1f}k Ir/s")
        for shape in plan.shapes:
            cell = Cell(shape, n=plan.n(shape))
            try:
                cell = asyncio.run(measure_shape(plan, shape, port, result.pid, dumps))
            except (MeasureError, OSError, ValueError) as exc:
                cell.error = f"{type(exc).__name__}: {exc}"
            result.cells[shape] = cell
            if cell.error:
                log(f"  {shape}: FAILED {cell.error}")
                if proc.poll() is not None:
                    log(f"  {name} exited: {last_line(logfile.read_text(errors='replace'))}")
                    break
                continue
            log(
                f"  {shape}: {fmt_k(cell.k)} instructions/request "
                f"({cell.ir:,} Ir / {cell.n:,} in {cell.seconds:.1f}s)"
            )
        conn = result.cells.get("new-conn")
        if plan.breakdown and name in BREAKDOWN_SERVERS and conn and conn.dump and not conn.error:
            try:
                result.breakdown = breakdown_rows(annotate(conn.dump), conn.ir, plan.top)
                result.objects = self_by_object(conn.dump.read_text(errors="replace"))
            except MeasureError as exc:
                result.breakdown_error = str(exc)
    return result


# --------------------------------------------------------------------------
# The report (pure)
# --------------------------------------------------------------------------


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if cell.error:
        return "failed"
    return fmt_k(cell.k)


def breakdown_section(res: ServerRun) -> list[str]:
    """Where a new connection's instructions go: self cost by object, top inclusive functions."""
    conn = res.cells["new-conn"]
    lines = [f"## {res.label}: a new connection per request", ""]
    if res.breakdown_error:
        return [*lines, f"failed: {res.breakdown_error}"]

    def per(ir: int) -> str:
        return fmt_k(ir / conn.n / 1000.0)

    def share(ir: int) -> str:
        return f"{100.0 * ir / conn.ir:.1f}" if conn.ir else "-"

    lines += [
        f"Self cost by object file (the cost lines of the dump, divided by N = {conn.n:,}; the whole: "
        f"{fmt_k(conn.k)} per request). libpython's share is the interpreter's work for whoever "
        "called it (uvloop's Cython, the server's code, the app).",
        "",
        "| k Ir / request | % | object |",
        "|---:|---:|---|",
        *(
            f"| {per(ir)} | {share(ir)} | {obj} |"
            for obj, ir in sorted(res.objects.items(), key=lambda item: -item[1])
            if ir >= conn.ir / 1000
        ),
        "",
        (
            "Top inclusive functions (`callgrind_annotate --inclusive=yes`, divided by N), without "
            "the frames around the whole measurement (the program, the event loop: >= 99 %), "
            "recursion copies (`'2`) and entries without an object file:"
        ),
        "",
        "| k Ir / request | % | function | object |",
        "|---:|---:|---|---|",
    ]
    for fn in res.breakdown:
        function = fn.function.replace("|", "\\|")
        lines.append(f"| {per(fn.ir)} | {share(fn.ir)} | `{function}` | {fn.obj} |")
    return lines


def render_markdown(
    results: Sequence[ServerRun], plan: Plan, machine: dict[str, str], extra_notes: Sequence[str] = ()
) -> str:
    shapes = [SHAPE_BY_NAME[s] for s in plan.shapes]
    lines = [
        "# Instructions per request (callgrind, user space)",
        "",
        (
            f"Machine: nproc {machine['nproc']}, {machine['cpu']}, Python {machine['python']}, "
            f"{machine['valgrind']}, Linux {machine['kernel']}; {machine['date']}. "
            f"rapidwsgi and the uvloop floor: {machine['rapidwsgi']}."
        ),
        "",
        (
            "Thousands of instructions (Ir) per request of the serving process (the worker: "
            "one process, or rapidwsgi's and granian's one worker), the hello app: the total Ir "
            f"of the callgrind dump covering exactly N requests, divided by N (after a warm-up of "
            f"{plan.warmup:,} requests; counters zeroed before and dumped after the N). "
            f"N = {plan.keepalive_n:,} keep-alive, {plan.new_n:,} new connections; {plan.conns} "
            "connections, one request in flight each. Kernel time is not counted; every thread "
            "of the process is (granian runs several)."
        ),
        "",
        "| server | " + " | ".join(s.label for s in shapes) + " |",
        "|---|" + "---:|" * len(shapes),
    ]
    for res in results:
        cells = [cell_text(res.cells.get(s.name)) if not res.error else "failed" for s in shapes]
        lines.append(f"| {res.label} | " + " | ".join(cells) + " |")
    notes = list(extra_notes)
    for res in results:
        if res.error:
            notes.append(f"{res.name}: {res.error}")
            continue
        for cell in res.cells.values():
            if cell.error:
                notes.append(f"{res.name} {cell.shape}: {cell.error}")
            elif cell.totals is not None and abs(cell.totals - cell.ir) > 0.01 * cell.ir:
                notes.append(
                    f"{res.name} {cell.shape}: the dump's totals ({cell.totals:,}) and summary "
                    f"({cell.ir:,}) differ by more than 1%"
                )
    idle = [
        f"{res.name} {res.idle_ir_per_s / 1000:,.1f}k" for res in results if res.idle_ir_per_s is not None
    ]
    if idle:
        notes.append(
            "idle cost of the serving process (Ir per second with no traffic: timers, polling): "
            + ", ".join(idle)
        )
    lines += ["", *(f"- {note}" for note in notes)]
    for res in results:
        if not (res.breakdown or res.breakdown_error):
            continue
        lines += ["", *breakdown_section(res)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------


BUILD_SCRIPT = """\
import importlib.util, os, time
import rapidwsgi, rapidwsgi.connection as c, uvloop
build = "mypyc" if c.__file__.endswith((".so", ".pyd")) else "pure Python"
if importlib.util.find_spec("rapidwsgi._cfast"):
    build += " + _cfast"
where = os.path.dirname(rapidwsgi.__file__)
files = [os.path.join(d, f) for d, _, names in os.walk(where) if "__pycache__" not in d for f in names]
files += [os.path.join(os.path.dirname(where), f) for f in os.listdir(os.path.dirname(where))
          if f.startswith("rapidwsgi_native")]
newest = max(os.path.getmtime(f) for f in files)  # a reinstall, or one extension rebuilt
when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(newest))
print(rapidwsgi.__version__, build, where, when, sep="|")
"""


@dataclass(frozen=True)
class Build:
    version: str
    build: str  # mypyc or pure Python, "+ _cfast" when the C request path is there
    where: str
    installed: str  # the newest file of the installed package


def rapidwsgi_build(python: str) -> Build:
    """What rapidwsgi the given python runs; raises MeasureError when it cannot."""
    code, out = run_capture([python, "-c", BUILD_SCRIPT], 120, cwd=Path(tempfile.gettempdir()))
    fields = last_line(out).split("|")
    if code or len(fields) != 4:
        raise MeasureError(f"{python} cannot import rapidwsgi and uvloop: {last_line(out)}")
    return Build(*fields)


def labels(servers: Sequence[str], rapidwsgi_python: str, build: Build) -> dict[str, str]:
    versions = peers.peer_versions(rapidwsgi_python)
    out: dict[str, str] = {}
    for name in servers:
        if name == FLOOR:
            out[name] = f"uvloop floor (uvloop {versions.get('uvloop', '?')}, no parsing)"
        elif name == "rapidwsgi":
            out[name] = f"rapidwsgi {build.version} ({build.build}, --workers 1)"
        else:
            spec = peers.SERVER_BY_NAME[name]
            version = versions.get(spec.dists[0], "?")
            one = ", 1 worker" if spec.multiprocess else ""
            out[name] = f"{spec.label} {version}{one}"
    return out


def machine_info(nproc: int, rapidwsgi_python: str, build: Build) -> dict[str, str]:
    _, python = run_capture([rapidwsgi_python, "-c", "import platform; print(platform.python_version())"], 60)
    _, valgrind = run_capture(["valgrind", "--version"], 60)
    return {
        "nproc": str(nproc),
        "cpu": run.cpu_model(),
        "python": last_line(python),
        "valgrind": last_line(valgrind),
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rapidwsgi": f"{build.where} (installed {build.installed})",
    }


def split_names(value: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) or '(none)'}; known: {', '.join(known)}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=KEEPALIVE_N, help="requests per keep-alive shape")
    parser.add_argument("--n-new", type=int, default=NEW_CONN_N, help="requests (connections) for new-conn")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="requests before the counters are zeroed")
    parser.add_argument("--conns", type=int, default=CONNS, help="connections (or connections at a time)")
    servers = (*peers.ALL_SERVERS, FLOOR)
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS), help=f"of {', '.join(servers)}")
    parser.add_argument("--shapes", default=",".join(SHAPE_BY_NAME), help=f"of {', '.join(SHAPE_BY_NAME)}")
    parser.add_argument("--breakdown", action="store_true", help="top inclusive functions per new connection")
    parser.add_argument("--top", type=int, default=TOP, help="functions in each breakdown")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument(
        "--rapidwsgi-python",
        default=sys.executable,
        help="runs rapidwsgi and the uvloop floor (default: this)",
    )
    parser.add_argument(
        "--install-rapidwsgi",
        action="store_true",
        help="install this checkout's rapidwsgi into the peers venv (as run.py does) and run it from there",
    )
    parser.add_argument("--venv", type=Path, help="the peers virtualenv (default bench/.venv-peers)")
    parser.add_argument("--dumps", type=Path, help="keep the callgrind dumps and server logs here")
    parser.add_argument("--phase-timeout", type=float, default=PHASE_TIMEOUT_S, help="seconds per phase")
    parser.add_argument("--start-timeout", type=float, default=START_TIMEOUT_S, help="seconds to answer")
    args = parser.parse_args(argv)
    args.server_names = split_names(args.servers, servers, "server")
    args.shape_names = split_names(args.shapes, tuple(SHAPE_BY_NAME), "shape")
    if min(args.n, args.n_new, args.conns) < 1 or args.warmup < 0:
        parser.error("-n, --n-new and --conns must be positive, --warmup not negative")
    return args


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = valgrind_missing(args.breakdown)
    if missing:
        log(f"missing {', '.join(missing)}: {VALGRIND_HINT}")
        return 2
    if args.venv:
        peers.set_venv(args.venv)
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    server_cpus = ""
    with contextlib.suppress(SystemExit):  # fewer than 2 cores: nothing pinned
        server_cpus, load_cpus = run.split_cpus(1)
        run.pin_self(load_cpus)
    plan = Plan(
        servers=args.server_names,
        shapes=args.shape_names,
        keepalive_n=args.n,
        new_n=args.n_new,
        warmup=args.warmup,
        conns=args.conns,
        breakdown=args.breakdown,
        top=args.top,
        rapidwsgi_python=args.rapidwsgi_python,
        server_cpus=server_cpus,
        phase_timeout=args.phase_timeout,
        start_timeout=args.start_timeout,
    )
    signal.signal(signal.SIGTERM, interrupt)
    peer_names = [s for s in plan.servers if s != FLOOR]
    if args.install_rapidwsgi:
        reasons = peers.prepare([*peer_names, "rapidwsgi"], [], "")
        plan = replace(plan, rapidwsgi_python=str(peers.venv_python()))
    else:
        reasons = peers.prepare(peer_names, [], plan.rapidwsgi_python)
    skipped = peers.server_skips(peer_names, reasons)
    try:
        build = rapidwsgi_build(plan.rapidwsgi_python)
    except MeasureError as exc:
        log(str(exc))
        return 2
    names = labels(plan.servers, plan.rapidwsgi_python, build)
    results: list[ServerRun] = []
    with contextlib.ExitStack() as stack:
        if args.dumps:
            dumps = args.dumps.resolve()
            dumps.mkdir(parents=True, exist_ok=True)
        else:
            dumps = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="instructions-")))
        try:
            for name in plan.servers:
                if name in skipped:
                    results.append(ServerRun(name, names[name], error=f"not installed: {skipped[name]}"))
                    continue
                results.append(measure_server(name, names[name], plan, dumps))
        except KeyboardInterrupt:
            log("interrupted: the running server was stopped; the table has what was measured")
        notes: list[str] = []
        with contextlib.suppress(MeasureError):
            after = rapidwsgi_build(plan.rapidwsgi_python)
            if after != build:
                notes.append(
                    f"rapidwsgi changed during the run: now {after.build}, installed {after.installed}"
                )
        text = render_markdown(results, plan, machine_info(nproc, plan.rapidwsgi_python, build), notes)
    print(text, end="")
    if args.out:
        write_atomic(args.out, text)
        log(f"wrote {args.out}")
    measured = any(not c.error for r in results for c in r.cells.values())
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
