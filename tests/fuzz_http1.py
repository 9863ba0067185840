"""Fuzz target and replay harness for the sans-IO HTTP/1.1 parser.

Run the fuzzer (atheris; libFuzzer options are passed through)::

    python tests/fuzz_http1.py -atheris_runs=100000 [corpus_dir ...]

Without a corpus directory, one is created in a temporary directory and seeded from
``tests/http1_corpus.py``. The input's first bytes configure the run (see
:func:`fuzz_one_input`); the rest is fed to a fresh :class:`H1Connection`.

The checking logic (:func:`drive`, :func:`check_input`) is shared with
``tests/test_http1_fuzz.py`` (hypothesis, so CI exercises it without atheris) and with
``tests/test_http1_corpus.py`` (the corpus replay). Properties checked on every input:

* only :class:`RemoteProtocolError` (and subclasses) escape ``next_event()``, and each
  carries a status in :data:`ALLOWED_STATUSES`;
* after an error, ``next_event()`` raises again, even when more bytes (or EOF) arrive;
* the parser never loops: the number of ``next_event()`` calls is bounded by the input
  size (:class:`ParserLoop` otherwise);
* events are well formed (no empty Data, bodies exactly as long as declared, body events
  only for requests that have a body, the response side accepts each cycle);
* feeding the input whole or split at arbitrary points gives the same events and error.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make the imports work
    _ROOT = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(_ROOT / "src"), str(_ROOT)]

from rapidwsgi.errors import RemoteProtocolError
from rapidwsgi.events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Request,
    Response,
)
from rapidwsgi.protocols.http1 import DONE, ERROR, H1Connection, Limits

#: Every status a RemoteProtocolError may carry.
ALLOWED_STATUSES = frozenset({400, 408, 413, 414, 417, 431, 501, 505})

#: Small limits, so that short fuzz inputs reach the limit checks.
SMALL_LIMITS = {"max_line": 64, "max_fields": 6, "max_field_size": 48, "max_body": 200, "max_drain": 64}

#: A valid request, fed after an error to check that nothing more is parsed.
_PROBE = b"GET / HTTP/1.1\r\nHost: probe.example\r\n\r\n"
_OK = Response(200, b"200 OK", b"", content_length=0)

Field = tuple[bytes, bytes]
RequestKey = tuple[object, ...]


class ParserLoop(AssertionError):
    """next_event() was called far more often than the input can explain."""


def request_key(r: Request) -> RequestKey:
    """Everything a Request event carries, as a comparable tuple."""
    return (
        r.method,
        r.target,
        r.path,
        r.query,
        r.version,
        tuple(r.headers),
        r.authority,
        r.content_length,
        r.chunked,
        r.keep_alive,
        r.expect_continue,
    )


@dataclass
class Message:
    """One request as seen through the events: head, body so far, trailers."""

    request: Request
    body: bytearray = field(default_factory=bytearray)
    trailers: tuple[Field, ...] = ()
    complete: bool = False
    #: Stream offset just after the message (once complete).
    end: int = -1

    def key(self) -> tuple[object, ...]:
        return (request_key(self.request), bytes(self.body), self.trailers, self.complete)


@dataclass
class Outcome:
    """What a connection made of a byte stream."""

    messages: list[Message] = field(default_factory=list)
    error: RemoteProtocolError | None = None
    #: "error", "need_data" (waiting for more), "paused" (must close) or "closed".
    final: str = ""
    calls: int = 0

    @property
    def status(self) -> int | None:
        return None if self.error is None else self.error.status

    def key(self) -> tuple[object, ...]:
        return (tuple(m.key() for m in self.messages), self.final, self.status)


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo ``len(data) + 1``, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def drive(chunks: Sequence[bytes], limits: Limits | None = None, *, eof: bool = True) -> Outcome:
    """Feed ``chunks`` (then EOF if ``eof``) to a fresh connection, acting as the server.

    After each complete request a response is sent and, when the connection is
    reusable, ``start_next_cycle()`` is called so that pipelined requests proceed.
    Raises AssertionError (or the unexpected exception itself) when a property breaks.
    """
    conn = H1Connection(limits)
    out = Outcome()
    total = sum(len(c) for c in chunks)
    # A generous bound: every event consumes input, except EndOfMessage after the last
    # Data, PAUSED before a new cycle and one NEED_DATA per chunk.
    budget = 4 * (total + len(chunks)) + 16
    fed = 0
    for chunk in chunks:
        if not chunk:
            continue
        fed += len(chunk)
        conn.receive_data(chunk)
        if _pump(conn, out, fed, budget):
            return out
    if eof:
        conn.receive_data(b"")
        _pump(conn, out, fed, budget)
    return out


def _pump(conn: H1Connection, out: Outcome, fed: int, budget: int) -> bool:
    """Process events until the parser needs data; True once the stream is finished."""
    while True:
        out.calls += 1
        if out.calls > budget:
            raise ParserLoop(f"{out.calls} next_event() calls for {fed} bytes")
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            _check_error_is_terminal(conn, exc)
            out.error = exc
            out.final = "error"
            return True
        current = out.messages[-1] if out.messages else None
        if event is NEED_DATA:
            out.final = "need_data"
            return False
        if event is PAUSED:
            assert current is not None and current.complete, "PAUSED before any complete request"
            out.final = "paused"
            return False
        if isinstance(event, Request):
            assert current is None or current.complete, "Request while a body is pending"
            assert event.content_length >= 0
            assert not (event.chunked and event.content_length), "chunked with a length"
            msg = Message(event)
            out.messages.append(msg)
            if not event.has_body:
                _respond(conn, msg, fed - conn.buffered)
        elif isinstance(event, Data):
            assert current is not None and not current.complete, "Data outside a body"
            assert current.request.has_body, "Data for a request without a body"
            assert event.data, "empty Data event"
            current.body += event.data
            if not current.request.chunked:
                assert len(current.body) <= current.request.content_length, "body longer than CL"
        elif isinstance(event, EndOfMessage):
            assert current is not None and not current.complete, "EndOfMessage outside a body"
            assert current.request.has_body, "EndOfMessage for a request without a body"
            if not current.request.chunked:
                assert len(current.body) == current.request.content_length, "body shorter than CL"
                assert not event.trailers, "trailers on a Content-Length body"
            current.trailers = tuple(event.trailers)
            _respond(conn, current, fed - conn.buffered)
        elif isinstance(event, ConnectionClosed):
            assert current is None or current.complete, "ConnectionClosed inside a message"
            out.final = "closed"
            return True
        else:  # pragma: no cover - a new event type would need a new rule here
            raise AssertionError(f"unknown event {event!r}")


def _respond(conn: H1Connection, msg: Message, end: int) -> None:
    """The server's part of a cycle: a complete empty response, then the next cycle."""
    msg.complete = True
    msg.end = end
    conn.send_response(_OK)
    conn.send_end()
    if conn.their_state is DONE and conn.our_state is DONE:
        conn.start_next_cycle()
    else:
        assert not msg.request.keep_alive, "a kept-alive request left the connection unusable"


def _check_error_is_terminal(conn: H1Connection, exc: RemoteProtocolError) -> None:
    """After an error nothing is parsed any more: every call raises again."""
    assert isinstance(exc, RemoteProtocolError)
    assert exc.status in ALLOWED_STATUSES, f"status {exc.status} not allowed ({exc.reason})"
    assert conn.their_state is ERROR, f"their_state {conn.their_state} after an error"
    for more in (None, _PROBE, b""):
        if more is not None:
            conn.receive_data(more)
        try:
            event = conn.next_event()
        except RemoteProtocolError as again:
            assert again.status == exc.status, f"status changed {exc.status} -> {again.status}"
        else:
            raise AssertionError(f"{event!r} produced after an error")


def check_input(
    data: bytes, cuts: Sequence[int] = (), limits: Limits | None = None, *, bytewise: bool = False
) -> Outcome:
    """Drive ``data`` whole and split (at ``cuts``, and byte by byte if asked): the
    outcomes must be identical. Returns the outcome of the whole input."""
    whole = drive([data], limits)
    splits = [split_at(data, cuts)]
    if bytewise:
        splits.append([data[i : i + 1] for i in range(len(data))])
    for chunks in splits:
        part = drive(chunks, limits)
        assert same_outcome(part, whole), (
            f"split into {[len(c) for c in chunks]} gives {part.key()!r}, whole gives {whole.key()!r}"
        )
    return whole


#: Statuses of size limits. llhttp consumes whole reads, so for an input that is both
#: over a limit and malformed further on, which is noticed first depends on the reads.
LIMIT_STATUSES = frozenset({414, 431})


def same_outcome(a: Outcome, b: Outcome) -> bool:
    """Equal outcomes, except that two rejections may differ when one is a size limit."""
    if a.key()[:2] != b.key()[:2]:
        return False
    if a.status == b.status:
        return True
    return a.status is not None and b.status is not None and bool({a.status, b.status} & LIMIT_STATUSES)


# ------------------------------------------------------------------------ mutation

#: Bytes that matter to an HTTP/1.1 parser.
INTERESTING = b'\r\n\x00 \t:;,="\\\x0b\x0c\x7f\x80\xa0\xff0aAzZ/?#@[]%-+'
#: Field lines that change the framing or the semantics of a request.
FRAMING_LINES = (
    b"Content-Length: 0",
    b"Content-Length: 3",
    b"Content-Length: 3, 3",
    b"Content-Length: 3, 4",
    b"Content-Length: +3",
    b"Content-Length: 03",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: Chunked",
    b"Transfer-Encoding: , chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, chunked",
    b"Transfer-Encoding: identity",
    b"Host: other.example",
    b"Host: a b",
    b"Expect: 100-continue",
    b"Expect: nothing",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Trailer: X",
)


def mutate(data: bytes, ops: Sequence[tuple[int, int, int]]) -> bytes:
    """Apply mutations given as ``(kind, position, argument)`` triples (any integers)."""
    buf = bytearray(data)
    for kind, pos, arg in ops:
        n = len(buf)
        at = pos % (n + 1)
        k = kind % 8
        if k == 0:  # insert an interesting byte
            buf[at:at] = INTERESTING[arg % len(INTERESTING) : arg % len(INTERESTING) + 1]
        elif k == 1 and n:  # delete a run of bytes
            del buf[at : at + 1 + arg % 3]
        elif k == 2 and n:  # replace a byte
            buf[at % n] = INTERESTING[arg % len(INTERESTING)]
        elif k == 3:  # insert a framing field line after some line end
            line_end = buf.find(b"\r\n", at)
            if line_end >= 0:
                buf[line_end + 2 : line_end + 2] = FRAMING_LINES[arg % len(FRAMING_LINES)] + b"\r\n"
        elif k == 4:  # duplicate a line
            start = buf.rfind(b"\n", 0, at) + 1
            stop = buf.find(b"\n", at)
            if stop >= 0:
                buf[start:start] = buf[start : stop + 1]
        elif k == 5 and n:  # truncate
            del buf[at:]
        elif k == 6 and n:  # flip the case of a letter
            buf[at % n] = ord(chr(buf[at % n]).swapcase()) if buf[at % n] < 128 else buf[at % n]
        elif k == 7:  # insert a byte of any value
            buf[at:at] = bytes((arg % 256,))
    return bytes(buf)


# ------------------------------------------------------------------------ atheris


def fuzz_one_input(raw: bytes) -> None:
    """The fuzz entry point. Input layout: ``config, ncuts, cuts[ncuts] (2 bytes each), payload``.

    ``config`` bit 0 selects :data:`SMALL_LIMITS`; bit 1 also feeds the payload byte by
    byte (short payloads only).
    """
    if len(raw) < 2:
        return
    config, ncuts = raw[0], raw[1] % 8
    header = 2 + 2 * ncuts
    payload = raw[header:]
    cuts = [int.from_bytes(raw[i : i + 2], "big") for i in range(2, min(header, len(raw)) - 1, 2)]
    limits = Limits(**SMALL_LIMITS) if config & 1 else None
    check_input(payload, cuts, limits, bytewise=bool(config & 2) and len(payload) <= 2048)


def seed_inputs() -> list[bytes]:
    """Fuzzer seeds: every corpus stream, with default and with small limits."""
    from tests.http1_corpus import INVALID, VALID

    seeds = []
    for raw in [c.raw for c in VALID] + [c.raw for c in INVALID]:
        seeds.append(b"\x00\x01\x00\x07" + raw)  # default limits, one cut at offset 7
        seeds.append(b"\x01\x00" + raw)  # small limits, no cut
    return seeds


def run_atheris(name: str, argv: list[str], seeds: list[bytes], one_input: Callable[[bytes], None]) -> None:
    """Run ``one_input`` under atheris (libFuzzer); without a corpus directory on the
    command line, one is made from ``seeds`` in a temporary directory."""
    import tempfile

    import atheris  # type: ignore[import-untyped]

    atheris.instrument_all()
    args = list(argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = Path(tempfile.mkdtemp(prefix=f"{name}_corpus_"))
        for i, seed in enumerate(seeds):
            (corpus / f"seed{i:04d}").write_bytes(seed)
        print(f"{name}: seed corpus in {corpus}", file=sys.stderr)
        args.append(str(corpus))
    atheris.Setup(args, one_input)
    atheris.Fuzz()


def main(argv: list[str]) -> None:
    run_atheris("fuzz_http1", argv, seed_inputs(), fuzz_one_input)


if __name__ == "__main__":
    main(sys.argv)
