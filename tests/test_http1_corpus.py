"""Replay every case of ``tests/http1_corpus.py`` through a fresh H1Connection.

Each stream is fed whole, CRLF-line by line, byte by byte and in 20 seeded random
splits; the harness (``tests/fuzz_http1.py``) plays the server, answering each complete
request and starting the next cycle. The outcome must equal the corpus expectation for
every split (a head trickling in may be judged only at the close, see HEAD_FEED), and
after an error nothing more may be produced.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator

import pytest

from rapidwsgi.errors import RemoteProtocolError
from rapidwsgi.events import Response
from rapidwsgi.protocols.http1 import DONE, ERROR, IDLE, MUST_CLOSE, H1Connection, Limits
from tests.fuzz_http1 import Message, Outcome, drive, split_at
from tests.http1_corpus import ALLOWED_STATUSES, INVALID, VALID, Invalid, Req, Valid

RANDOM_SPLITS = 20


def _lines(data: bytes) -> list[bytes]:
    """Cut after every LF: each CRLF-terminated line is one read."""
    return [line for line in re.split(rb"(?<=\n)", data) if line]


def _bytes(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def _random(data: bytes) -> Iterator[list[bytes]]:
    for seed in range(RANDOM_SPLITS):
        rng = random.Random(seed)
        cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 12))]
        yield split_at(data, cuts)


SPLITS: dict[str, Callable[[bytes], Iterator[list[bytes]]]] = {
    "whole": lambda data: iter([[data]]),
    "lines": lambda data: iter([_lines(data)]),
    "bytes": lambda data: iter([_bytes(data)]),
    "random": _random,
}


def _limits(case: Valid | Invalid) -> Limits | None:
    return Limits(**case.limits) if case.limits else None


def _assert_request(msg: Message, want: Req, where: str) -> None:
    got = msg.request
    assert got.method == want.method, where
    assert got.target == want.target, where
    assert got.path == want.expected_path, where
    assert got.query == want.query, where
    assert got.version == want.version, where
    assert got.authority == want.authority, where
    assert got.headers == list(want.headers), where
    assert got.chunked == want.chunked, where
    assert got.content_length == want.expected_content_length, where
    assert got.keep_alive == want.keep_alive, where
    assert got.expect_continue == want.expect_continue, where
    assert got.has_body == want.has_body, where


def _assert_complete(msg: Message, want: Req, where: str) -> None:
    _assert_request(msg, want, where)
    assert msg.complete, f"{where}: request not complete"
    assert bytes(msg.body) == want.body, where
    assert msg.trailers == want.trailers, where


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_valid_stream_yields_exactly_the_expected_requests(case: Valid, split: str) -> None:
    for chunks in SPLITS[split](case.raw):
        where = f"{case.name} fed as {[len(c) for c in chunks]}"
        out = drive(chunks, _limits(case), eof=False)
        assert out.error is None, f"{where}: rejected with {out.status} ({out.error})"
        assert len(out.messages) == len(case.requests), where
        for msg, want in zip(out.messages, case.requests, strict=True):
            _assert_complete(msg, want, where)
        # A reusable connection waits for the next request; otherwise nothing more is
        # read until the connection is closed (RFC 9112 §9.6).
        last_keeps_alive = case.requests[-1].keep_alive
        assert out.final == ("need_data" if last_keeps_alive else "paused"), where


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_eof_after_valid_stream_is_a_clean_close(case: Valid) -> None:
    out = drive([case.raw], _limits(case), eof=True)
    assert out.error is None
    assert len(out.messages) == len(case.requests)
    # Closing between requests is not an error (RFC 9112 §9.6); a connection that must
    # close stays paused whatever follows.
    assert out.final == ("closed" if case.requests[-1].keep_alive else "paused")


def _assert_rejected(out: Outcome, case: Invalid, where: str) -> None:
    assert out.error is not None, f"{where}: accepted ({len(out.messages)} requests, {out.final})"
    assert out.status in (case.status, *case.also), f"{where}: status {out.status} ({out.error.reason})"
    complete = [m for m in out.messages if m.complete]
    assert len(complete) == len(case.before), where
    for msg, want in zip(complete, case.before, strict=True):
        _assert_complete(msg, want, where)
    partial = [m for m in out.messages if not m.complete]
    # in_body: the failing request's head was valid and reported, the body was not.
    assert len(partial) == (1 if case.in_body else 0), f"{where}: partial requests {partial}"


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.name)
def test_invalid_stream_is_rejected_with_expected_status(case: Invalid, split: str) -> None:
    for chunks in SPLITS[split](case.raw):
        where = f"{case.name} fed as {[len(c) for c in chunks]}"
        if case.eof:
            # An incomplete message is no error until the peer closes: it may be slow.
            waiting = drive(chunks, _limits(case), eof=False)
            assert waiting.error is None, f"{where}: rejected before EOF ({waiting.error})"
            assert waiting.final == "need_data", where
        out = drive(chunks, _limits(case), eof=case.eof)
        if not case.eof and out.error is None and out.final == "need_data":
            # A head arriving in small pieces is held back until its end, HEAD_FEED
            # bytes of it, or the close (so that llhttp is not fed byte by byte): the
            # verdict may wait for the close, but must then be the same.
            out = drive(chunks, _limits(case), eof=True)
        _assert_rejected(out, case, where)


def _first_error(conn: H1Connection, budget: int) -> RemoteProtocolError:
    """Parse until the error, playing the server so that earlier requests get through."""
    for _ in range(budget):
        try:
            conn.next_event()
        except RemoteProtocolError as exc:
            return exc
        if conn.their_state in (DONE, MUST_CLOSE) and conn.our_state is IDLE:
            conn.send_response(Response(200, b"200 OK", b"", content_length=0))
            conn.send_end()
            if (conn.their_state, conn.our_state) == (DONE, DONE):
                conn.start_next_cycle()
    raise AssertionError("no error raised")


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.name)
def test_nothing_is_parsed_after_an_error_even_when_more_data_arrives(case: Invalid) -> None:
    conn = H1Connection(_limits(case))
    conn.receive_data(case.raw)
    if case.eof:
        conn.receive_data(b"")
    first = _first_error(conn, 4 * len(case.raw) + 16)
    assert conn.their_state is ERROR
    # RFC 9112 §9.6 / the smuggling baseline: after a framing error the connection's
    # remaining bytes mean nothing; every further call raises the same error.
    for more in (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", b"\r\n\r\n", b""):
        conn.receive_data(more)
        for _ in range(3):
            with pytest.raises(RemoteProtocolError) as again:
                conn.next_event()
            assert again.value.status == first.status
            assert conn.their_state is ERROR


def test_corpus_is_large_and_names_are_unique() -> None:
    assert len(VALID) >= 60
    assert len(INVALID) >= 90
    names = [c.name for c in VALID] + [c.name for c in INVALID]
    assert len(names) == len(set(names))
    assert all(c.status in ALLOWED_STATUSES for c in INVALID)
    # Every status a parser can produce on its own is exercised.
    assert {c.status for c in INVALID} == {400, 413, 414, 417, 431, 501, 505}
