"""The response side of H1Connection: framing, body accounting, persistence, 100 Continue.

Every test drives a real request through the parser first, because the response
framing depends on the request (method, version, Connection, Expect, unread body).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rapidwsgi.errors import LocalProtocolError, RemoteProtocolError
from rapidwsgi.events import NEED_DATA, PAUSED, Data, EndOfMessage, Request, Response
from rapidwsgi.protocols.http1 import (
    DONE,
    ERROR,
    IDLE,
    MUST_CLOSE,
    SEND_BODY,
    H1Connection,
    Limits,
)

SERVER = b"Server: test\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def request(*lines: bytes, body: bytes = b"") -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


GET11 = request(b"GET / HTTP/1.1", b"Host: a")
GET10 = request(b"GET / HTTP/1.0")
GET10_KA = request(b"GET / HTTP/1.0", b"Connection: keep-alive")
HEAD11 = request(b"HEAD / HTTP/1.1", b"Host: a")
POST_CL10 = request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 10", body=b"0123456789")
POST_EXPECT = request(b"POST / HTTP/1.1", b"Host: a", b"Expect: 100-continue", b"Content-Length: 5")
POST_EXPECT_CHUNKED = request(
    b"POST / HTTP/1.1", b"Host: a", b"Expect: 100-continue", b"Transfer-Encoding: chunked"
)


def connect(raw: bytes, limits: Limits | None = None, *, read_body: bool = True) -> H1Connection:
    """A connection that has parsed the request head (and its body if ``read_body``)."""
    conn = H1Connection(limits)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, Request)
    if read_body and event.has_body:
        while not isinstance(conn.next_event(), EndOfMessage):
            pass
        assert conn.their_state in (DONE, MUST_CLOSE)
    return conn


def response(status: int = 200, length: int | None = None, *, close: bool = False) -> Response:
    return Response(status, b"%d Status" % status, SERVER, content_length=length, close=close)


def fields(head: bytes) -> dict[bytes, list[bytes]]:
    """Field lines of a serialised response head, names lower-cased."""
    assert head.endswith(b"\r\n\r\n")
    out: dict[bytes, list[bytes]] = {}
    for line in head[:-4].split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        out.setdefault(name.lower(), []).append(value)
    return out


# ---------------------------------------------------------------- framing (RFC 9112 §6)


def test_content_length_response_declares_length_and_sends_body_unframed() -> None:
    conn = connect(GET11)
    head = conn.send_response(response(length=5))
    assert head == b"HTTP/1.1 200 Status\r\nServer: test\r\nContent-Length: 5\r\n\r\n"
    assert conn.send_data(b"hel") == b"hel"
    assert conn.send_data(b"lo") == b"lo"
    assert conn.send_end() == b""
    assert conn.our_state is DONE


def test_http11_response_without_length_is_chunked_with_exact_chunk_framing() -> None:
    conn = connect(GET11)
    head = conn.send_response(response())
    assert head == b"HTTP/1.1 200 Status\r\nServer: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert conn.send_data(b"hello") == b"5\r\nhello\r\n"
    assert conn.send_data(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert conn.send_data(b"y" * 255) == b"ff\r\n" + b"y" * 255 + b"\r\n"
    assert conn.send_data(b"z" * 4096) == b"1000\r\n" + b"z" * 4096 + b"\r\n"
    # RFC 9112 §7.1: the last chunk (size 0), an empty trailer section, CRLF.
    assert conn.send_end() == b"0\r\n\r\n"
    assert conn.our_state is DONE


def test_empty_send_data_on_chunked_response_emits_nothing() -> None:
    # A zero-size chunk would be the last-chunk: it would end the body early.
    conn = connect(GET11)
    conn.send_response(response())
    assert conn.send_data(b"") == b""
    assert conn.send_data(b"a") == b"1\r\na\r\n"


def test_http12_request_is_refused_as_malformed() -> None:
    # llhttp knows no HTTP/1.2; the request is refused (400) before any response.
    conn = H1Connection()
    conn.receive_data(request(b"GET / HTTP/1.2", b"Host: a"))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.status == 400


@pytest.mark.parametrize("raw", [GET10, GET10_KA], ids=["plain", "keep-alive"])
def test_http10_response_without_length_is_close_delimited(raw: bytes) -> None:
    # RFC 9112 §6.3 ¶8: an HTTP/1.0 client cannot decode chunked; the close delimits.
    conn = connect(raw)
    head = conn.send_response(response())
    got = fields(head)
    assert b"transfer-encoding" not in got
    assert b"content-length" not in got
    assert got[b"connection"] == [b"close"]
    assert conn.send_data(b"raw bytes") == b"raw bytes"
    assert conn.send_end() == b""
    assert conn.our_state is MUST_CLOSE
    assert not conn.keep_alive


def test_response_is_labelled_http11_for_an_http10_client() -> None:
    # RFC 9110 §2.5: a server sends its own highest conforming version.
    conn = connect(GET10)
    assert conn.send_response(response(length=0)).startswith(b"HTTP/1.1 200 Status\r\n")


def test_http10_keep_alive_client_with_length_gets_connection_keep_alive() -> None:
    # RFC 9112 §9.3 / RFC 7230 A.1.2: a 1.0 client only persists if told so.
    conn = connect(GET10_KA)
    head = conn.send_response(response(length=2))
    assert fields(head)[b"connection"] == [b"keep-alive"]
    conn.send_data(b"ok")
    conn.send_end()
    assert conn.our_state is DONE
    assert conn.keep_alive
    conn.start_next_cycle()
    assert (conn.their_state, conn.our_state) == (IDLE, IDLE)


def test_http10_client_without_keep_alive_gets_connection_close() -> None:
    conn = connect(GET10)
    head = conn.send_response(response(length=2))
    assert fields(head)[b"connection"] == [b"close"]
    conn.send_data(b"ok")
    conn.send_end()
    assert conn.our_state is MUST_CLOSE


def test_head_response_keeps_content_length_but_sends_no_body() -> None:
    # RFC 9110 §9.3.2: the same fields as for GET, no content.
    conn = connect(HEAD11)
    head = conn.send_response(response(length=5))
    assert fields(head)[b"content-length"] == [b"5"]
    assert conn.send_data(b"hello") == b""
    assert conn.send_end() == b""
    assert conn.our_state is DONE
    assert conn.keep_alive


def test_head_response_without_length_has_no_framing_fields_and_stays_alive() -> None:
    conn = connect(HEAD11)
    head = conn.send_response(response())
    got = fields(head)
    assert b"transfer-encoding" not in got
    assert b"content-length" not in got
    assert b"connection" not in got
    assert conn.send_data(b"ignored") == b""
    assert conn.send_end() == b""
    conn.start_next_cycle()


@pytest.mark.parametrize("length", [None, 0, 10])
@pytest.mark.parametrize("raw", [GET11, GET10_KA], ids=["http11", "http10"])
def test_204_response_never_carries_content_length_or_body(raw: bytes, length: int | None) -> None:
    # RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204; §15.3.5: no content.
    conn = connect(raw)
    head = conn.send_response(response(204, length))
    got = fields(head)
    assert b"content-length" not in got
    assert b"transfer-encoding" not in got
    assert b"close" not in got.get(b"connection", [])
    assert conn.send_data(b"body") == b""
    assert conn.send_end() == b""
    conn.start_next_cycle()


def test_304_response_keeps_content_length_but_sends_no_body() -> None:
    # RFC 9110 §8.6: in a 304, Content-Length is the length the 200 would have had.
    conn = connect(GET11)
    head = conn.send_response(response(304, 1234))
    assert fields(head)[b"content-length"] == [b"1234"]
    assert conn.send_data(b"body") == b""
    assert conn.send_end() == b""
    conn.start_next_cycle()


def test_304_response_without_length_is_not_chunked() -> None:
    conn = connect(GET11)
    head = conn.send_response(response(304))
    assert b"transfer-encoding" not in fields(head)
    assert conn.send_end() == b""


# ------------------------------------------------------------------ body accounting


def test_send_end_raises_when_fewer_bytes_than_content_length_were_sent() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=5))
    conn.send_data(b"hell")
    with pytest.raises(LocalProtocolError):
        conn.send_end()
    # The client now waits for a byte that never comes: the connection is unusable.
    assert conn.our_state is ERROR
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_send_data_raises_when_more_bytes_than_content_length() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=5))
    conn.send_data(b"hell")
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"o!")


def test_send_data_before_a_response_raises() -> None:
    conn = connect(GET11)
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"x")
    with pytest.raises(LocalProtocolError):
        conn.send_end()


def test_send_data_after_send_end_raises() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=0))
    conn.send_end()
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"x")
    with pytest.raises(LocalProtocolError):
        conn.send_end()


def test_second_response_for_one_request_raises() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=0))
    with pytest.raises(LocalProtocolError):
        conn.send_response(response(length=0))


@pytest.mark.parametrize("status", [100, 101, 199])
def test_informational_status_cannot_be_sent_as_final_response(status: int) -> None:
    conn = connect(GET11)
    with pytest.raises(LocalProtocolError):
        conn.send_response(response(status))
    assert conn.our_state is IDLE


def test_prepare_raw_accounts_for_content_length_bytes() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=10))
    assert conn.prepare_raw(6) is True
    conn.send_data(b"1234")
    assert conn.send_end() == b""


def test_prepare_raw_beyond_content_length_raises() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=10))
    assert conn.prepare_raw(8) is True
    with pytest.raises(LocalProtocolError):
        conn.prepare_raw(3)


def test_prepare_raw_bytes_count_towards_the_length_checked_at_send_end() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=10))
    conn.prepare_raw(9)
    with pytest.raises(LocalProtocolError):
        conn.send_end()


def test_prepare_raw_refuses_a_chunked_body() -> None:
    conn = connect(GET11)
    conn.send_response(response())
    with pytest.raises(LocalProtocolError):
        conn.prepare_raw(5)


@pytest.mark.parametrize(
    ("raw", "status", "length"),
    [(HEAD11, 200, 5), (HEAD11, 200, None), (GET11, 204, None), (GET11, 304, 5)],
    ids=["head-length", "head", "204", "304"],
)
def test_prepare_raw_reports_that_nothing_must_be_sent_without_a_body(
    raw: bytes, status: int, length: int | None
) -> None:
    conn = connect(raw)
    conn.send_response(response(status, length))
    assert conn.prepare_raw(5) is False
    assert conn.send_end() == b""


def test_prepare_raw_allowed_for_a_close_delimited_body() -> None:
    conn = connect(GET10)
    conn.send_response(response())
    assert conn.prepare_raw(1 << 20) is True
    assert conn.send_end() == b""
    assert conn.our_state is MUST_CLOSE


def test_prepare_raw_before_a_response_raises() -> None:
    conn = connect(GET11)
    with pytest.raises(LocalProtocolError):
        conn.prepare_raw(1)


# ------------------------------------------------------------ persistence (RFC 9112 §9)


def test_kept_alive_http11_response_has_no_connection_field_and_cycles_to_idle() -> None:
    conn = connect(GET11)
    head = conn.send_response(response(length=0))
    assert b"connection" not in fields(head)
    assert conn.keep_alive
    conn.send_end()
    assert (conn.their_state, conn.our_state) == (DONE, DONE)
    conn.start_next_cycle()
    assert (conn.their_state, conn.our_state) == (IDLE, IDLE)
    assert conn.next_event() is NEED_DATA


def test_client_connection_close_gets_connection_close_and_must_close() -> None:
    conn = connect(request(b"GET / HTTP/1.1", b"Host: a", b"Connection: close"))
    assert conn.their_state is MUST_CLOSE
    head = conn.send_response(response(length=0))
    assert fields(head)[b"connection"] == [b"close"]
    conn.send_end()
    assert conn.our_state is MUST_CLOSE
    assert not conn.keep_alive
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_response_close_flag_forces_connection_close() -> None:
    conn = connect(GET11)
    head = conn.send_response(response(length=0, close=True))
    assert fields(head)[b"connection"] == [b"close"]
    conn.send_end()
    assert conn.our_state is MUST_CLOSE
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_response_close_flag_overrides_http10_keep_alive() -> None:
    conn = connect(GET10_KA)
    head = conn.send_response(response(length=0, close=True))
    assert fields(head)[b"connection"] == [b"close"]


def test_keep_alive_property_follows_request_and_response() -> None:
    conn = connect(GET11)
    assert conn.keep_alive
    conn.send_response(response(length=0, close=True))
    assert not conn.keep_alive


# ---------------------------------------------- early responses (RFC 9110 §10.1.1, §9.6)


def test_early_response_while_client_waits_for_100_continue_closes() -> None:
    # The client may or may not send the body now; whatever it sends next cannot be
    # parsed safely as a new request (gevent issue #2075: 100-continue smuggling).
    conn = connect(POST_EXPECT, read_body=False)
    assert conn.client_waiting_for_continue
    head = conn.send_response(response(413, length=0))
    assert fields(head)[b"connection"] == [b"close"]
    assert not conn.keep_alive
    conn.send_end()
    assert conn.our_state is MUST_CLOSE


def test_early_response_while_client_waits_for_100_continue_on_chunked_body_closes() -> None:
    conn = connect(POST_EXPECT_CHUNKED, read_body=False)
    head = conn.send_response(response(417, length=0))
    assert fields(head)[b"connection"] == [b"close"]


def test_early_response_with_small_unread_body_keeps_alive_and_body_is_drained() -> None:
    conn = connect(POST_CL10, read_body=False)
    assert conn.body_remaining == 10
    head = conn.send_response(response(length=2))
    assert b"connection" not in fields(head)
    conn.send_data(b"ok")
    conn.send_end()
    assert (conn.their_state, conn.our_state) == (SEND_BODY, DONE)
    # The next cycle must wait for the body to be read (drained) first.
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()
    assert isinstance(conn.next_event(), Data)
    assert isinstance(conn.next_event(), EndOfMessage)
    conn.start_next_cycle()


def test_early_response_with_unread_body_over_max_drain_closes() -> None:
    conn = connect(POST_CL10, Limits(max_drain=9), read_body=False)
    head = conn.send_response(response(length=0))
    assert fields(head)[b"connection"] == [b"close"]
    assert not conn.keep_alive


def test_early_response_with_unread_body_exactly_max_drain_keeps_alive() -> None:
    conn = connect(POST_CL10, Limits(max_drain=10), read_body=False)
    head = conn.send_response(response(length=0))
    assert b"connection" not in fields(head)


def test_max_drain_counts_only_the_body_still_unread() -> None:
    conn = connect(POST_CL10, Limits(max_drain=4), read_body=False)
    assert isinstance(conn.next_event(), Data)  # the whole body was buffered: read it
    assert conn.body_remaining == 0
    head = conn.send_response(response(length=0))
    assert b"connection" not in fields(head)


def test_body_bytes_arriving_end_the_wait_for_100_continue() -> None:
    conn = connect(POST_EXPECT, read_body=False)
    conn.receive_data(b"he")
    assert isinstance(conn.next_event(), Data)
    assert not conn.client_waiting_for_continue
    assert conn.send_continue() == b""
    # Not waiting any more, small remainder: the early response keeps the connection.
    head = conn.send_response(response(length=0))
    assert b"connection" not in fields(head)


# ------------------------------------------------------- 100 Continue (RFC 9110 §15.2.1)


def test_send_continue_returns_100_once_while_client_waits() -> None:
    conn = connect(POST_EXPECT, read_body=False)
    assert conn.send_continue() == CONTINUE
    assert not conn.client_waiting_for_continue
    assert conn.send_continue() == b""


def test_send_continue_then_body_then_response_keeps_alive() -> None:
    conn = connect(POST_EXPECT, read_body=False)
    assert conn.send_continue() == CONTINUE
    conn.receive_data(b"hello")
    assert isinstance(conn.next_event(), Data)
    assert isinstance(conn.next_event(), EndOfMessage)
    head = conn.send_response(response(length=0))
    assert b"connection" not in fields(head)
    conn.send_end()
    conn.start_next_cycle()


@pytest.mark.parametrize(
    "raw",
    [
        request(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 5"),
        request(b"GET / HTTP/1.1", b"Host: a", b"Expect: 100-continue"),
        request(b"POST / HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 5"),
    ],
    ids=["no-expectation", "no-body", "http10"],
)
def test_send_continue_is_empty_when_the_client_does_not_wait(raw: bytes) -> None:
    conn = H1Connection()
    conn.receive_data(raw)
    assert isinstance(conn.next_event(), Request)
    assert not conn.client_waiting_for_continue
    assert conn.send_continue() == b""


def test_send_continue_is_empty_once_a_response_started() -> None:
    conn = connect(POST_EXPECT, read_body=False)
    conn.send_response(response(length=0))
    assert conn.send_continue() == b""


def test_send_continue_is_empty_after_a_protocol_error() -> None:
    conn = connect(POST_EXPECT_CHUNKED, read_body=False)
    conn.receive_data(b"zz\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert not conn.client_waiting_for_continue
    assert conn.send_continue() == b""


# ------------------------------------------------------- cycles (RFC 9112 §9.3.2 rules)


def _fresh() -> H1Connection:
    return H1Connection()


def _head_read() -> H1Connection:
    return connect(POST_CL10, read_body=False)  # (SEND_BODY, IDLE)


def _request_done() -> H1Connection:
    return connect(GET11)  # (DONE, IDLE)


def _responding() -> H1Connection:
    conn = connect(GET11)
    conn.send_response(response())  # (DONE, SEND_BODY)
    return conn


def _both_must_close() -> H1Connection:
    conn = connect(GET10)
    conn.send_response(response(length=0))
    conn.send_end()  # (MUST_CLOSE, MUST_CLOSE)
    return conn


def _after_error() -> H1Connection:
    conn = H1Connection()
    conn.receive_data(b"GET / HTTP/9.9\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn.send_response(response(505, length=0))
    conn.send_end()  # (ERROR, MUST_CLOSE)
    return conn


@pytest.mark.parametrize(
    "make",
    [_fresh, _head_read, _request_done, _responding, _both_must_close, _after_error],
    ids=lambda f: f.__name__.strip("_"),
)
def test_start_next_cycle_is_illegal_unless_both_sides_are_done(make: Callable[[], H1Connection]) -> None:
    conn = make()
    before = (conn.their_state, conn.our_state)
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()
    assert (conn.their_state, conn.our_state) == before


def test_start_next_cycle_cannot_be_called_twice() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=0))
    conn.send_end()
    conn.start_next_cycle()
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_next_request_waits_paused_until_the_response_is_complete() -> None:
    # RFC 9112 §9.3.2: pipelined requests are answered in order; nothing is read ahead.
    conn = H1Connection()
    conn.receive_data(GET11 + request(b"GET /2 HTTP/1.1", b"Host: a"))
    assert isinstance(conn.next_event(), Request)
    assert conn.next_event() is PAUSED
    conn.send_response(response(length=0))
    assert conn.next_event() is PAUSED
    conn.send_end()
    assert conn.next_event() is PAUSED
    conn.start_next_cycle()
    second = conn.next_event()
    assert isinstance(second, Request)
    assert second.target == b"/2"


# ------------------------------------------------------------------ error state


@pytest.mark.parametrize(
    "raw",
    [
        request(b"GET / HTTP/1.1", b"Host: a", b"Content-Length: 1", b"Content-Length: 2"),
        request(b"GET / HTTP/1.0", b"Connection: keep-alive", b"Bad Header: x"),
    ],
    ids=["http11", "http10-keep-alive"],
)
def test_response_after_a_protocol_error_forces_connection_close(raw: bytes) -> None:
    conn = H1Connection()
    conn.receive_data(raw)
    with pytest.raises(RemoteProtocolError) as exc:
        conn.next_event()
    head = conn.send_response(response(exc.value.status, length=0))
    assert fields(head)[b"connection"] == [b"close"]
    assert not conn.keep_alive
    conn.send_end()
    assert conn.our_state is MUST_CLOSE
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_error_in_the_body_forces_connection_close_on_the_response() -> None:
    conn = connect(request(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked"), read_body=False)
    conn.receive_data(b"5\r\nhelloXX")
    assert isinstance(conn.next_event(), Data)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    head = conn.send_response(response(400, length=0))
    assert fields(head)[b"connection"] == [b"close"]


def test_send_failed_makes_the_connection_unusable() -> None:
    conn = connect(GET11)
    conn.send_response(response(length=10))
    conn.send_failed()
    assert conn.our_state is ERROR
    assert not conn.keep_alive
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()
    with pytest.raises(LocalProtocolError):
        conn.send_data(b"x")
