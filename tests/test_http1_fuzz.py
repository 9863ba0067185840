"""The fuzz properties of ``tests/fuzz_http1.py``, run with hypothesis (no atheris needed).

Also: hostile inputs that would make a backtracking or rescanning parser take
super-linear time must be processed in a single call (pytest-timeout guards the hang;
there are no timing asserts).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rapidwsgi.errors import RemoteProtocolError
from rapidwsgi.events import NEED_DATA, PAUSED, Data, EndOfMessage, Request
from rapidwsgi.protocols.http1 import H1Connection, Limits
from tests.fuzz_http1 import (
    ALLOWED_STATUSES,
    SMALL_LIMITS,
    ParserLoop,
    check_input,
    drive,
    fuzz_one_input,
    mutate,
    seed_inputs,
)
from tests.http1_corpus import INVALID, VALID

MAX_CHUNK_LINE = 4096

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cuts = st.lists(st.integers(0, 1 << 16), max_size=8)
limits = st.sampled_from([None, Limits(**SMALL_LIMITS)])
# Random bytes biased towards what an HTTP/1.1 parser branches on.
_ALPHABET = b'GET POST HTTP/1.1 /?#:;,=\r\n\t\x00\x7f\x80\xff0123456789abcdefxX-"\\'
http_ish = st.lists(st.sampled_from(_ALPHABET) | st.integers(0, 255), max_size=600).map(bytes)
corpus = st.sampled_from([c.raw for c in VALID] + [c.raw for c in INVALID if len(c.raw) < 4096])
mutations = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4)


@SETTINGS
@given(data=st.binary(max_size=1024), cuts=cuts, limits=limits)
def test_random_bytes_give_the_same_outcome_whole_and_split(
    data: bytes, cuts: list[int], limits: Limits | None
) -> None:
    check_input(data, cuts, limits)


@SETTINGS
@given(data=http_ish, cuts=cuts, limits=limits)
def test_http_like_bytes_give_the_same_outcome_whole_split_and_bytewise(
    data: bytes, cuts: list[int], limits: Limits | None
) -> None:
    check_input(data, cuts, limits, bytewise=True)


@SETTINGS
@given(raw=corpus, ops=mutations, cuts=cuts, limits=limits)
def test_mutated_corpus_streams_give_the_same_outcome_whole_split_and_bytewise(
    raw: bytes, ops: list[tuple[int, int, int]], cuts: list[int], limits: Limits | None
) -> None:
    check_input(mutate(raw, ops), cuts, limits, bytewise=True)


@pytest.mark.parametrize("seed", seed_inputs()[:40])
def test_fuzz_entry_point_runs_on_its_seeds(seed: bytes) -> None:
    fuzz_one_input(seed)
    fuzz_one_input(b"\x03\x02\x00\x05\x00\x09" + seed[2:])


def test_fuzz_entry_point_ignores_inputs_too_short_to_configure_it() -> None:
    fuzz_one_input(b"")
    fuzz_one_input(b"\x01")


def test_checker_rejects_a_status_outside_the_allowed_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness itself must catch a parser that invents a status.
    class Teapot(RemoteProtocolError):
        status = 418

    def broken(self: H1Connection) -> object:
        raise Teapot("teapot")

    monkeypatch.setattr(H1Connection, "next_event", broken)
    assert 418 not in ALLOWED_STATUSES
    with pytest.raises(AssertionError, match="418"):
        drive([b"GET / HTTP/1.1\r\n\r\n"])


def test_checker_rejects_an_exception_that_is_not_a_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: H1Connection) -> object:
        raise IndexError("parser bug")

    monkeypatch.setattr(H1Connection, "next_event", broken)
    with pytest.raises(IndexError):
        fuzz_one_input(b"\x00\x00GET / HTTP/1.1\r\n\r\n")


def test_checker_rejects_a_parser_that_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H1Connection, "next_event", lambda self: Data(b"x"))
    with pytest.raises(AssertionError):
        drive([b"GET / HTTP/1.1\r\n\r\n"])
    # A Data event that is "well formed" but endless is caught by the call budget.
    request = Request(b"POST", b"/", b"/", b"", b"1.1", [], chunked=True)
    events = iter([request])
    monkeypatch.setattr(H1Connection, "next_event", lambda self: next(events, Data(b"x")))
    with pytest.raises(ParserLoop):
        drive([b"POST / HTTP/1.1\r\n\r\n"])


# ------------------------------------------------ hostile inputs: no super-linear work

BIG = Limits(max_line=1 << 20, max_fields=1 << 16, max_field_size=1 << 20)


def _one_call(data: bytes, limits: Limits | None = None) -> object:
    """Everything in one receive_data: the error, or the last event before the parser
    needs data or pauses (no response is sent here)."""
    conn = H1Connection(limits)
    conn.receive_data(data)
    last: object = None
    try:
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            last = event
    except RemoteProtocolError as exc:
        return exc
    return last


def test_100kb_value_of_spaces_and_tabs_is_parsed_in_one_call() -> None:
    value = b"a" + b" \t" * 50_000 + b"b"
    event = _one_call(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + value + b"\r\n\r\n", BIG)
    assert isinstance(event, Request)
    assert event.headers[1] == (b"x", value)


def test_100kb_value_of_spaces_and_tabs_ending_in_a_nul_is_rejected_in_one_call() -> None:
    # The worst case for a backtracking field-value pattern: almost matching, then not.
    value = b"a" + b" \t" * 50_000 + b"\x00"
    event = _one_call(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + value + b"\r\n\r\n", BIG)
    assert isinstance(event, RemoteProtocolError)
    assert event.status == 400


def test_100kb_of_whitespace_as_a_value_is_an_empty_value() -> None:
    event = _one_call(b"GET / HTTP/1.1\r\nHost: a\r\nX:" + b" \t" * 50_000 + b"\r\n\r\n", BIG)
    assert isinstance(event, Request)
    assert event.headers[1] == (b"x", b"")


def test_100kb_value_of_spaces_is_refused_as_too_large_with_default_limits() -> None:
    event = _one_call(b"GET / HTTP/1.1\r\nHost: a\r\nX: a" + b" " * 100_000 + b"b\r\n\r\n")
    assert isinstance(event, RemoteProtocolError)
    assert event.status == 431


def test_thousands_of_fields_then_a_bad_line_are_rejected_in_one_call() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"a: b c \t\r\n" * 20_000 + b"bad line\r\n\r\n"
    event = _one_call(head, BIG)
    assert isinstance(event, RemoteProtocolError)
    assert event.status == 400


def test_5000_chunk_extensions_are_skipped_in_one_call_without_buffering() -> None:
    # RFC 9112 §7.1.1 worries about buffering long chunk extensions; llhttp streams
    # past them and they are never buffered, so they are simply ignored.
    body = b"1" + b";a=b" * 5000 + b"\r\nx\r\n0\r\n\r\n"
    event = _one_call(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert isinstance(event, EndOfMessage)


@pytest.mark.parametrize(
    "ext",
    [b";a" * 2000, b" ; a = b" * 500, b';a="' + b"\\\\" * 2000 + b'"', b";a=" + b"b" * 4000],
    ids=["names", "bws", "quoted-pairs", "long-value"],
)
def test_longest_allowed_chunk_line_that_fails_at_its_end_is_rejected_in_one_call(ext: bytes) -> None:
    line = (b"1" + ext)[: MAX_CHUNK_LINE - 1] + b"\x00"
    event = _one_call(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + line + b"\r\nx\r\n"
    )
    assert isinstance(event, RemoteProtocolError)
    assert event.status == 400


def test_5000_one_byte_chunks_are_decoded_in_one_call() -> None:
    conn = H1Connection()
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1\r\nx\r\n" * 5000
        + b"0\r\n\r\n"
    )
    assert isinstance(conn.next_event(), Request)
    body = bytearray()
    while True:
        event = conn.next_event()
        if isinstance(event, EndOfMessage):
            break
        assert isinstance(event, Data)
        body += event.data
    assert body == b"x" * 5000


def test_5000_pipelined_requests_in_one_buffer_are_all_parsed() -> None:
    from rapidwsgi.events import Response

    conn = H1Connection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 5000)
    seen = 0
    while (event := conn.next_event()) is not NEED_DATA:
        assert isinstance(event, Request)
        seen += 1
        conn.send_response(Response(204, b"204 No Content", b""))
        conn.send_end()
        conn.start_next_cycle()
    assert seen == 5000


def test_100kb_of_empty_lines_before_a_request_are_skipped_in_one_call() -> None:
    # Skipped without buffering (RFC 9112 §2.2 allows ignoring them).
    event = _one_call(b"\r\n" * 50_000 + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(event, Request)


def test_request_line_of_100kb_is_refused_before_the_line_ends() -> None:
    conn = H1Connection()
    conn.receive_data(b"GET /" + b"a" * 100_000)
    with pytest.raises(RemoteProtocolError) as exc:
        conn.next_event()
    assert exc.value.status == 414


def test_head_that_never_ends_is_refused_once_over_the_head_limit() -> None:
    conn = H1Connection(Limits(max_fields=10, max_field_size=100))
    conn.receive_data(b"GET / HTTP/1.1\r\n")
    status = None
    for _ in range(1000):
        conn.receive_data(b"X: " + b"a" * 50 + b"\r\n")
        try:
            assert conn.next_event() is NEED_DATA
        except RemoteProtocolError as exc:
            status = exc.status
            break
    assert status == 431
