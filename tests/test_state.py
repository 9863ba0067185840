"""The request/response state machine (``protocols/_state.py``) and the shared front-end
skeleton (``protocols/base.py``).

* The tables, written out again here: every pair of state and event that is in them
  gives exactly the state written here, every other pair raises
  ``LocalProtocolError`` — through ``_state.advance`` and through a connection's
  ``_advance_theirs``/``_advance_ours``, which make every state change.
* The operations that change state refuse to run from a state the tables do not allow.
* The body mode is decided when a request is built (``Request.framing``) and the
  front-ends never rewrite a built request (uwsgi kept its version, FastCGI its
  framing and persistence).
* The one body count: a body longer than declared, shorter than declared, or past
  ``max_body`` is refused, with the same result for every front-end that can see it.
"""

from __future__ import annotations

import pytest

from rapidwsgi.errors import BadRequest, ContentTooLarge, LocalProtocolError
from rapidwsgi.events import (
    CHUNKED,
    EMPTY_EOM,
    GATEWAY_FRAMED,
    LENGTH,
    NEED_DATA,
    NO_BODY,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Request,
    Response,
)
from rapidwsgi.protocols import _state as s
from rapidwsgi.protocols.base import Limits, ServerConnection
from rapidwsgi.protocols.fastcgi import FastCGIConnection
from rapidwsgi.protocols.http1 import H1Connection
from rapidwsgi.protocols.uwsgi import UwsgiConnection
from tests.fuzz_gateway import fastcgi_request, uwsgi_packet

IDLE, BODY, DONE, MUST, CLOSED, ERROR = s.IDLE, s.SEND_BODY, s.DONE, s.MUST_CLOSE, s.CLOSED, s.ERROR

#: The legal transitions of their side (the client's requests), as the rules say.
THEIRS = {
    (IDLE, "head"): BODY,
    (IDLE, "head+end"): DONE,
    (IDLE, "closed"): CLOSED,
    (IDLE, "error"): ERROR,
    (BODY, "data"): BODY,
    (BODY, "end"): DONE,
    (BODY, "error"): ERROR,
    (DONE, "last"): MUST,
    (DONE, "next"): IDLE,
    (DONE, "closed"): CLOSED,
    (DONE, "error"): ERROR,
    (MUST, "closed"): CLOSED,
    (MUST, "error"): ERROR,
}
#: The legal transitions of our side (the responses).
OURS = {
    (IDLE, "head"): BODY,
    (IDLE, "error"): ERROR,
    (BODY, "data"): BODY,
    (BODY, "end"): DONE,
    (BODY, "error"): ERROR,
    (DONE, "last"): MUST,
    (DONE, "next"): IDLE,
    (DONE, "error"): ERROR,
    (MUST, "error"): ERROR,
    (ERROR, "error"): ERROR,
}
ALL_PAIRS = [(state, event) for state in s.STATES for event in s.EVENTS]


def test_the_states_and_events_are_exactly_these() -> None:
    assert s.STATES == ("IDLE", "SEND_BODY", "DONE", "MUST_CLOSE", "CLOSED", "ERROR")
    assert s.EVENTS == ("head", "head+end", "data", "end", "last", "next", "error", "closed")


def test_the_tables_hold_exactly_the_rules() -> None:
    assert s.THEIR_TRANSITIONS == THEIRS
    assert s.OUR_TRANSITIONS == OURS
    # The moves advance() reads are the same tables, one Move per event.
    for moves, table in ((s.THEIR_MOVES, THEIRS), (s.OUR_MOVES, OURS)):
        assert list(moves) == list(s.EVENTS)
        assert {(state, m.event): m.target for m in moves.values() for state in m.sources} == table


def test_a_table_giving_one_event_two_targets_is_refused_at_import() -> None:
    with pytest.raises(ValueError, match="their side: 'end' leads to \\['DONE', 'IDLE'\\]"):
        s._moves({(BODY, "end"): DONE, (DONE, "end"): IDLE}, "their")


def test_terminal_states_have_no_way_out() -> None:
    # Rule 6: after an error nothing else is processed; rule 7: CLOSED is the end.
    assert [k for k in THEIRS if k[0] in (CLOSED, ERROR)] == []
    assert [k for k in OURS if k[0] is CLOSED] == []
    assert [v for k, v in OURS.items() if k[0] is ERROR] == [ERROR]  # reporting again: no change


@pytest.mark.parametrize(("table", "expected"), [("their", THEIRS), ("our", OURS)])
@pytest.mark.parametrize(("state", "event"), ALL_PAIRS)
def test_advance_allows_every_legal_transition_and_refuses_every_other(
    table: str, expected: dict[tuple[str, str], str], state: str, event: str
) -> None:
    move = (s.THEIR_MOVES if table == "their" else s.OUR_MOVES)[event]
    if (state, event) in expected:
        assert s.advance(move, state) is expected[(state, event)]
    else:
        with pytest.raises(LocalProtocolError) as info:
            s.advance(move, state)
        assert str(info.value) == f"{table} side: no transition from {state} on {event!r}"


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS)
def test_a_connection_moves_their_side_only_as_the_table_says(state: str, event: str) -> None:
    conn = H1Connection()
    conn.their_state = state
    if (state, event) in THEIRS:
        conn._advance_theirs(s.THEIR_MOVES[event])
        assert conn.their_state is THEIRS[(state, event)]
    else:
        with pytest.raises(LocalProtocolError):
            conn._advance_theirs(s.THEIR_MOVES[event])
        assert conn.their_state is state  # a refused change changes nothing
    assert conn.our_state is IDLE


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS)
def test_a_connection_moves_our_side_only_as_the_table_says(state: str, event: str) -> None:
    conn = H1Connection()
    conn.our_state = state
    if (state, event) in OURS:
        conn._advance_ours(s.OUR_MOVES[event])
        assert conn.our_state is OURS[(state, event)]
    else:
        with pytest.raises(LocalProtocolError):
            conn._advance_ours(s.OUR_MOVES[event])
        assert conn.our_state is state
    assert conn.their_state is IDLE


# ------------------------------------------------ the operations, through the tables

OK = Response(200, b"200 OK", b"", content_length=0)


def served_get(keep_alive: bool = True) -> H1Connection:
    """A connection that has received one GET (its head is the whole request)."""
    conn = H1Connection()
    conn.receive_data(
        b"GET / HTTP/1.1\r\nHost: a\r\n" + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n"
    )
    assert isinstance(conn.next_event(), Request)
    return conn


def test_one_keep_alive_cycle_visits_the_states_in_order() -> None:
    conn = served_get()
    assert (conn.their_state, conn.our_state) == (DONE, IDLE)
    conn.send_response(OK)
    assert conn.our_state is BODY
    conn.send_end()
    assert (conn.their_state, conn.our_state) == (DONE, DONE)
    conn.start_next_cycle()
    assert (conn.their_state, conn.our_state) == (IDLE, IDLE)


def test_a_last_cycle_ends_both_sides_in_must_close() -> None:
    conn = served_get(keep_alive=False)
    assert conn.their_state is MUST
    conn.send_response(OK)
    conn.send_end()
    assert conn.our_state is MUST
    with pytest.raises(LocalProtocolError, match=r"cannot start a new cycle from \(MUST_CLOSE, MUST_CLOSE\)"):
        conn.start_next_cycle()


def test_a_second_response_or_a_second_end_is_refused() -> None:
    conn = served_get()
    conn.send_response(OK)
    with pytest.raises(LocalProtocolError, match="a response was already started"):
        conn.send_response(OK)
    conn.send_end()
    with pytest.raises(LocalProtocolError, match="no response body is being sent"):
        conn.send_end()
    assert conn.our_state is DONE


def test_a_new_cycle_before_the_response_is_refused() -> None:
    conn = served_get()
    with pytest.raises(LocalProtocolError, match=r"cannot start a new cycle from \(DONE, IDLE\)"):
        conn.start_next_cycle()
    assert (conn.their_state, conn.our_state) == (DONE, IDLE)


def test_a_short_response_body_moves_our_side_to_error() -> None:
    conn = served_get()
    conn.send_response(Response(200, b"200 OK", b"", content_length=5))
    conn.send_data(b"abc")
    with pytest.raises(LocalProtocolError, match="shorter than its Content-Length"):
        conn.send_end()
    assert conn.our_state is ERROR
    conn.send_failed()  # reported again: still ERROR, no exception
    assert conn.our_state is ERROR


def test_the_c_path_closing_cycle_is_replayed_from_idle_only() -> None:
    conn = H1Connection()
    conn.closed_by_c_path()
    assert (conn.their_state, conn.our_state) == (MUST, MUST)
    busy = served_get()
    with pytest.raises(LocalProtocolError, match="their side: no transition from DONE on 'head\\+end'"):
        busy.closed_by_c_path()


def test_an_error_after_a_clean_close_is_a_bug_not_a_state() -> None:
    conn = H1Connection()
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.their_state is CLOSED
    with pytest.raises(LocalProtocolError, match="their side: no transition from CLOSED on 'error'"):
        conn._fail(BadRequest("late"))
    assert isinstance(conn.next_event(), ConnectionClosed)  # and CLOSED stays the answer


# ------------------------------------------------ the shared next_event


@pytest.mark.parametrize("factory", [H1Connection, UwsgiConnection, FastCGIConnection])
def test_every_front_end_answers_error_and_close_the_same_way(factory: type[ServerConnection]) -> None:
    conn = factory()
    conn.receive_data(b"\x07" * 16)  # garbage in every wire format
    with pytest.raises(BadRequest) as first:
        conn.next_event()
    assert conn.their_state is ERROR
    with pytest.raises(BadRequest) as again:
        conn.next_event()
    assert again.value is first.value  # the same error, nothing parsed further
    clean = factory()
    assert clean.next_event() is NEED_DATA
    clean.receive_data(b"")
    assert isinstance(clean.next_event(), ConnectionClosed)
    assert isinstance(clean.next_event(), ConnectionClosed)
    assert clean.their_state is CLOSED


# ------------------------------------------------ the body mode, set when built


def test_a_request_derives_its_framing_when_none_is_given() -> None:
    def make(**kwargs: object) -> Request:
        return Request(b"POST", b"/", b"/", b"", b"1.1", [], **kwargs)  # type: ignore[arg-type]

    assert (make().framing, make().has_body, make().chunked) == (NO_BODY, False, False)
    assert (make(content_length=3).framing, make(content_length=3).has_body) == (LENGTH, True)
    assert (make(chunked=True).framing, make(chunked=True).chunked) == (CHUNKED, True)
    gateway = make(framing=GATEWAY_FRAMED)
    assert (gateway.framing, gateway.has_body, gateway.chunked) == (GATEWAY_FRAMED, True, False)


@pytest.mark.parametrize(
    ("head", "framing", "length"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", NO_BODY, 0),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", NO_BODY, 0),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n", LENGTH, 4),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNKED, 0),
    ],
)
def test_http1_sets_the_framing_from_the_head(head: bytes, framing: int, length: int) -> None:
    conn = H1Connection()
    conn.receive_data(head)
    request = conn.next_event()
    assert isinstance(request, Request)
    assert (request.framing, request.content_length) == (framing, length)


UWSGI_VARS = [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]


def test_uwsgi_keeps_the_request_as_built_and_still_closes_unknown_lengths() -> None:
    conn = UwsgiConnection()
    conn.receive_data(uwsgi_packet(UWSGI_VARS))
    request = conn.next_event()
    assert isinstance(request, Request)
    assert (request.version, request.framing, request.keep_alive) == (b"1.1", NO_BODY, False)
    head = conn.send_response(Response(200, b"200 OK", b""))
    assert head == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"  # no chunked coding
    assert conn.send_data(b"abc") == b"abc"
    assert conn.send_end() == b""
    assert conn.our_state is MUST


@pytest.mark.parametrize(
    ("length", "framing", "keep_conn"),
    [
        (None, GATEWAY_FRAMED, False),
        (b"-1", GATEWAY_FRAMED, True),
        (b"0", LENGTH, False),
        (b"5", LENGTH, True),
    ],
)
def test_fastcgi_frames_every_body_by_its_stdin_and_builds_the_request_once(
    length: bytes | None, framing: int, keep_conn: bool
) -> None:
    variables = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/")]
    if length is not None:
        variables.append((b"CONTENT_LENGTH", length))
    body = b"hello" if length != b"0" else b""
    conn = FastCGIConnection()
    conn.receive_data(fastcgi_request(variables, body, keep_conn=keep_conn))
    request = conn.next_event()
    assert isinstance(request, Request)
    assert (request.framing, request.keep_alive, request.chunked) == (framing, keep_conn, False)
    assert conn.their_state is BODY  # even a declared 0 waits for the empty STDIN
    events = [conn.next_event() for _ in range(2 if body else 1)]
    assert [type(e) for e in events] == ([Data] if body else []) + [EndOfMessage]
    assert conn.their_state is (DONE if keep_conn else MUST)
    assert conn.next_event() is PAUSED


# ------------------------------------------------ the one body count


def test_a_body_past_its_declared_length_is_refused_in_the_front_ends_words() -> None:
    variables = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", b"3")]
    conn = FastCGIConnection()
    conn.receive_data(fastcgi_request(variables, b"abcd"))
    assert isinstance(conn.next_event(), Request)
    with pytest.raises(BadRequest, match=r"^fastcgi: STDIN longer than CONTENT_LENGTH$"):
        conn.next_event()
    assert conn.their_state is ERROR


def test_a_body_short_of_its_declared_length_is_refused_at_its_end() -> None:
    variables = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", b"3")]
    conn = FastCGIConnection()
    conn.receive_data(fastcgi_request(variables, b"ab"))
    assert isinstance(conn.next_event(), Request)
    assert conn.next_event().data == b"ab"  # type: ignore[union-attr]
    with pytest.raises(BadRequest, match=r"^fastcgi: STDIN ended before CONTENT_LENGTH$"):
        conn.next_event()


def test_the_base_count_refuses_a_length_overrun_and_an_early_end() -> None:
    conn = UwsgiConnection()
    conn._on_request(Request(b"POST", b"/", b"/", b"", b"1.1", [], content_length=2, keep_alive=False))
    assert conn.body_remaining == 2
    with pytest.raises(BadRequest, match=r"^request body longer than its Content-Length$"):
        conn._on_data(Data(b"abc"))
    early = UwsgiConnection()
    early._on_request(Request(b"POST", b"/", b"/", b"", b"1.1", [], content_length=2, keep_alive=False))
    early._on_data(Data(b"a"))
    with pytest.raises(BadRequest, match=r"^request body shorter than its Content-Length$"):
        early._on_end(EMPTY_EOM)
    assert early.their_state is BODY


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("chunks", "refused"), [(b"5\r\nhello\r\n0\r\n\r\n", False), (b"6\r\nhello!\r\n", True)]
)
def test_an_unframed_body_is_held_to_max_body_by_the_count(chunks: bytes, refused: bool) -> None:
    for conn, data in (
        (H1Connection(Limits(max_body=5)), CHUNKED_HEAD + chunks),
        (
            FastCGIConnection(Limits(max_body=5)),
            fastcgi_request(
                [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/")], b"hello!" if refused else b"hello"
            ),
        ),
    ):
        conn.receive_data(data)
        assert isinstance(conn.next_event(), Request)
        if refused:
            with pytest.raises(ContentTooLarge, match=r"^request body too large$"):
                conn.next_event()
            assert conn.their_state is ERROR
        else:
            event = conn.next_event()
            assert isinstance(event, Data) and event.data == b"hello"
            assert isinstance(conn.next_event(), EndOfMessage)
            assert conn.their_state is (DONE if isinstance(conn, H1Connection) else MUST)
