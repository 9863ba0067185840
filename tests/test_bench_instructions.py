"""bench/instructions.py without valgrind: its parsers, its arithmetic, its report, and its
client and worker lookup against the uvloop floor app run natively (about a second)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


def instructions() -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return __import__("instructions")


DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  python -m rapidwsgi --workers 1 hello:app
part: 3

desc: Trigger: dump
positions: line
events: Ir
summary: 1100

ob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6
fl=(1) ./malloc/malloc.c
fn=(1) malloc
10 100
+1 200
cob=(2) /site-packages/uvloop/loop.cpython-311-x86_64-linux-gnu.so
cfl=(2) /project/uvloop/loop.c
cfn=(2) __pyx_f_6uvloop_4loop___uv_stream_on_read
calls=3 20
11 5000
ob=(2)
fl=(2)
fn=(2)
20 700
ob=(1)
fn=(1)
* 100
totals: 1100
"""

ANNOTATE = """--------------------------------------------------------------------------------
Profile data file 'callgrind.out.4242.3' (creator: callgrind-3.19.0)
--------------------------------------------------------------------------------
Events recorded:  Ir
Auto-annotation:  off

--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,000,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                  file:function
--------------------------------------------------------------------------------
1,500,000 (150.0%)  /b/Objects/call.c:PyObject_Vectorcall'2 [/lib/libpython3.11.so.1.0]
1,000,000 (100.0%)  ./csu/../csu/libc-start.c:__libc_start_main@@GLIBC_2.34 [/usr/lib/libc.so.6]
  999,800 (99.98%)  /project/src/unix/core.c:uv_run [/site/uvloop/loop.cpython-311-x86_64-linux-gnu.so]
  600,000 (60.00%)  /project/src/unix/linux.c:uv__io_poll [/site/uvloop/loop.cpython-311-x86_64-linux-gnu.so]
  500,000 (50.00%)  /b/Include/internal/pycore_call.h:PyObject_Vectorcall
  400,000 (40.00%)  ???:tokio::runtime::task::raw::poll [/site/granian/_granian.abi3.so]
  300,000 (30.00%)  ???:0x0000000004936718 [???]
   90,000 ( 9.00%)  /b/native.c:CPyDef_connection___HTTPConnection___data_received [/site/rapidwsgi_native.so]
"""

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 333 1
   3: 0100007F:1F90 0100007F:C351 01 00000000:00000000 00:00000000 00000000     0        0 444 1
"""


def test_dump_totals_and_per_request() -> None:
    ins = instructions()
    found = ins.parse_dump_totals(DUMP)
    assert (found.summary, found.totals, found.ir) == (1100, 1100, 1100)
    only_totals = ins.parse_dump_totals("events: Ir\ntotals: 42\n")
    assert (only_totals.summary, only_totals.ir) == (None, 42)
    two_events = ins.parse_dump_totals("events: Dr Ir\nsummary: 7 9000\ntotals: 7 9100\n")
    assert (two_events.ir, two_events.totals) == (9000, 9100)
    with pytest.raises(ValueError):
        ins.parse_dump_totals("events: Ir\n")
    assert ins.per_request_k(42_500_000, 1000) == pytest.approx(42.5)
    with pytest.raises(ValueError):
        ins.per_request_k(1, 0)
    assert ins.fmt_k(42.46) == "42.5k"
    assert ins.fmt_k(0.2) == "200"


def test_self_cost_by_object_adds_up_to_totals() -> None:
    ins = instructions()
    by_object = ins.self_by_object(DUMP)
    # the call's inclusive 5000 is not self cost; cob= defines id 2 for the later ob=(2)
    assert by_object == {"libc.so.6": 400, "loop.cpython-311-x86_64-linux-gnu.so": 700}
    assert sum(by_object.values()) == ins.parse_dump_totals(DUMP).totals


def test_annotate_lines_and_breakdown_rows() -> None:
    ins = instructions()
    costs = ins.parse_annotate(ANNOTATE)
    assert costs[0] == ins.FunctionCost(1_500_000, "PyObject_Vectorcall'2", "libpython3.11.so.1.0")
    assert ins.FunctionCost(500_000, "PyObject_Vectorcall", "") in costs
    assert len(costs) == 8  # PROGRAM TOTALS is not a function
    rows = ins.breakdown_rows(costs, 1_000_000, 10)
    assert [(r.function, r.obj) for r in rows] == [
        ("uv__io_poll", "loop.cpython-311-x86_64-linux-gnu.so"),
        ("tokio::runtime::task::raw::poll", "_granian.abi3.so"),
        ("CPyDef_connection___HTTPConnection___data_received", "rapidwsgi_native.so"),
    ]
    assert len(ins.breakdown_rows(costs, 1_000_000, 1)) == 1


def test_tcp_inodes_of_our_connections() -> None:
    ins = instructions()
    assert ins.tcp_inodes(TCP, 0x1F90, {0xC350}) == {222}
    assert ins.tcp_inodes(TCP, 0x1F90, {0xC350, 0xC351}) == {222, 444}
    assert ins.tcp_inodes(TCP, 0xC350, {0x1F90}) == {333}


def test_response_checks() -> None:
    ins = instructions()
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!"
    assert not ins.keepalive_response_done(ok[:20])
    assert not ins.keepalive_response_done(ok[:-1])
    assert ins.keepalive_response_done(ok)
    for bad in (
        ok + b"x",
        ok.replace(b"200 OK", b"500 Oops"),
        ok.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
    ):
        with pytest.raises(ins.BadResponse):
            ins.keepalive_response_done(bad)
    ins.check_closed_response(ok)
    ins.check_closed_response(b"HTTP/1.0 200 OK\r\n\r\nHello, world!")  # body to the close
    with pytest.raises(ins.BadResponse):
        ins.check_closed_response(ok[:-3])
    assert ins.request_head("new-conn", 8000).startswith(b"GET / HTTP/1.0\r\nHost: 127.0.0.1:8000\r\n")
    assert ins.request_head("keep-alive", 8000) == b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
    assert b"Cookie: " in ins.request_head("browser", 8000)


def plan(ins: Any) -> Any:
    return ins.Plan(
        servers=("rapidwsgi", "bjoern"),
        shapes=("keep-alive", "new-conn"),
        keepalive_n=20_000,
        new_n=5_000,
        warmup=2000,
        conns=20,
        breakdown=True,
        top=5,
        rapidwsgi_python=sys.executable,
        server_cpus="0",
        phase_timeout=60.0,
        start_timeout=60.0,
    )


def test_markdown_table_notes_and_breakdown() -> None:
    ins = instructions()
    rapid = ins.ServerRun("rapidwsgi", "rapidwsgi 0.1.0 (mypyc)", pid=7, idle_ir_per_s=50_000.0)
    rapid.cells["keep-alive"] = ins.Cell("keep-alive", n=20_000, ir=850_000_000, totals=850_000_004)
    rapid.cells["new-conn"] = ins.Cell("new-conn", n=5_000, ir=485_000_000, totals=485_000_000)
    rapid.objects = {"libpython3.11.so.1.0": 300_000_000, "loop.so": 185_000_000}
    rapid.breakdown = [ins.FunctionCost(240_000_000, "uv__io_poll", "loop.so")]
    bjoern = ins.ServerRun("bjoern", "bjoern 3.2.2")
    bjoern.cells["keep-alive"] = ins.Cell("keep-alive", n=20_000, ir=448_000_000, totals=470_000_000)
    bjoern.cells["new-conn"] = ins.Cell("new-conn", n=5_000, error="MeasureError: no complete response")
    machine = {
        "nproc": "2",
        "cpu": "AMD EPYC",
        "python": "3.11.7",
        "valgrind": "valgrind-3.19.0",
        "kernel": "6.18",
        "date": "2026-12-02 20:00 UTC",
        "rapidwsgi": "/x (installed then)",
    }
    md = ins.render_markdown([rapid, bjoern], plan(ins), machine, ["a note"])
    assert "nproc 2, AMD EPYC, Python 3.11.7" in md
    assert "| rapidwsgi 0.1.0 (mypyc) | 42.5k | 97.0k |" in md
    assert "| bjoern 3.2.2 | 22.4k | failed |" in md
    assert "- a note" in md
    assert "bjoern new-conn: MeasureError: no complete response" in md
    assert "bjoern keep-alive: the dump's totals (470,000,000) and summary (448,000,000)" in md
    assert "rapidwsgi keep-alive: the dump's totals" not in md
    assert "rapidwsgi 50.0k" in md
    assert "## rapidwsgi 0.1.0 (mypyc): a new connection per request" in md
    assert "| 60.0k | 61.9 | libpython3.11.so.1.0 |" in md
    assert "| 48.0k | 49.5 | `uv__io_poll` | loop.so |" in md


def test_missing_valgrind_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ins = instructions()
    monkeypatch.setattr(ins.shutil, "which", lambda name: None)
    assert ins.main(["--servers", "uvloop-floor"]) == 2
    assert "apt-get install -y valgrind" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ins.parse_args(["--servers", "nope"])


def test_client_and_worker_lookup_against_the_uvloop_floor() -> None:
    pytest.importorskip("uvloop")
    ins = instructions()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "apps" / "uvloop_floor.py"), "127.0.0.1", str(port)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the uvloop floor did not start"
                time.sleep(0.05)
        assert ins.serving_pid(proc.pid, port, ins.request_head("keep-alive", port)) == proc.pid

        async def drive() -> None:
            client = ins.KeepAlive(port, ins.request_head("browser", port), 5)
            await client.open()
            try:
                await ins.bounded(client.send(203), 30, "keep-alive")
            finally:
                client.close()
            head = ins.request_head("new-conn", port)
            await ins.bounded(ins.new_connections(port, head, 41, 7), 30, "new connections")

        asyncio.run(drive())
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
