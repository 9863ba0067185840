"""Fuzz targets for the sans-IO uwsgi and FastCGI decoders, and the checks they share.

Run the fuzzer (atheris; libFuzzer options are passed through)::

    RAPIDWSGI_TEST_SOURCE=1 python tests/fuzz_gateway.py -max_total_time=180 [corpus_dir ...]

Without a corpus directory, one is created in a temporary directory and seeded with
valid and invalid packets of both protocols (:func:`seed_inputs`). The first bytes of an
input configure the run (see :func:`fuzz_one_input`); the rest is the byte stream.

The checking logic (:func:`drive`, :func:`check_stream`) is shared with
``tests/test_gateway_protocols.py`` (hypothesis, so the properties run without atheris).
Properties checked on every input:

* only :class:`RemoteProtocolError` (and subclasses) escape ``next_event()``, with a
  status in :data:`ALLOWED_STATUSES`; after one, ``next_event()`` raises again;
* the decoder never loops: ``next_event()`` calls are bounded by the input size;
* events are well formed: Data only inside a body, never empty, bodies exactly as long
  as a declared CONTENT_LENGTH, the response side accepts every complete request (and
  an error response after a refused one);
* the input fed whole, split at arbitrary points, or byte by byte gives the same events
  (consecutive Data merged) and the same final outcome.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make the imports work
    _ROOT = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(_ROOT / "src"), str(_ROOT)]

from rapidwsgi.errors import RemoteProtocolError
from rapidwsgi.events import NEED_DATA, PAUSED, ConnectionClosed, Data, EndOfMessage, Reply, Request, Response
from rapidwsgi.protocols._state import DONE, ERROR, IDLE, MUST_CLOSE, SEND_BODY
from rapidwsgi.protocols.base import Limits, ServerConnection
from rapidwsgi.protocols.fastcgi import (
    BEGIN_REQUEST,
    GET_VALUES,
    KEEP_CONN,
    PARAMS,
    RESPONDER,
    STDIN,
    FastCGIConnection,
    encode_pairs,
    record,
)
from rapidwsgi.protocols.uwsgi import UwsgiConnection
from tests.fuzz_http1 import run_atheris, split_at

#: Every status a RemoteProtocolError from a gateway decoder may carry.
ALLOWED_STATUSES = frozenset({400, 413, 414, 431})

#: Small limits, so that short inputs reach the limit checks.
SMALL_LIMITS = {"max_line": 40, "max_fields": 4, "max_field_size": 32, "max_body": 64, "max_drain": 32}

PROTOCOLS: dict[str, Callable[[Limits | None], ServerConnection]] = {
    "uwsgi": UwsgiConnection,
    "fastcgi": FastCGIConnection,
}

_OK = Response(200, b"200 OK", b"Content-Type: text/plain\r\n", content_length=2)
_STREAMED = Response(200, b"200 OK", b"")  # no length: close-delimited or records
_BAD = Response(400, b"400 Bad Request", b"", content_length=3)

Summary = tuple[object, ...]


class DecoderLoop(AssertionError):
    """next_event() was called far more often than the input can explain."""


def request_key(r: Request) -> Summary:
    """Everything a Request event carries, as a comparable tuple."""
    extra = tuple(sorted((r.extra or {}).items()))
    return (
        "request",
        r.method,
        r.target,
        r.path,
        r.query,
        r.version,
        tuple(r.headers),
        r.content_length,
        r.chunked,
        r.keep_alive,
        extra,
    )


@dataclass
class Outcome:
    """What a connection made of a byte stream: its events (consecutive Data merged),
    how it ended ("error", "need_data", "paused", "closed") and the error status."""

    events: list[Summary] = field(default_factory=list)
    final: str = ""
    error: RemoteProtocolError | None = None
    calls: int = 0
    responses: int = 0

    @property
    def status(self) -> int | None:
        return None if self.error is None else self.error.status

    def key(self) -> Summary:
        return (tuple(self.events), self.final, self.status)

    def add(self, summary: Summary) -> None:
        if summary[0] == "data" and self.events and self.events[-1][0] == "data":
            self.events[-1] = ("data", self.events[-1][1] + summary[1])  # type: ignore[operator]
        else:
            self.events.append(summary)


@dataclass
class _Body:
    request: Request
    received: int = 0

    @property
    def declared(self) -> int | None:
        """The body length the request declares (its Content-Length), if any."""
        for name, value in self.request.headers:
            if name == b"content-length":
                return int(value)
        return self.request.content_length or None


def drive(
    protocol: str,
    chunks: Sequence[bytes],
    limits: Limits | None = None,
    *,
    eof: bool = True,
    stream_response: bool = False,
) -> Outcome:
    """Feed ``chunks`` (then EOF) to a fresh connection of ``protocol``, acting as the server.

    Each complete request gets a response (``stream_response``: one without a length)
    and, when the connection is reusable, ``start_next_cycle()`` is called. Raises
    AssertionError (or the unexpected exception itself) when a property breaks.
    """
    conn = PROTOCOLS[protocol](limits)
    out = Outcome()
    total = sum(len(c) for c in chunks)
    # Generous: every event but EndOfMessage/PAUSED/NEED_DATA consumes input, and a
    # FastCGI record is at least 8 bytes.
    budget = 4 * (total + len(chunks)) + 16
    body: list[_Body] = []
    for chunk in chunks:
        if not chunk:
            continue
        conn.receive_data(chunk)
        if _pump(conn, out, body, budget, stream_response):
            return out
    if eof:
        conn.receive_data(b"")
        _pump(conn, out, body, budget, stream_response)
    return out


def _pump(conn: ServerConnection, out: Outcome, body: list[_Body], budget: int, stream: bool) -> bool:
    """Process events until the decoder needs data; True once the stream is finished."""
    while True:
        out.calls += 1
        if out.calls > budget:
            raise DecoderLoop(f"{out.calls} next_event() calls")
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            _check_error(conn, exc)
            out.error = exc
            out.final = "error"
            return True
        if event is NEED_DATA:
            out.final = "need_data"
            return False
        if event is PAUSED:
            assert conn.their_state in (DONE, MUST_CLOSE), f"PAUSED in {conn.their_state}"
            out.final = "paused"
            return False
        if isinstance(event, Request):
            assert not body, "Request while a body is pending"
            assert event.content_length >= 0
            out.add(request_key(event))
            if conn.their_state is SEND_BODY:
                assert event.has_body, "a body expected for a request without one"
                body.append(_Body(event))
            else:
                assert conn.their_state in (DONE, MUST_CLOSE)
                _respond(conn, out, stream)
        elif isinstance(event, Data):
            assert body, "Data outside a body"
            assert event.data, "empty Data event"
            current = body[0]
            current.received += len(event.data)
            declared = current.declared
            if declared is not None:
                assert current.received <= declared, f"body longer than its declared {declared} bytes"
            out.add(("data", event.data))
        elif isinstance(event, EndOfMessage):
            assert body, "EndOfMessage outside a body"
            current = body.pop()
            declared = current.declared
            if declared is not None:
                assert current.received == declared, f"body of {current.received} bytes, {declared} declared"
            out.add(("end",))
            _respond(conn, out, stream)
        elif isinstance(event, Reply):
            assert event.data, "empty Reply"
            out.add(("reply", event.data))
        elif isinstance(event, ConnectionClosed):
            assert not body, "ConnectionClosed inside a body"
            out.final = "closed"
            return True
        else:  # pragma: no cover - a new event type needs a rule here
            raise AssertionError(f"unknown event {event!r}")


def _respond(conn: ServerConnection, out: Outcome, stream: bool) -> None:
    """The server's part of a cycle: a complete response, then the next cycle."""
    assert conn.our_state is IDLE
    out.responses += 1
    wire = conn.send_response(_STREAMED if stream else _OK)
    wire += conn.send_data(b"ok")
    wire += conn.send_end()
    assert wire
    if conn.their_state is DONE and conn.our_state is DONE:
        conn.start_next_cycle()
    else:
        assert conn.their_state is MUST_CLOSE or conn.our_state is MUST_CLOSE


def _check_error(conn: ServerConnection, exc: RemoteProtocolError) -> None:
    """After an error nothing more is parsed, and an error response can still be framed."""
    assert exc.status in ALLOWED_STATUSES, f"status {exc.status} not allowed ({exc.reason})"
    assert conn.their_state is ERROR, f"their_state {conn.their_state} after an error"
    for more in (b"\x00" * 16, b""):
        conn.receive_data(more)
        try:
            event = conn.next_event()
        except RemoteProtocolError as again:
            assert again.status == exc.status, f"status changed {exc.status} -> {again.status}"
        else:
            raise AssertionError(f"{event!r} produced after an error")
    if conn.our_state is IDLE:  # what the connection layer does: answer, then close
        conn.send_response(_BAD)
        conn.send_data(b"bad")
        conn.send_end()
        assert not conn.keep_alive


def check_stream(
    protocol: str,
    data: bytes,
    cuts: Sequence[int] = (),
    limits: Limits | None = None,
    *,
    bytewise: bool = False,
    stream_response: bool = False,
) -> Outcome:
    """``data`` fed whole, split at ``cuts`` (and byte by byte if asked) must give the
    same outcome. Returns the outcome of the whole input."""
    whole = drive(protocol, [data], limits, stream_response=stream_response)
    splits = [split_at(data, cuts)]
    if bytewise:
        splits.append([data[i : i + 1] for i in range(len(data))])
    for chunks in splits:
        part = drive(protocol, chunks, limits, stream_response=stream_response)
        sizes = [len(c) for c in chunks]
        assert part.key() == whole.key(), (
            f"{protocol}: split into {sizes} gives {part.key()!r}, whole gives {whole.key()!r}"
        )
    return whole


# ------------------------------------------------------------------------ building inputs


def uwsgi_packet(
    variables: Sequence[tuple[bytes, bytes]], body: bytes = b"", modifier1: int = 0, modifier2: int = 0
) -> bytes:
    """A uwsgi request packet: header, variable block, body."""
    block = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in variables)
    return struct.pack("<BHB", modifier1, len(block), modifier2) + block + body


def fastcgi_request(
    params: Sequence[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    request_id: int = 1,
    keep_conn: bool = False,
    role: int = RESPONDER,
    params_split: int = 0,
    stdin_split: int = 0,
) -> bytes:
    """BEGIN_REQUEST, PARAMS records (cut every ``params_split`` bytes), an empty PARAMS,
    STDIN records (cut every ``stdin_split`` bytes) and an empty STDIN."""
    flags = KEEP_CONN if keep_conn else 0
    out = [record(BEGIN_REQUEST, request_id, struct.pack(">HB5x", role, flags))]
    pairs = encode_pairs(list(params))
    step = params_split or max(len(pairs), 1)
    out += [record(PARAMS, request_id, pairs[i : i + step]) for i in range(0, len(pairs), step)]
    out.append(record(PARAMS, request_id))
    step = stdin_split or max(len(body), 1)
    out += [record(STDIN, request_id, body[i : i + step]) for i in range(0, len(body), step)]
    out.append(record(STDIN, request_id))
    return b"".join(out)


GET_VARS: list[tuple[bytes, bytes]] = [
    (b"REQUEST_METHOD", b"GET"),
    (b"REQUEST_URI", b"/path/x?q=1"),
    (b"QUERY_STRING", b"q=1"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REMOTE_ADDR", b"192.0.2.1"),
    (b"HTTP_HOST", b"example.com"),
]
POST_VARS: list[tuple[bytes, bytes]] = [
    (b"REQUEST_METHOD", b"POST"),
    (b"REQUEST_URI", b"/upload"),
    (b"CONTENT_LENGTH", b"11"),
    (b"CONTENT_TYPE", b"text/plain"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
]


def seed_inputs() -> list[bytes]:
    """Fuzzer seeds (with the configuration prefix of :func:`fuzz_one_input`)."""
    uwsgi = [
        uwsgi_packet(GET_VARS),
        uwsgi_packet(POST_VARS, b"hello world"),
        uwsgi_packet(POST_VARS, b"hello world!!"),
        uwsgi_packet(GET_VARS, modifier1=5),
        uwsgi_packet(GET_VARS)[:9],
        uwsgi_packet([*POST_VARS[:2], (b"CONTENT_LENGTH", b"0")]),
    ]
    fastcgi = [
        fastcgi_request(GET_VARS),
        fastcgi_request(POST_VARS, b"hello world", stdin_split=4),
        fastcgi_request(GET_VARS, keep_conn=True) + fastcgi_request(POST_VARS, b"hello world", request_id=2),
        record(GET_VALUES, 0, encode_pairs([(b"FCGI_MPXS_CONNS", b""), (b"FCGI_MAX_REQS", b"")])),
        record(42, 0, b"x"),
        fastcgi_request(GET_VARS, role=2),
        fastcgi_request(POST_VARS, b"hello world, and more"),
        fastcgi_request([*POST_VARS[:2], (b"CONTENT_LENGTH", b"0")]),  # POST with an empty body
    ]
    seeds = []
    for raw in uwsgi:
        seeds += [b"\x00\x01\x00\x05" + raw, b"\x02\x00" + raw]
    for raw in fastcgi:
        seeds += [b"\x01\x01\x00\x0b" + raw, b"\x03\x00" + raw]
    return seeds


# ------------------------------------------------------------------------ atheris


def fuzz_one_input(raw: bytes) -> None:
    """The fuzz entry point. Input layout: ``config, ncuts, cuts[ncuts] (2 bytes each), payload``.

    ``config`` bit 0 picks FastCGI (else uwsgi); bit 1 :data:`SMALL_LIMITS`; bit 2 also
    feeds the payload byte by byte (short payloads only); bit 3 answers with a streamed
    response (no length).
    """
    if len(raw) < 2:
        return
    config, ncuts = raw[0], raw[1] % 8
    header = 2 + 2 * ncuts
    payload = raw[header:]
    cuts = [int.from_bytes(raw[i : i + 2], "big") for i in range(2, min(header, len(raw)) - 1, 2)]
    protocol = "fastcgi" if config & 1 else "uwsgi"
    limits = Limits(**SMALL_LIMITS) if config & 2 else None
    check_stream(
        protocol,
        payload,
        cuts,
        limits,
        bytewise=bool(config & 4) and len(payload) <= 1024,
        stream_response=bool(config & 8),
    )


def main(argv: list[str]) -> None:
    run_atheris("fuzz_gateway", argv, seed_inputs(), fuzz_one_input)


if __name__ == "__main__":
    main(sys.argv)
