"""Connection timeouts of a real server process: keep-alive, head, body and send.

The server runs with small timeouts (``--keep-alive 1 --header-timeout 1 --body-timeout
1 --send-timeout 2``; its timeout check ticks once per second) in both dispatch modes
and over TCP and unix sockets. Every wait is bounded; nothing here asserts speed, only
that the server gives up on a client, how, and that it keeps serving others meanwhile.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.rawhttp import (
    SERVER_MODES,
    ConnectionClosedError,
    RawConnectionExtras,
    ServerPool,
    assert_still_serving,
    connect,
    get,
    json_of,
    wait_until,
)

TIMEOUTS = ("--keep-alive", "1", "--header-timeout", "1", "--body-timeout", "1", "--send-timeout", "2")
#: Upper bound for a 1-2 s timeout to fire on a server that checks once per second.
GIVE_UP = 8.0


pytestmark = pytest.mark.usefixtures("servers_survive")  # pool: conftest.py


@pytest.fixture
def server(pool: ServerPool, mode: str, transport: str) -> ServerProcess:
    return pool.get(*SERVER_MODES[mode], *TIMEOUTS, transport=transport)


def json_get(server: ServerProcess, path: str) -> dict[str, Any]:
    with connect(server) as conn:
        return json_of(conn.request(get(path)))


def test_idle_keep_alive_connection_is_closed_cleanly(server: ServerProcess) -> None:
    with connect(server) as conn:
        assert conn.request(get("/hello")).status == 200
        data, outcome = conn.read_to_end(GIVE_UP)
        assert data == b""
        assert outcome == "eof", "an idle keep-alive connection must end with FIN, not a reset or never"


def test_client_that_sends_nothing_is_closed(server: ServerProcess) -> None:
    with connect(server) as conn:
        data, outcome = conn.read_to_end(GIVE_UP)
        assert data == b""
        assert outcome in ("eof", "reset"), "a silent connection was kept open"
    assert_still_serving(server)


def test_trickling_request_head_is_answered_408_and_closed(server: ServerProcess) -> None:
    # Slowloris: one byte every 0.2 s of a head that would take ~60 s to complete.
    head = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 300 + b"\r\n\r\n"
    with connect(server) as conn:
        conn.send(head[:1])  # the head starts at once: this is not an idle connection
        sent = 1

        def answered() -> bool:
            nonlocal sent
            if conn.data_within(0.2):
                return True
            conn.send(head[sent : sent + 1])
            sent += 1
            return False

        assert wait_until(answered, GIVE_UP, 0), "the server kept waiting for a trickling head"
        assert sent < len(head)
        response = conn.read_response()
        assert response.status == 408
        assert response.header("connection") == "close"
        rest, outcome = conn.read_to_end(GIVE_UP)
        assert (rest, outcome) == (b"", "eof")
    assert_still_serving(server)


def test_stalled_body_is_answered_408_and_closed(server: ServerProcess, mode: str) -> None:
    requests_before = json_get(server, "/stats")["requests"]
    errors_before = len(json_get(server, "/probes")["read_errors"])
    with connect(server) as conn:
        conn.send(b"POST /read-or-record HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        response = conn.read_response() if conn.data_within(GIVE_UP) else None
        assert response is not None, "the server kept waiting for a stalled body"
        assert response.status == 408
        assert response.header("connection") == "close"
        rest, outcome = conn.read_to_end(GIVE_UP)
        assert rest == b""
        assert outcome in ("eof", "reset")
    requests_after = json_get(server, "/stats")["requests"]
    if mode != "inline":
        # The 408 goes out from the loop as the error reaches the app's read; the app
        # thread records it just after, which a loaded machine can delay past our query.
        wait_until(lambda: len(json_get(server, "/probes")["read_errors"]) > errors_before, GIVE_UP)
    read_errors = json_get(server, "/probes")["read_errors"][errors_before:]
    if mode == "inline":
        # The body is collected before the app runs: the app never saw this request
        # (the one counted request is the /stats call itself, /probes is counted too).
        assert requests_after == requests_before + 2
        assert read_errors == []
    else:
        # The app runs while the body streams in: its read must fail, not hang.
        assert len(read_errors) == 1, read_errors
    assert_still_serving(server)


def test_client_that_stops_reading_is_dropped_and_its_iterable_closed(server: ServerProcess) -> None:
    closed = json_get(server, "/stats")["closed"]
    size = 50 * 1024 * 1024
    with connect(server) as stalled:
        stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        stalled.send(get(f"/stream?n={size // 10_000}&size=10000"))
        time.sleep(0.5)
        # The server stays responsive while the stalled response is pending.
        assert_still_serving(server)
        # Send timeout (2 s) plus the once-per-second check, with a margin: by now the
        # server must have dropped the connection.
        time.sleep(4.5)
        data, outcome = stalled.read_to_end(GIVE_UP)
        assert outcome in ("eof", "reset"), "the server never gave up on a client that stopped reading"
        assert len(data) < size, "the whole response was delivered: the client was never dropped"
    assert wait_until(lambda: json_get(server, "/stats")["closed"] > closed, 3, 0.1), (
        "the dropped response's iterable was never closed"
    )
    assert_still_serving(server)


@pytest.mark.parametrize("start", ["new", "keep-alive"])
def test_timeout_does_not_fire_before_its_configured_time(pool: ServerPool, mode: str, start: str) -> None:
    """A client that sends its request half-way through a 1 s timeout is answered.

    Eight clients start 0.25 s apart and each sends 0.5 s after its start, so the waits
    cover every phase of the server's once-per-second timeout check, twice: a deadline
    computed from a clock that can be up to one check interval stale cuts some of them
    off early. (Deadline bookkeeping is shared by both transports: TCP only.)
    """
    server = pool.get(*SERVER_MODES[mode], *TIMEOUTS)
    clients = 8
    # (when, client, action), in time order: connect at 0.25 * i, request 0.5 s later.
    schedule = sorted(
        [(0.25 * i, i, "start") for i in range(clients)]
        + [(0.25 * i + 0.5, i, "request") for i in range(clients)]
    )
    conns: dict[int, RawConnectionExtras] = {}
    outcomes: dict[int, object] = {}
    origin = time.monotonic()
    with contextlib.ExitStack() as stack:
        for when, client, action in schedule:
            time.sleep(max(origin + when - time.monotonic(), 0))
            if action == "start":
                conns[client] = conn = stack.enter_context(connect(server))
                if start == "keep-alive":
                    assert conn.request(get("/hello")).status == 200
                continue
            try:
                conns[client].send(get("/hello"))
                outcomes[client] = conns[client].read_response().status
            except (ConnectionClosedError, OSError) as exc:
                outcomes[client] = f"closed early ({type(exc).__name__})"
    assert outcomes == dict.fromkeys(range(clients), 200)
