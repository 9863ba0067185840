"""Keep-alive fairness probe: the uWSGI traps described in ../shared/BENCH-NOTES.md.

Twenty keep-alive connections for one second from a plain Python client, counting the
responses per connection and the closes: a server that serves some connections and
starves the others, or that closes keep-alive connections without announcing it, is
flagged (wrk would count a read error per response although the responses arrived).
"""

from __future__ import annotations

import re
import selectors
import socket
import statistics
import time
from dataclasses import dataclass
from typing import cast

from common import HOST, Fairness

FAIRNESS_CONNS = 20
FAIRNESS_SECONDS = 1.0
FAIRNESS_MIN_SHARE = 0.5


def chunked_end(buf: bytes, pos: int) -> int | None:
    """End offset of a chunked body starting at pos (no trailers), or None."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            return pos + 2 if len(buf) >= pos + 2 else None
        if len(buf) < pos + size + 2:
            return None
        pos += size + 2


def response_end(buf: bytes) -> tuple[int, bool] | None:
    """(length of the first complete response in buf, announces close) or None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end].decode("latin-1").lower()
    announces_close = bool(re.search(r"^connection:\s*close", head, re.MULTILINE))
    length = re.search(r"^content-length:\s*(\d+)", head, re.MULTILINE)
    body_start = head_end + 4
    if length:
        end = body_start + int(length.group(1))
        return (end, announces_close) if len(buf) >= end else None
    if re.search(r"^transfer-encoding:.*chunked", head, re.MULTILINE):
        chunk_end = chunked_end(buf, body_start)
        return (chunk_end, announces_close) if chunk_end is not None else None
    raise ValueError("response has neither Content-Length nor chunked encoding")


@dataclass
class ProbeConn:
    sock: socket.socket
    buf: bytes = b""
    last_announced_close: bool = False


def probe_connect(port: int, sel: selectors.BaseSelector, slot: int, request: bytes) -> None:
    sock = socket.create_connection((HOST, port), timeout=2.0)
    sock.sendall(request)
    sock.setblocking(False)
    sel.register(sock, selectors.EVENT_READ, (slot, ProbeConn(sock)))


def probe_read(
    key: selectors.SelectorKey,
    sel: selectors.BaseSelector,
    port: int,
    request: bytes,
    counts: list[int],
    closes: list[int],
) -> None:
    slot, conn = cast(tuple[int, ProbeConn], key.data)
    try:
        data = conn.sock.recv(65536)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:  # server closed the connection: reconnect like wrk does
        sel.unregister(conn.sock)
        conn.sock.close()
        closes[0] += 1
        closes[1] += 0 if conn.last_announced_close else 1
        probe_connect(port, sel, slot, request)
        return
    conn.buf += data
    while (done := response_end(conn.buf)) is not None:
        conn.buf = conn.buf[done[0] :]
        conn.last_announced_close = done[1]
        counts[slot] += 1
        if not done[1]:
            conn.sock.send(request)


def fairness_flags(counts: list[int], closes: int, unannounced: int) -> list[str]:
    flags: list[str] = []
    median = statistics.median(counts)
    if min(counts) < FAIRNESS_MIN_SHARE * median:
        flags.append(
            f"unfair keep-alive service: per-connection responses min {min(counts)}, "
            f"median {median:.0f}, max {max(counts)}"
        )
    if unannounced:
        flags.append(
            f"closed {unannounced} keep-alive connections without 'Connection: close' "
            "(wrk counts read errors although responses arrived)"
        )
    elif closes:
        flags.append(f"no keep-alive: closed connections {closes} times (announced)")
    return flags


def fairness_probe(port: int, path: str) -> Fairness:
    """Drive FAIRNESS_CONNS keep-alive connections for FAIRNESS_SECONDS, count
    responses per connection and closes.  Bounded in time and count."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    counts = [0] * FAIRNESS_CONNS
    closes = [0, 0]
    result = Fairness(
        conns=FAIRNESS_CONNS,
        seconds=FAIRNESS_SECONDS,
        responses=counts,
        closes=0,
        unannounced_closes=0,
        parse_error="",
        flags=[],
    )
    with selectors.DefaultSelector() as sel:
        try:
            for slot in range(FAIRNESS_CONNS):
                probe_connect(port, sel, slot, request)
            deadline = time.monotonic() + FAIRNESS_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(timeout=left):
                    probe_read(key, sel, port, request, counts, closes)
        except (OSError, ValueError) as exc:
            result["parse_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            for key in list(sel.get_map().values()):
                cast(socket.socket, key.fileobj).close()
    result["closes"], result["unannounced_closes"] = closes
    if not result["parse_error"]:
        result["flags"] = fairness_flags(counts, closes[0], closes[1])
    return result
