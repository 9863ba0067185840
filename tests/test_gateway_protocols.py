"""The uwsgi and FastCGI front-ends: sans-IO decoders, CGI mapping, and a real server.

* Unit tests of :class:`UwsgiConnection` and :class:`FastCGIConnection` through the
  driver of ``tests/fuzz_gateway.py`` (every stream also fed byte by byte and in random
  splits: the events must not depend on how the bytes arrive).
* The CGI-variables-to-environ mapping (``cgi.request_from_cgi`` + ``build_environ``).
* The fuzz properties with hypothesis (about 300 examples per protocol).
* End to end against a real rapidwsgi listening uwsgi and FastCGI on unix sockets:
  malformed input gets a clean close and a log line, and the worker keeps serving.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rapidwsgi.errors import (
    BadRequest,
    ContentTooLarge,
    HeaderFieldsTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
    URITooLong,
)
from rapidwsgi.events import NEED_DATA, PAUSED, ConnectionClosed, Data, EndOfMessage, Reply, Request, Response
from rapidwsgi.protocols import fastcgi as fcgi
from rapidwsgi.protocols._state import DONE, ERROR, MUST_CLOSE
from rapidwsgi.protocols.base import Limits
from rapidwsgi.protocols.cgi import request_from_cgi
from rapidwsgi.protocols.fastcgi import FastCGIConnection, decode_pairs, encode_pairs, record
from rapidwsgi.protocols.uwsgi import UwsgiConnection, parse_vars
from rapidwsgi.wsgi import EMPTY_INPUT, build_environ
from tests.conftest import ServerProcess
from tests.fuzz_gateway import (
    GET_VARS,
    POST_VARS,
    SMALL_LIMITS,
    Outcome,
    check_stream,
    drive,
    fastcgi_request,
    fuzz_one_input,
    seed_inputs,
    uwsgi_packet,
)
from tests.rawhttp import wait_until

OK = Response(200, b"200 OK", b"Content-Type: text/plain\r\n", content_length=5)


def all_ways(protocol: str, data: bytes, limits: Limits | None = None, seed: int = 0) -> Outcome:
    """``data`` fed whole, byte by byte and in 20 random splits: one outcome, returned."""
    rng = random.Random(seed)
    outcome = check_stream(protocol, data, (), limits, bytewise=True)
    for _ in range(20):
        cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 6))]
        check_stream(protocol, data, cuts, limits)
    return outcome


def events_of(conn: UwsgiConnection | FastCGIConnection, data: bytes, eof: bool = False) -> list[Any]:
    """Every event ``data`` gives (until NEED_DATA or PAUSED), errors included as values."""
    if data:
        conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    out: list[Any] = []
    for _ in range(1000):
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            out.append(exc)
            return out
        if event is NEED_DATA or event is PAUSED:
            return out
        out.append(event)
        if isinstance(event, ConnectionClosed):
            return out
    raise AssertionError("next_event() did not settle")


def parse_records(data: bytes) -> list[tuple[int, int, bytes]]:
    """FastCGI records as (type, request id, content); asserts they are well formed."""
    out = []
    pos = 0
    while pos < len(data):
        version, kind, request_id, length, padding = fcgi.HEADER.unpack_from(data, pos)
        assert version == 1
        pos += fcgi.HEADER.size
        out.append((kind, request_id, data[pos : pos + length]))
        pos += length + padding
        assert pos <= len(data), "truncated record"
    return out


# =============================================================================== uwsgi


def test_uwsgi_get_gives_the_same_request_whole_bytewise_and_split() -> None:
    outcome = all_ways("uwsgi", uwsgi_packet(GET_VARS))
    assert outcome.final == "paused" and outcome.error is None
    [request] = outcome.events
    assert request[1:5] == (b"GET", b"/path/x?q=1", b"/path/x", b"q=1")
    assert (b"host", b"example.com") in request[6]  # type: ignore[operator]
    assert ("REMOTE_ADDR", "192.0.2.1") in request[10]  # type: ignore[operator]


def test_uwsgi_post_gives_request_data_end_whole_bytewise_and_split() -> None:
    outcome = all_ways("uwsgi", uwsgi_packet(POST_VARS, b"hello world"))
    assert [e[0] for e in outcome.events] == ["request", "data", "end"]
    assert outcome.events[1] == ("data", b"hello world")
    assert outcome.events[0][7] == 11  # content_length


def test_uwsgi_request_is_served_once_then_the_connection_must_close() -> None:
    conn = UwsgiConnection()
    [request] = events_of(conn, uwsgi_packet(GET_VARS))
    assert isinstance(request, Request) and not request.keep_alive
    head = conn.send_response(OK)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in head
    conn.send_data(b"hello")
    conn.send_end()
    assert conn.our_state is MUST_CLOSE


def test_uwsgi_response_without_length_is_close_delimited_not_chunked() -> None:
    conn = UwsgiConnection()
    events_of(conn, uwsgi_packet(GET_VARS))
    head = conn.send_response(Response(200, b"200 OK", b""))
    assert b"Transfer-Encoding" not in head
    assert conn.send_data(b"raw") == b"raw"
    assert conn.send_end() == b""


def test_uwsgi_empty_connection_closed_is_a_clean_close() -> None:
    assert [type(e) for e in events_of(UwsgiConnection(), b"", eof=True)] == [ConnectionClosed]


def test_uwsgi_modifier1_other_than_zero_is_refused() -> None:
    [error] = events_of(UwsgiConnection(), uwsgi_packet(GET_VARS, modifier1=5))
    assert isinstance(error, BadRequest) and "modifier1" in error.reason


@pytest.mark.parametrize("cut", [1, 3, 4, 10, 30])
def test_uwsgi_packet_truncated_in_header_or_variables_is_refused_at_eof(cut: int) -> None:
    packet = uwsgi_packet(GET_VARS)
    conn = UwsgiConnection()
    assert events_of(conn, packet[:cut]) == []  # still waiting
    [error] = events_of(conn, b"", eof=True)
    assert isinstance(error, BadRequest)


@pytest.mark.parametrize(
    "block",
    [
        b"\x05",  # truncated name length
        b"\x05\x00abc",  # name overruns the block
        b"\x03\x00abc\x01",  # truncated value length
        b"\x03\x00abc\x09\x00xy",  # value overruns the block
    ],
)
def test_uwsgi_variable_overrunning_the_block_is_refused(block: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_vars(block)
    packet = struct.pack("<BHB", 0, len(block), 0) + block
    [error] = events_of(UwsgiConnection(), packet)
    assert isinstance(error, BadRequest)


def test_uwsgi_body_shorter_than_content_length_at_eof_is_refused() -> None:
    conn = UwsgiConnection()
    events = events_of(conn, uwsgi_packet(POST_VARS, b"hello"), eof=True)
    assert isinstance(events[0], Request) and events[1].data == b"hello"
    assert isinstance(events[-1], BadRequest)


def test_uwsgi_bytes_after_the_body_are_refused() -> None:
    outcome = all_ways("uwsgi", uwsgi_packet(POST_VARS, b"hello world" + b"EXTRA"))
    assert [e[0] for e in outcome.events] == ["request", "data", "end"]
    assert outcome.events[1] == ("data", b"hello world")  # never more than declared
    assert isinstance(outcome.error, BadRequest)


@pytest.mark.parametrize("value", [b"abc", b"-1", b"+5", b" 5", b"1e3", b"0x10", b"9" * 19, b"\xd9\xa3"])
def test_uwsgi_invalid_content_length_is_refused(value: bytes) -> None:
    variables = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", value)]
    [error] = events_of(UwsgiConnection(), uwsgi_packet(variables))
    assert isinstance(error, BadRequest)


def test_uwsgi_packet_without_request_method_is_refused() -> None:
    [error] = events_of(UwsgiConnection(), uwsgi_packet([(b"REQUEST_URI", b"/")]))
    assert isinstance(error, BadRequest)


def test_uwsgi_error_is_terminal_even_if_a_valid_packet_follows() -> None:
    conn = UwsgiConnection()
    [error] = events_of(conn, uwsgi_packet(GET_VARS, modifier1=1))
    assert conn.their_state is ERROR
    [again] = events_of(conn, uwsgi_packet(GET_VARS), eof=True)
    assert again is error


# =============================================================================== FastCGI


def begin(request_id: int = 1, role: int = fcgi.RESPONDER, flags: int = 0) -> bytes:
    return record(fcgi.BEGIN_REQUEST, request_id, struct.pack(">HB5x", role, flags))


def test_fastcgi_post_gives_request_data_end_whole_bytewise_and_split() -> None:
    data = fastcgi_request(POST_VARS, b"hello world", params_split=7, stdin_split=4)
    outcome = all_ways("fastcgi", data)
    assert [e[0] for e in outcome.events] == ["request", "data", "end"]
    assert outcome.events[1] == ("data", b"hello world")
    request = outcome.events[0]
    assert request[1:3] == (b"POST", b"/upload")
    assert (b"content-type", b"text/plain") in request[6]  # type: ignore[operator]


def test_fastcgi_get_without_content_length_ends_with_the_empty_stdin() -> None:
    conn = FastCGIConnection()
    data = fastcgi_request(GET_VARS)
    events = events_of(conn, data[: -fcgi.HEADER.size])  # all but the empty STDIN
    assert [type(e) for e in events] == [Request]
    events = events_of(conn, data[-fcgi.HEADER.size :])
    assert [type(e) for e in events] == [EndOfMessage]
    assert conn.their_state is MUST_CLOSE


def test_fastcgi_keep_conn_carries_a_second_request_after_start_next_cycle() -> None:
    data = fastcgi_request(GET_VARS, keep_conn=True) + fastcgi_request(
        POST_VARS, b"hello world", request_id=2, keep_conn=True
    )
    outcome = all_ways("fastcgi", data)
    assert [e[0] for e in outcome.events] == ["request", "end", "request", "data", "end"]
    assert outcome.final == "closed"  # and the close after it is a clean one

    conn = FastCGIConnection()
    events_of(conn, data)
    assert conn.their_state is DONE and conn.keep_alive
    conn.send_response(OK)
    conn.send_data(b"hello")
    conn.send_end()
    conn.start_next_cycle()
    events = events_of(conn, b"")
    assert [type(e) for e in events] == [Request, Data, EndOfMessage]
    out = conn.send_response(OK) + conn.send_data(b"hello") + conn.send_end()
    assert {request_id for _, request_id, _ in parse_records(out)} == {2}


def test_fastcgi_without_keep_conn_the_connection_must_close_after_the_response() -> None:
    conn = FastCGIConnection()
    events_of(conn, fastcgi_request(GET_VARS))
    assert not conn.keep_alive
    conn.send_response(OK)
    conn.send_data(b"hello")
    conn.send_end()
    assert conn.our_state is MUST_CLOSE
    with pytest.raises(LocalProtocolError):
        conn.start_next_cycle()


def test_fastcgi_get_values_is_answered_with_mpxs_conns_zero() -> None:
    asked = encode_pairs([(b"FCGI_MPXS_CONNS", b""), (b"FCGI_MAX_REQS", b""), (b"FCGI_UNKNOWN", b"")])
    [reply] = events_of(FastCGIConnection(), record(fcgi.GET_VALUES, 0, asked))
    assert isinstance(reply, Reply)
    [(kind, request_id, content)] = parse_records(reply.data)
    assert (kind, request_id) == (fcgi.GET_VALUES_RESULT, 0)
    values = dict(decode_pairs(content))
    assert values[b"FCGI_MPXS_CONNS"] == b"0"
    assert values[b"FCGI_MAX_REQS"].isdigit()
    assert b"FCGI_UNKNOWN" not in values  # only known variables are answered


def test_fastcgi_unknown_management_record_is_answered_with_unknown_type() -> None:
    [reply] = events_of(FastCGIConnection(), record(42, 0, b"whatever"))
    [(kind, request_id, content)] = parse_records(reply.data)
    assert (kind, request_id) == (fcgi.UNKNOWN_TYPE, 0)
    assert content[0] == 42 and len(content) == 8


def test_fastcgi_second_begin_request_while_one_runs_gets_cant_mpx_conn() -> None:
    conn = FastCGIConnection()
    first = fastcgi_request(POST_VARS, b"hello world")
    split = first.index(record(fcgi.STDIN, 1, b"hello world"))
    events = events_of(conn, first[:split] + begin(request_id=7) + first[split:])
    assert [type(e) for e in events] == [Request, Reply, Data, EndOfMessage]
    [(kind, request_id, content)] = parse_records(events[1].data)
    assert (kind, request_id) == (fcgi.END_REQUEST, 7)
    assert content[4] == fcgi.CANT_MPX_CONN
    assert events[2].data == b"hello world"  # the running request was not disturbed


@pytest.mark.parametrize("role", [2, 3])  # AUTHORIZER, FILTER
def test_fastcgi_role_other_than_responder_gets_unknown_role(role: int) -> None:
    conn = FastCGIConnection()
    events = events_of(conn, fastcgi_request(GET_VARS, role=role), eof=True)
    assert isinstance(events[0], Reply)
    [(kind, request_id, content)] = parse_records(events[0].data)
    assert (kind, request_id, content[4]) == (fcgi.END_REQUEST, 1, fcgi.UNKNOWN_ROLE)
    assert not any(isinstance(e, Request) for e in events)


def test_fastcgi_bad_version_is_refused() -> None:
    data = bytearray(fastcgi_request(GET_VARS))
    data[0] = 2
    [error] = events_of(FastCGIConnection(), bytes(data))
    assert isinstance(error, BadRequest) and "version" in error.reason


def test_fastcgi_stdin_beyond_content_length_is_refused() -> None:
    events = events_of(FastCGIConnection(), fastcgi_request(POST_VARS, b"hello world and more"))
    assert isinstance(events[0], Request)
    assert isinstance(events[-1], BadRequest)
    assert not any(isinstance(e, Data) and len(e.data) > 11 for e in events)


def test_fastcgi_stdin_with_content_length_zero_is_refused() -> None:
    variables = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", b"0")]
    events = events_of(FastCGIConnection(), fastcgi_request(variables, b"abc"))
    assert isinstance(events[0], Request)
    assert not any(isinstance(e, Data) for e in events), "a body was accepted after CONTENT_LENGTH: 0"
    assert isinstance(events[-1], BadRequest)


def test_fastcgi_stdin_ending_before_content_length_is_refused() -> None:
    events = events_of(FastCGIConnection(), fastcgi_request(POST_VARS, b"short"))
    assert isinstance(events[-1], BadRequest)


def test_fastcgi_connection_closed_inside_a_request_is_refused() -> None:
    data = fastcgi_request(POST_VARS, b"hello world")
    events = events_of(FastCGIConnection(), data[:-8], eof=True)
    assert isinstance(events[-1], BadRequest)


def test_fastcgi_stdout_record_from_the_gateway_is_refused() -> None:
    [error] = events_of(FastCGIConnection(), record(fcgi.STDOUT, 1, b"x"))
    assert isinstance(error, BadRequest)


def test_fastcgi_records_for_an_inactive_request_are_ignored() -> None:
    stray = record(fcgi.PARAMS, 9, encode_pairs(GET_VARS)) + record(fcgi.STDIN, 9, b"x")
    events = events_of(FastCGIConnection(), stray + fastcgi_request(GET_VARS))
    assert [type(e) for e in events] == [Request, EndOfMessage]


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ([*GET_VARS, *((b"X_VAR_%d" % i, b"v") for i in range(100))], HeaderFieldsTooLarge),  # too many
        ([*GET_VARS, (b"HTTP_X_BIG", b"x" * 300)], HeaderFieldsTooLarge),  # one field too large
        ([*GET_VARS, (b"X_HUGE", b"x" * 5000)], HeaderFieldsTooLarge),  # params beyond max_head
        ([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/" + b"a" * 100)], URITooLong),
        (
            [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", b"1000")],
            ContentTooLarge,
        ),
    ],
)
def test_fastcgi_params_over_the_limits_are_refused(
    params: list[tuple[bytes, bytes]], error: type[RemoteProtocolError]
) -> None:
    limits = Limits(max_line=64, max_fields=10, max_field_size=200, max_body=100)
    outcome = all_ways("fastcgi", fastcgi_request(params), limits)
    assert type(outcome.error) is error
    assert outcome.events == []


def test_fastcgi_truncated_name_value_pairs_are_refused() -> None:
    for bad in (b"\x05", b"\x80\x00", b"\x05\x05abc", b"\x01\x80\x00\x00\x10ab"):
        with pytest.raises(BadRequest):
            decode_pairs(bad)
    pairs = [(b"A" * 200, b"B" * 300), (b"", b""), (b"k", b"v")]
    assert decode_pairs(encode_pairs(pairs)) == pairs


def response_records(conn: FastCGIConnection, response: Response, body: Sequence[bytes]) -> list[Any]:
    out = conn.send_response(response)
    for piece in body:
        out += conn.send_data(piece)
    out += conn.send_end()
    return parse_records(out)


def test_fastcgi_response_is_stdout_records_then_empty_stdout_then_end_request() -> None:
    conn = FastCGIConnection()
    events_of(conn, fastcgi_request(GET_VARS, request_id=3))
    records = response_records(conn, OK, [b"hel", b"lo"])
    assert all(request_id == 3 for _, request_id, _ in records)
    kinds = [kind for kind, _, _ in records]
    assert kinds[-2:] == [fcgi.STDOUT, fcgi.END_REQUEST]
    assert records[-2][2] == b""  # the empty STDOUT ends the stream
    assert records[-1][2][:5] == b"\x00\x00\x00\x00" + bytes((fcgi.REQUEST_COMPLETE,))
    stdout = b"".join(content for kind, _, content in records if kind == fcgi.STDOUT)
    head, _, body = stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 200 OK\r\n")
    assert b"Content-Length: 5" in head.split(b"\r\n")
    assert b"HTTP/1.1" not in head
    assert body == b"hello"


def test_fastcgi_response_without_length_has_no_chunked_coding() -> None:
    conn = FastCGIConnection()
    events_of(conn, fastcgi_request(GET_VARS, keep_conn=True))
    records = response_records(conn, Response(200, b"200 OK", b""), [b"one", b"two"])
    stdout = b"".join(content for kind, _, content in records if kind == fcgi.STDOUT)
    head, _, body = stdout.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert body == b"onetwo"
    assert conn.our_state is DONE  # the records delimit the body: the connection stays


def test_fastcgi_large_response_body_is_cut_into_records_of_at_most_65535_bytes() -> None:
    conn = FastCGIConnection()
    events_of(conn, fastcgi_request(GET_VARS))
    body = bytes(range(256)) * 1000
    records = response_records(conn, Response(200, b"200 OK", b"", content_length=len(body)), [body])
    assert all(len(content) <= 65535 for _, _, content in records)
    stdout = b"".join(content for kind, _, content in records if kind == fcgi.STDOUT)
    assert stdout.partition(b"\r\n\r\n")[2] == body


def test_fastcgi_head_response_has_no_body_records() -> None:
    conn = FastCGIConnection()
    head_vars = [(b"REQUEST_METHOD", b"HEAD"), (b"REQUEST_URI", b"/")]
    events_of(conn, fastcgi_request(head_vars))
    records = response_records(conn, OK, [b"hello"])
    stdout = [content for kind, _, content in records if kind == fcgi.STDOUT]
    assert stdout[-1] == b"" and len(stdout) == 2  # the head, then the empty STDOUT
    assert stdout[0].endswith(b"\r\n\r\n") and b"Content-Length: 5" in stdout[0]
    assert records[-1][0] == fcgi.END_REQUEST


def test_fastcgi_never_sends_100_continue_nor_raw_bodies() -> None:
    conn = FastCGIConnection()
    variables = [*POST_VARS, (b"HTTP_EXPECT", b"100-continue")]
    events_of(conn, fastcgi_request(variables)[:60])
    assert conn.send_continue() == b""
    conn2 = FastCGIConnection()
    events_of(conn2, fastcgi_request(GET_VARS))
    conn2.send_response(OK)
    with pytest.raises(LocalProtocolError):
        conn2.prepare_raw(5)


# =============================================================================== CGI mapping

BASE = {"SCRIPT_NAME": "", "wsgi.url_scheme": "http", "REMOTE_ADDR": "", "REMOTE_PORT": ""}


def environ_for(variables: list[tuple[bytes, bytes]], base: dict[str, Any] | None = None) -> dict[str, Any]:
    request = request_from_cgi(variables, Limits())
    return build_environ(dict(base or BASE), request, EMPTY_INPUT)


def test_cgi_nginx_default_script_name_equal_to_the_path_is_not_a_mount_point() -> None:
    environ = environ_for(
        [
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/app/page?x=1"),
            (b"QUERY_STRING", b"x=1"),
            (b"SCRIPT_NAME", b"/app/page"),
            (b"DOCUMENT_URI", b"/app/page"),
        ]
    )
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/app/page")
    assert environ["QUERY_STRING"] == "x=1"


def test_cgi_explicit_mount_script_name_is_stripped_from_path_info() -> None:
    environ = environ_for(
        [
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/app/page/sub"),
            (b"SCRIPT_NAME", b"/app"),
            (b"DOCUMENT_URI", b"/app/page/sub"),
        ]
    )
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/page/sub")


def test_cgi_path_info_given_by_the_gateway_is_used_and_an_empty_one_is_computed() -> None:
    given_ = environ_for(
        [
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/m/x%20y"),
            (b"SCRIPT_NAME", b"/m"),
            (b"PATH_INFO", b"/x y"),
        ]
    )
    assert (given_["SCRIPT_NAME"], given_["PATH_INFO"]) == ("/m", "/x y")
    empty = environ_for([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/a%C3%A9"), (b"PATH_INFO", b"")])
    assert empty["PATH_INFO"] == "/a\u00c3\u00a9"  # latin-1 of the UTF-8 bytes


def test_cgi_target_is_rebuilt_from_path_info_and_query_without_request_uri() -> None:
    environ = environ_for([(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/a b"), (b"QUERY_STRING", b"k=v")])
    assert environ["PATH_INFO"] == "/a b"
    assert environ["QUERY_STRING"] == "k=v"
    assert environ["RAW_URI"] == "/a%20b?k=v"


@pytest.mark.parametrize(
    ("variables", "scheme"),
    [
        ([(b"HTTPS", b"on")], "https"),
        ([(b"HTTPS", b"1")], "https"),
        ([(b"HTTPS", b"off")], "http"),
        ([(b"REQUEST_SCHEME", b"https")], "https"),
        ([(b"REQUEST_SCHEME", b"http"), (b"HTTPS", b"on")], "https"),
        ([(b"REQUEST_SCHEME", b"http")], "http"),
        ([], "http"),
    ],
)
def test_cgi_https_and_request_scheme_set_wsgi_url_scheme(
    variables: list[tuple[bytes, bytes]], scheme: str
) -> None:
    environ = environ_for([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/"), *variables])
    assert environ["wsgi.url_scheme"] == scheme


def test_cgi_remote_addr_server_name_and_protocol_are_passed_through() -> None:
    environ = environ_for(
        [
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/"),
            (b"REMOTE_ADDR", b"198.51.100.4"),
            (b"REMOTE_PORT", b"40123"),
            (b"SERVER_NAME", b"example.com"),
            (b"SERVER_PROTOCOL", b"HTTP/1.0"),
        ]
    )
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("198.51.100.4", "40123")
    assert environ["SERVER_NAME"] == "example.com"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_cgi_headers_content_type_and_length_land_where_pep3333_puts_them() -> None:
    environ = environ_for(
        [
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/"),
            (b"CONTENT_LENGTH", b"12"),
            (b"CONTENT_TYPE", b"application/json"),
            (b"HTTP_X_CUSTOM_THING", b"value"),
        ]
    )
    assert environ["CONTENT_LENGTH"] == "12"
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["HTTP_X_CUSTOM_THING"] == "value"
    assert "HTTP_CONTENT_LENGTH" not in environ and "HTTP_CONTENT_TYPE" not in environ


# What each front-end sends for GET /echo/x?q=1 (observed with the real servers; see
# docs/deploy.md). The app must see one environ whichever it is.
FRONT_END_VARIABLES = {
    "nginx uwsgi_params": [(b"PATH_INFO", b"/echo/x")],
    "nginx fastcgi_params": [(b"SCRIPT_NAME", b"/echo/x"), (b"DOCUMENT_URI", b"/echo/x")],
    "Apache mod_proxy_fcgi": [(b"SCRIPT_NAME", b"/echo/x")],
    "HAProxy fcgi-app": [(b"SCRIPT_NAME", b"/echo/x"), (b"PATH_INFO", b"")],
    "lighttpd fix-root-scriptname": [(b"SCRIPT_NAME", b""), (b"PATH_INFO", b"/echo/x")],
}


@pytest.mark.parametrize("front_end", FRONT_END_VARIABLES)
def test_cgi_path_info_comes_from_request_uri_whatever_the_front_end_split(front_end: str) -> None:
    environ = environ_for(
        [
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/echo/x?q=1"),
            (b"QUERY_STRING", b"q=1"),
            *FRONT_END_VARIABLES[front_end],
        ]
    )
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["QUERY_STRING"]) == ("", "/echo/x", "q=1")


@pytest.mark.parametrize("path", [b"/admin/", b"/a/b/", b"/"])
def test_cgi_whole_path_script_name_with_a_trailing_slash_is_no_mount_point(path: bytes) -> None:
    # Django's URLs end in "/": Apache mod_proxy_fcgi and HAProxy fcgi-app send them
    # whole as SCRIPT_NAME, which must not become SCRIPT_NAME=/admin, PATH_INFO=/.
    environ = environ_for([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", path), (b"SCRIPT_NAME", path)])
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", path.decode())


@pytest.mark.parametrize(("script_name", "path"), [(b"/app/", b"/app/x/"), (b"/app", b"/app/")])
def test_cgi_mount_point_above_a_trailing_slash_path_is_kept(script_name: bytes, path: bytes) -> None:
    environ = environ_for(
        [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", path), (b"SCRIPT_NAME", script_name)]
    )
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", path.decode()[4:])


def test_cgi_lighttpd_first_segment_split_is_kept_as_a_mount_point() -> None:
    # lighttpd with a "/" prefix and no fix-root-scriptname: indistinguishable from a
    # real mount at /echo, so it is taken as one (docs/deploy.md: the config line).
    environ = environ_for(
        [
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/echo/x"),
            (b"SCRIPT_NAME", b"/echo"),
            (b"PATH_INFO", b"/x"),
        ]
    )
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/echo", "/x")


def test_cgi_path_info_is_the_raw_target_decoded_not_the_gateways_normalised_one() -> None:
    # nginx's $document_uri merges slashes and resolves dot segments; over HTTP the app
    # sees the target as sent, and over a gateway too.
    environ = environ_for(
        [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/a//b%2Fc"), (b"PATH_INFO", b"/a/b/c")]
    )
    assert environ["PATH_INFO"] == "/a//b/c"
    assert environ["RAW_URI"] == "/a//b%2Fc"


@pytest.mark.parametrize(
    "gateway_script_name", [b"", b"/app/page", b"/app", b"/other"], ids=["none", "whole", "same", "other"]
)
def test_cgi_root_path_wins_over_the_gateways_script_name(gateway_script_name: bytes) -> None:
    variables = [
        (b"REQUEST_METHOD", b"GET"),
        (b"REQUEST_URI", b"/app/page"),
        (b"SCRIPT_NAME", gateway_script_name),
    ]
    environ = environ_for(variables, {**BASE, "SCRIPT_NAME": "/app"})
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/page")


def test_cgi_root_path_above_a_path_outside_it_leaves_the_whole_path() -> None:
    environ = environ_for(
        [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/elsewhere")], {**BASE, "SCRIPT_NAME": "/app"}
    )
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/elsewhere")


def test_cgi_percent_encoded_mount_point_matches_the_decoded_path() -> None:
    environ = environ_for(
        [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/my%20app/x"), (b"SCRIPT_NAME", b"/my app")]
    )
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/my app", "/x")


def test_cgi_target_is_rebuilt_from_script_name_and_path_info_without_request_uri() -> None:
    environ = environ_for([(b"REQUEST_METHOD", b"GET"), (b"SCRIPT_NAME", b"/m"), (b"PATH_INFO", b"/x")])
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["RAW_URI"]) == ("/m", "/x", "/m/x")


NGINX_POST = [
    (b"REQUEST_METHOD", b"POST"),
    (b"REQUEST_URI", b"/form"),
    (b"CONTENT_TYPE", b"application/x-www-form-urlencoded"),
    (b"CONTENT_LENGTH", b"7"),
]


def test_cgi_http_content_type_and_length_twins_that_agree_are_dropped() -> None:
    # nginx's stock params send both the CGI variable and the header (bug: the two were
    # joined, "a, a", and Django's request.POST came out empty).
    twins = [(b"HTTP_CONTENT_TYPE", b"application/x-www-form-urlencoded"), (b"HTTP_CONTENT_LENGTH", b"7")]
    environ = environ_for([*NGINX_POST, *twins])
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ


@pytest.mark.parametrize(
    "twin",
    [(b"HTTP_CONTENT_TYPE", b"text/plain"), (b"HTTP_CONTENT_LENGTH", b"8"), (b"HTTP_CONTENT_LENGTH", b"07")],
)
def test_cgi_twin_that_disagrees_with_its_cgi_variable_is_a_400(twin: tuple[bytes, bytes]) -> None:
    with pytest.raises(BadRequest, match="disagrees") as info:
        request_from_cgi([*NGINX_POST, twin], Limits())
    assert info.value.status == 400


def test_cgi_twin_alone_stands_for_its_cgi_variable() -> None:
    environ = environ_for(
        [
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/"),
            (b"HTTP_CONTENT_TYPE", b"text/csv"),
            (b"HTTP_CONTENT_LENGTH", b"3"),
        ]
    )
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("text/csv", "3")


@pytest.mark.parametrize("length", [b"", b"-1", None], ids=["empty", "minus-one", "absent"])
def test_fastcgi_post_with_unknown_length_reads_stdin_to_its_end(length: bytes | None) -> None:
    # Caddy's FastCGI transport sends CONTENT_LENGTH=-1 for a chunked request body.
    variables = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/digest")]
    if length is not None:
        variables.append((b"CONTENT_LENGTH", length))
    outcome = all_ways("fastcgi", fastcgi_request(variables, b"chunked body", stdin_split=5))
    assert [e[0] for e in outcome.events] == ["request", "data", "end"]
    assert outcome.events[1] == ("data", b"chunked body")
    request = request_from_cgi(variables, Limits(), length_optional=True)
    assert request.content_length == 0
    assert not any(name == b"content-length" for name, _ in request.headers)
    assert "CONTENT_LENGTH" not in build_environ(dict(BASE), request, EMPTY_INPUT)


def test_fastcgi_unknown_length_body_beyond_the_limit_is_413() -> None:
    conn = FastCGIConnection(Limits(max_body=10))
    variables = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", b"-1")]
    events = events_of(conn, fastcgi_request(variables, b"x" * 11))
    assert isinstance(events[-1], ContentTooLarge)


def test_uwsgi_content_length_minus_one_is_still_refused() -> None:
    with pytest.raises(BadRequest, match="CONTENT_LENGTH"):
        request_from_cgi(
            [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", b"-1")], Limits()
        )


@pytest.mark.parametrize(("length", "expected"), [(b"0", "0"), (b"", None), (None, None)])
def test_cgi_content_length_zero_is_kept_and_an_absent_one_stays_absent(
    length: bytes | None, expected: str | None
) -> None:
    variables = [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/")]
    if length is not None:
        variables.append((b"CONTENT_LENGTH", length))
    assert environ_for(variables).get("CONTENT_LENGTH") == expected


# =============================================================================== properties

FUZZ_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cuts = st.lists(st.integers(0, 1 << 16), max_size=8)
limits = st.sampled_from([None, Limits(**SMALL_LIMITS)])
names = st.sampled_from(
    [
        b"REQUEST_METHOD",
        b"REQUEST_URI",
        b"QUERY_STRING",
        b"CONTENT_LENGTH",
        b"HTTP_HOST",
        b"HTTPS",
        b"SCRIPT_NAME",
        b"",
    ]
)
values = st.sampled_from(
    [b"GET", b"POST", b"/", b"/a?b", b"0", b"3", b"-1", b"on", b"", b"x" * 40]
) | st.binary(max_size=12)
variables = st.lists(st.tuples(names, values), max_size=8)
mutations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3)


def mutate(data: bytes, ops: Sequence[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, arg in ops:
        at = pos % (len(buf) + 1)
        if kind == 0:
            buf[at:at] = bytes((arg,))
        elif kind == 1 and buf:
            del buf[at : at + 1 + arg % 8]
        elif kind == 2 and buf:
            buf[at % len(buf)] = arg
        elif kind == 3:
            del buf[at:]
    return bytes(buf)


@st.composite
def uwsgi_streams(draw: st.DrawFn) -> bytes:
    packet = uwsgi_packet(
        draw(variables),
        draw(st.binary(max_size=10)),
        draw(st.sampled_from([0, 0, 0, 1])),
        draw(st.integers(0, 255)),
    )
    return mutate(packet, draw(mutations))


@st.composite
def fastcgi_streams(draw: st.DrawFn) -> bytes:
    records = []
    for _ in range(draw(st.integers(1, 3))):
        records.append(
            fastcgi_request(
                draw(variables),
                draw(st.binary(max_size=10)),
                request_id=draw(st.sampled_from([1, 2])),
                keep_conn=draw(st.booleans()),
                role=draw(st.sampled_from([1, 1, 1, 2])),
                params_split=draw(st.integers(0, 9)),
                stdin_split=draw(st.integers(0, 4)),
            )
        )
    extra = draw(
        st.lists(
            st.builds(record, st.integers(0, 12), st.sampled_from([0, 1, 2]), st.binary(max_size=16)),
            max_size=3,
        )
    )
    stream = b"".join(records)
    for item in extra:
        at = draw(st.integers(0, len(stream) // 8)) * 8
        stream = stream[:at] + item + stream[at:]
    return mutate(stream, draw(mutations))


@FUZZ_SETTINGS
@given(data=uwsgi_streams(), cuts=cuts, limits=limits, stream=st.booleans())
def test_uwsgi_mutated_packets_give_only_protocol_errors_and_the_same_events_however_split(
    data: bytes, cuts: list[int], limits: Limits | None, stream: bool
) -> None:
    check_stream("uwsgi", data, cuts, limits, bytewise=True, stream_response=stream)


#: A body sent after CONTENT_LENGTH: 0 (the checks compare bodies with their declared length).
CL0_WITH_BODY = fastcgi_request(
    [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", b"0")], b"abc"
)


@FUZZ_SETTINGS
@example(data=CL0_WITH_BODY, cuts=[], limits=None, stream=False)
@given(data=fastcgi_streams(), cuts=cuts, limits=limits, stream=st.booleans())
def test_fastcgi_mutated_records_give_only_protocol_errors_and_the_same_events_however_split(
    data: bytes, cuts: list[int], limits: Limits | None, stream: bool
) -> None:
    check_stream("fastcgi", data, cuts, limits, bytewise=True, stream_response=stream)


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=600))
def test_fuzz_entry_point_accepts_arbitrary_bytes(raw: bytes) -> None:
    fuzz_one_input(raw)


def test_fuzz_seeds_pass_the_checks() -> None:
    for seed in seed_inputs():
        fuzz_one_input(seed)


def test_split_checker_notices_a_decoder_that_depends_on_the_split() -> None:
    """The checker itself: an outcome that differs with the split is reported."""

    class Flaky:
        """A uwsgi decoder with a bug (a wrapper: compiled classes cannot be subclassed)."""

        def __init__(self, limits: Limits | None = None) -> None:
            self._inner = UwsgiConnection(limits)
            self._seen_one = False

        def receive_data(self, data: bytes) -> None:
            self._inner.receive_data(data)
            if len(data) == 1 and not self._seen_one:
                self._seen_one = True
                self._inner.receive_data(b"\x00")  # a decoder bug: a byte from nowhere

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    from tests import fuzz_gateway

    original = fuzz_gateway.PROTOCOLS["uwsgi"]
    fuzz_gateway.PROTOCOLS["uwsgi"] = Flaky
    try:
        with pytest.raises(AssertionError, match="split"):
            check_stream("uwsgi", uwsgi_packet(GET_VARS), bytewise=True)
    finally:
        fuzz_gateway.PROTOCOLS["uwsgi"] = original
    assert drive("uwsgi", [uwsgi_packet(GET_VARS)]).final == "paused"


# =============================================================================== end to end


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One rapidwsgi listening FastCGI and uwsgi on two unix sockets (small field limit)."""
    base = tmp_path_factory.mktemp("gw")
    server = ServerProcess(
        "apps:app",
        "--bind",
        f"unix:{base}/fcgi.sock",
        "--bind",
        f"unix:{base}/uwsgi.sock",
        "--protocol",
        "fastcgi",
        "--protocol",
        "uwsgi",
        "--limit-request-field-size",
        "200",
        bind=None,
        listeners=2,
    )
    yield server
    try:
        server.stop(timeout=10)
    except Exception:
        server.proc.kill()


def socket_of(server: ServerProcess, protocol: str) -> str:
    address = server.addresses[0 if protocol == "fastcgi" else 1]
    assert isinstance(address, str)
    return address


def exchange(path: str, data: bytes, *, half_close: bool = True, timeout: float = 5.0) -> tuple[bytes, str]:
    """Send ``data`` (then half-close); everything received until the server closes,
    and how it closed: "eof", "reset" or "timeout"."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return bytes(received), "reset"
            except TimeoutError:
                break
            if not chunk:
                return bytes(received), "eof"
            received += chunk
        return bytes(received), "timeout"


def fastcgi_stdout(data: bytes) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    records = parse_records(data)
    return b"".join(content for kind, _, content in records if kind == fcgi.STDOUT), records


HELLO_VARS = [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/hello"), (b"SERVER_PROTOCOL", b"HTTP/1.1")]


def assert_serves(server: ServerProcess, protocol: str) -> None:
    """A good request on a new connection gets its complete response."""
    if protocol == "uwsgi":
        data, how = exchange(socket_of(server, protocol), uwsgi_packet(HELLO_VARS))
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nHello, world!")
    else:
        data, how = exchange(socket_of(server, protocol), fastcgi_request(HELLO_VARS))
        stdout, records = fastcgi_stdout(data)
        assert stdout.startswith(b"Status: 200 OK\r\n") and stdout.endswith(b"\r\n\r\nHello, world!")
        assert records[-1][0] == fcgi.END_REQUEST
    assert how == "eof"


def test_e2e_uwsgi_and_fastcgi_serve_a_request_with_its_body(gateway_server: ServerProcess) -> None:
    body = b"0123456789" * 10_000
    variables = [
        (b"REQUEST_METHOD", b"POST"),
        (b"REQUEST_URI", b"/digest"),
        (b"CONTENT_LENGTH", b"%d" % len(body)),
    ]
    data, how = exchange(socket_of(gateway_server, "uwsgi"), uwsgi_packet(variables, body))
    assert how == "eof" and data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(data.partition(b"\r\n\r\n")[2])["length"] == len(body)
    data, how = exchange(
        socket_of(gateway_server, "fastcgi"), fastcgi_request(variables, body, stdin_split=30_000)
    )
    stdout, _ = fastcgi_stdout(data)
    assert how == "eof" and stdout.startswith(b"Status: 200 OK\r\n")
    assert json.loads(stdout.partition(b"\r\n\r\n")[2])["length"] == len(body)


def test_e2e_fastcgi_keep_conn_serves_two_requests_on_one_connection(gateway_server: ServerProcess) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(socket_of(gateway_server, "fastcgi"))
        for request_id in (1, 2):
            sock.sendall(fastcgi_request(HELLO_VARS, request_id=request_id, keep_conn=True))
            received = b""
            deadline = time.monotonic() + 5
            while fcgi.HEADER.pack(1, fcgi.END_REQUEST, request_id, 8, 0) not in received:
                assert time.monotonic() < deadline, received
                chunk = sock.recv(65536)
                assert chunk, "the server closed a FCGI_KEEP_CONN connection"
                received += chunk
            stdout, records = fastcgi_stdout(received)
            assert stdout.endswith(b"Hello, world!")
            assert {rid for _, rid, _ in records} == {request_id}


BAD_UWSGI = {
    "truncated-header": (uwsgi_packet(HELLO_VARS)[:3], "packet header"),
    "truncated-vars": (uwsgi_packet(HELLO_VARS)[:20], "inside the variables"),
    "modifier1": (uwsgi_packet(HELLO_VARS, modifier1=9), "modifier1"),
    "oversized-var": (uwsgi_packet([*HELLO_VARS, (b"HTTP_X_BIG", b"x" * 400)]), "too large"),
    "overrunning-var": (struct.pack("<BHB", 0, 6, 0) + b"\x09\x00abcd", "overruns"),
    "short-body": (uwsgi_packet([*POST_VARS[:3]], b"hello"), "before the body was complete"),
    "bad-length": (
        uwsgi_packet([(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/"), (b"CONTENT_LENGTH", b"x")]),
        "CONTENT_LENGTH",
    ),
}


@pytest.mark.parametrize("case", BAD_UWSGI)
def test_e2e_bad_uwsgi_input_gets_an_error_a_clean_close_and_a_log_line(
    gateway_server: ServerProcess, case: str
) -> None:
    payload, reason = BAD_UWSGI[case]
    mark = len(gateway_server.stderr)
    data, how = exchange(socket_of(gateway_server, "uwsgi"), payload)
    assert how == "eof"
    assert data.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")) and b"Connection: close\r\n" in data
    assert wait_until(lambda: reason in gateway_server.stderr[mark:], timeout=5), gateway_server.stderr[mark:]
    assert "Bad request from unix" in gateway_server.stderr[mark:]
    assert_serves(gateway_server, "uwsgi")


def test_e2e_uwsgi_body_longer_than_declared_is_logged_and_the_connection_closed(
    gateway_server: ServerProcess,
) -> None:
    mark = len(gateway_server.stderr)
    variables = [(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/echo"), (b"CONTENT_LENGTH", b"3")]
    data, how = exchange(socket_of(gateway_server, "uwsgi"), uwsgi_packet(variables, b"abcSMUGGLED"))
    assert how == "eof"
    assert b"SMUGGLED" not in data  # the app never saw more than declared
    assert wait_until(lambda: "bytes after the request body" in gateway_server.stderr[mark:], timeout=3), (
        "bytes beyond the declared body were silently ignored:\n" + gateway_server.stderr[mark:]
    )
    assert_serves(gateway_server, "uwsgi")


BAD_FASTCGI = {
    "truncated-record": (fastcgi_request(HELLO_VARS)[:20], "connection closed inside"),
    "oversized-param": (fastcgi_request([*HELLO_VARS, (b"HTTP_X_BIG", b"x" * 400)]), "too large"),
    "stdin-beyond-length": (fastcgi_request(POST_VARS, b"hello world, and more"), "STDIN longer"),
    "stdin-short": (fastcgi_request(POST_VARS, b"hello"), "STDIN ended before"),
    "stdout-in-request": (begin() + record(fcgi.STDOUT, 1, b"x"), "out of order"),
}


@pytest.mark.parametrize("case", BAD_FASTCGI)
def test_e2e_bad_fastcgi_input_in_a_request_gets_an_error_a_clean_close_and_a_log_line(
    gateway_server: ServerProcess, case: str
) -> None:
    payload, reason = BAD_FASTCGI[case]
    mark = len(gateway_server.stderr)
    data, how = exchange(socket_of(gateway_server, "fastcgi"), payload)
    assert how == "eof"
    stdout, records = fastcgi_stdout(data)
    assert {request_id for _, request_id, _ in records} <= {1}, records
    if records:  # a CGI error response for the request, properly ended
        assert stdout.startswith((b"Status: 400 ", b"Status: 431 "))
        assert records[-1][0] == fcgi.END_REQUEST
    assert wait_until(lambda: reason in gateway_server.stderr[mark:], timeout=5), gateway_server.stderr[mark:]
    assert_serves(gateway_server, "fastcgi")


BAD_FASTCGI_OUTSIDE = {
    "bad-version": (b"\x02" + fastcgi_request(HELLO_VARS)[1:], "unsupported version"),
    "stray-stdout": (record(fcgi.STDOUT, 1, b"x"), "unexpected record type"),
}


@pytest.mark.parametrize("case", BAD_FASTCGI_OUTSIDE)
def test_e2e_bad_fastcgi_input_before_any_request_is_closed_without_records_for_request_id_0(
    gateway_server: ServerProcess, case: str
) -> None:
    """Request id 0 is reserved for management records (FastCGI §3.3): a refusal before
    any BEGIN_REQUEST has no request to answer, so the connection is simply closed."""
    payload, reason = BAD_FASTCGI_OUTSIDE[case]
    mark = len(gateway_server.stderr)
    data, how = exchange(socket_of(gateway_server, "fastcgi"), payload)
    assert how == "eof"
    assert wait_until(lambda: reason in gateway_server.stderr[mark:], timeout=5), gateway_server.stderr[mark:]
    assert_serves(gateway_server, "fastcgi")
    records = parse_records(data)
    assert not [(kind, rid) for kind, rid, _ in records if kind in (fcgi.STDOUT, fcgi.END_REQUEST)], records
