"""HTTP/1.1 over the wire: a real server process, raw bytes over TCP and unix sockets.

Server behaviour is checked in both dispatch modes (inline: ``--threads 1``; threaded:
``--threads 4``) and, where the transport cannot matter, over both TCP and a unix socket.
Servers are shared per module (see :class:`tests.rawhttp.ServerPool`); a test that kills
its server fails in teardown.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from email.utils import parsedate_to_datetime

import pytest

from tests.conftest import ServerProcess
from tests.rawhttp import (
    SERVER_MODES,
    ServerPool,
    assert_still_serving,
    chunked_post,
    connect,
    get,
    head,
    json_of,
    post,
    wait_until,
)

LIMITS = ("--limit-request-line", "100", "--limit-request-fields", "5", "--limit-request-body", "10")


pytestmark = pytest.mark.usefixtures("servers_survive")  # pool: conftest.py


@pytest.fixture
def server(pool: ServerPool, mode: str, transport: str) -> ServerProcess:
    """The default app in each mode, over each transport."""
    return pool.get(*SERVER_MODES[mode], transport=transport)


@pytest.fixture
def threaded_server(pool: ServerPool, transport: str) -> ServerProcess:
    return pool.get(*SERVER_MODES["threaded"], transport=transport)


@pytest.fixture
def inline_server(pool: ServerPool, transport: str) -> ServerProcess:
    return pool.get(*SERVER_MODES["inline"], transport=transport)


@pytest.fixture
def limited_server(pool: ServerPool, mode: str, transport: str) -> ServerProcess:
    """Small limits: request line 100 bytes, 5 header fields, 10 body bytes."""
    return pool.get(*SERVER_MODES[mode], *LIMITS, transport=transport)


# ------------------------------------------------------------------ persistence


def test_http11_connection_is_kept_alive_by_default(server: ServerProcess) -> None:
    with connect(server) as conn:
        for _ in range(3):
            response = conn.request(get("/hello"))
            assert response.status == 200
            assert response.header("connection") is None
        assert not conn.data_within(0.3), "the server closed a keep-alive connection"
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_http10_request_without_keep_alive_is_answered_then_closed(server: ServerProcess) -> None:
    with connect(server) as conn:
        response = conn.request(b"GET /hello HTTP/1.0\r\n\r\n")
        assert (response.status, response.body) == (200, b"Hello, world!")
        assert response.header("connection") in (None, "close")
        assert conn.closed_within(3)


def test_http10_keep_alive_request_is_kept_alive_and_says_so(server: ServerProcess) -> None:
    with connect(server) as conn:
        for _ in range(2):
            response = conn.request(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert (response.status, response.body) == (200, b"Hello, world!")
            assert response.header("connection") == "keep-alive"
        assert not conn.data_within(0.3)


def test_connection_close_request_is_answered_with_close_and_later_requests_are_ignored(
    server: ServerProcess,
) -> None:
    with connect(server) as conn:
        conn.send(get("/hello", headers="Connection: close\r\n") + get("/hello"))
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"Hello, world!")
        assert response.header("connection") == "close"
        rest, outcome = conn.read_to_end(5)
        assert rest == b"", "a request pipelined after Connection: close was answered"
        assert outcome == "eof"


def test_pipelined_mixed_requests_are_answered_in_order(server: ServerProcess) -> None:
    big = bytes(random.Random(1).getrandbits(8) for _ in range(70_000))
    requests = [
        get("/hello"),
        post("/echo/first", b"first body"),
        get("/echo/second?n=2"),
        chunked_post("/echo/third", [b"chun", b"ked"]),
        post("/digest", big),
    ]
    with connect(server) as conn:
        conn.send(b"".join(requests))
        assert conn.read_response().body == b"Hello, world!"
        first = json_of(conn.read_response())
        assert (first["PATH_INFO"], first["body"]) == ("/echo/first", "first body")
        second = json_of(conn.read_response())
        assert (second["PATH_INFO"], second["QUERY_STRING"], second["body"]) == ("/echo/second", "n=2", "")
        third = json_of(conn.read_response())
        assert (third["PATH_INFO"], third["body"]) == ("/echo/third", "chunked")
        digest = json_of(conn.read_response())
        assert digest == {"length": len(big), "sha256": hashlib.sha256(big).hexdigest()}
        assert not conn.data_within(0.2)


# ------------------------------------------------------------------ request bodies


def test_chunked_body_with_extensions_and_trailers_reaches_app_intact(server: ServerProcess) -> None:
    request = (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b'1;a;b="quoted; \\"str\\""\r\n \r\n'
        b"A;x=1\r\n0123456789\r\n"
        b"0;last\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n"
    )
    with connect(server) as conn:
        environ = json_of(conn.request(request))
        assert environ["body"] == "hello 0123456789"
        assert "CONTENT_LENGTH" not in environ
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_content_length_body_reaches_app_intact(server: ServerProcess) -> None:
    body = bytes(range(256)) * 4
    with connect(server) as conn:
        environ = json_of(conn.request(post("/echo", body, headers="Content-Type: x/y\r\n")))
        assert environ["body"].encode("latin-1") == body
        assert environ["CONTENT_LENGTH"] == "1024"
        assert environ["CONTENT_TYPE"] == "x/y"
        assert "HTTP_CONTENT_LENGTH" not in environ
        assert "HTTP_CONTENT_TYPE" not in environ


def test_content_length_zero_sent_by_the_client_is_kept_and_an_absent_one_stays_absent(
    server: ServerProcess,
) -> None:
    with connect(server) as conn:
        sent = json_of(conn.request(b"GET /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"))
        assert (sent["CONTENT_LENGTH"], sent["body_length"]) == ("0", 0)
        absent = json_of(conn.request(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"))
        assert "CONTENT_LENGTH" not in absent


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_arriving_in_separate_segments_reaches_app_intact(server: ServerProcess, framing: str) -> None:
    pieces = [b"aaa", b"bbb", b"ccc", b"ddd"]
    if framing == "chunked":
        start = b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        segments = [b"3\r\n" + piece + b"\r\n" for piece in pieces] + [b"0\r\n\r\n"]
    else:
        start = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 12\r\n\r\n"
        segments = pieces
    with connect(server) as conn:
        conn.send(start)
        for segment in segments:
            time.sleep(0.1)  # each segment arrives in its own read
            conn.send(segment)
        assert json_of(conn.read_response())["body"] == "aaabbbcccddd"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_five_megabyte_body_streams_through_intact(server: ServerProcess, framing: str) -> None:
    body = random.Random(5).randbytes(5 * 1024 * 1024)
    if framing == "chunked":
        rng = random.Random(6)
        chunks, pos = [], 0
        while pos < len(body):
            size = rng.randint(1, 200_000)
            chunks.append(body[pos : pos + size])
            pos += size
        request = chunked_post("/digest", chunks)
    else:
        request = post("/digest", body)
    with connect(server, timeout=30) as conn:
        conn.send(request)
        assert json_of(conn.read_response()) == {
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        assert conn.request(get("/hello")).body == b"Hello, world!"


# ------------------------------------------------------------------ Expect: 100-continue

EXPECT_HEAD = "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"


def expect_head(path: str, length: int) -> bytes:
    return EXPECT_HEAD.format(path=path, length=length).encode("latin-1")


def test_expect_continue_gets_100_then_body_is_echoed(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(expect_head("/echo", 11))
        interim = conn.read_head()
        assert (interim.status, interim.headers) == (100, [])
        conn.send(b"hello world")
        response = conn.read_response()
        assert json_of(response)["body"] == "hello world"
        assert response.header("connection") is None
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_threaded_sends_100_continue_only_when_the_app_reads(threaded_server: ServerProcess) -> None:
    with connect(threaded_server) as conn:
        conn.send(expect_head("/sleep-then-echo?seconds=1.5", 5))
        # The app sleeps before reading: the server must not answer 100 on its behalf.
        assert not conn.data_within(0.5), f"sent before the app read: {conn.buf!r}"
        interim = conn.read_head()
        assert interim.status == 100
        conn.send(b"later")
        assert json_of(conn.read_response())["body"] == "later"
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_threaded_app_answering_without_reading_skips_100_and_closes(
    threaded_server: ServerProcess,
) -> None:
    with connect(threaded_server) as conn:
        conn.send(expect_head("/noread", 10))
        response = conn.read_head()
        assert response.status == 200, "the final response must not be preceded by 100 Continue"
        assert response.header("connection") == "close"
        assert conn.read_exactly(6) == b"noread"
        assert conn.closed_within(5)


def test_inline_sends_100_continue_because_it_reads_the_body_for_the_app(
    inline_server: ServerProcess,
) -> None:
    with connect(inline_server) as conn:
        conn.send(expect_head("/noread", 10))
        assert conn.read_head().status == 100
        conn.send(b"0123456789")
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"noread")
        assert response.header("connection") is None
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_unread_body_is_drained_so_the_next_pipelined_request_is_answered(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(post("/noread", b"x" * 10_240) + get("/hello"))
        first = conn.read_response()
        assert (first.status, first.body) == (200, b"noread")
        assert first.header("connection") is None
        second = conn.read_response()
        assert (second.status, second.body) == (200, b"Hello, world!")


def test_threaded_unread_body_beyond_drain_limit_gets_close(threaded_server: ServerProcess) -> None:
    body = b"x" * (3 * 1024 * 1024)
    with connect(threaded_server) as conn:
        errors: list[BaseException] = []

        def upload() -> None:
            try:
                conn.sock.sendall(post("/noread", body) + get("/hello"))
            except OSError as exc:  # the server may close before it has read everything
                errors.append(exc)

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"noread")
        assert response.header("connection") == "close"
        rest, outcome = conn.read_to_end(8)
        assert rest == b"", "the request after a cut-off body must not be answered"
        assert outcome in ("eof", "reset")
        sender.join(10)
        assert not sender.is_alive()


# ------------------------------------------------------------------ response framing


def test_head_gets_gets_headers_and_no_body(server: ServerProcess) -> None:
    with connect(server) as conn:
        got = conn.request(get("/hello"))
        headed = conn.request(head("/hello"), head=True)
        assert headed.status == 200
        assert headed.header("content-length") == got.header("content-length") == "13"
        without_date = [(k.lower(), v) for k, v in got.headers if k.lower() != "date"]
        assert [(k.lower(), v) for k, v in headed.headers if k.lower() != "date"] == without_date
        assert not conn.data_within(0.3), f"HEAD response carried a body: {conn.buf!r}"
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_head_of_streaming_route_has_no_body_and_closes_the_iterable(server: ServerProcess) -> None:
    with connect(server) as conn:
        got = conn.request(get("/stream?n=3&size=4"))
        assert got.body == b"AAAABBBBCCCC"
        closed_before = json_of(conn.request(get("/stats")))["closed"]
        headed = conn.request(head("/stream?n=3&size=4"), head=True)
        assert headed.status == 200
        assert headed.header("content-type") == got.header("content-type")
        assert not conn.data_within(0.3), f"HEAD response carried a body: {conn.buf!r}"
        # On an application thread close() may run just after the response is queued.
        assert wait_until(lambda: json_of(conn.request(get("/stats")))["closed"] > closed_before, 3)
        assert conn.request(get("/hello")).body == b"Hello, world!"


def test_204_has_no_body_and_no_content_length_and_304_keeps_app_length(server: ServerProcess) -> None:
    with connect(server) as conn:
        conn.send(get("/status?code=204") + get("/304-with-length") + get("/hello"))
        no_content = conn.read_response()
        assert no_content.status == 204
        assert no_content.header("content-length") is None
        assert no_content.header("transfer-encoding") is None
        not_modified = conn.read_response()
        assert not_modified.status == 304
        assert not_modified.header("content-length") == "1234"
        assert not_modified.header("transfer-encoding") is None
        # Any body byte of the 204 or 304 would corrupt this response.
        following = conn.read_response()
        assert (following.status, following.body) == (200, b"Hello, world!")


@pytest.mark.parametrize("path", ["/status?code=304", "/304-empty-iterable"])
def test_304_without_an_app_content_length_carries_none(server: ServerProcess, path: str) -> None:
    # RFC 9110 §8.6: a 304's Content-Length must equal the 200's; "0" would be a lie
    # (httpbin's /status/304, whitenoise's 304 for a 22 KB stylesheet).
    with connect(server) as conn:
        conn.send(get(path) + get("/hello"))
        not_modified = conn.read_response()
        assert not_modified.status == 304
        assert not_modified.header("content-length") is None
        assert not_modified.header("transfer-encoding") is None
        following = conn.read_response()
        assert (following.status, following.body) == (200, b"Hello, world!")


def test_http11_streaming_response_without_length_is_chunked(server: ServerProcess) -> None:
    with connect(server) as conn:
        response = conn.request(get("/stream?n=3&size=4"))
        assert response.chunked
        assert response.header("transfer-encoding") == "chunked"
        assert response.header("content-length") is None
        assert response.body == b"AAAABBBBCCCC"
        assert conn.request(get("/hello")).body == b"Hello, world!"


@pytest.mark.parametrize("connection", ["", "Connection: keep-alive\r\n"])
def test_http10_streaming_response_without_length_is_close_delimited(
    server: ServerProcess, connection: str
) -> None:
    with connect(server) as conn:
        conn.send(f"GET /stream?n=3&size=4 HTTP/1.0\r\n{connection}\r\n".encode())
        response = conn.read_head()
        assert response.status == 200
        assert response.header("transfer-encoding") is None
        assert response.header("content-length") is None
        assert response.header("connection") == "close"
        body, outcome = conn.read_to_end(5)
        assert (body, outcome) == (b"AAAABBBBCCCC", "eof")


def test_date_and_server_headers_are_sent_once(server: ServerProcess) -> None:
    with connect(server) as conn:
        response = conn.request(get("/hello"))
        assert response.header_count("date") == 1
        assert response.header_count("server") == 1
        assert response.header("server")
        date = response.header("date")
        assert date is not None
        assert parsedate_to_datetime(date).tzinfo is not None


def test_app_date_and_server_headers_replace_the_servers(server: ServerProcess) -> None:
    with connect(server) as conn:
        response = conn.request(get("/server-header"))
        assert response.header_count("server") == 1
        assert response.header("server") == "custom/1.0"
        assert response.header_count("date") == 1
        assert response.header("date") == "Thu, 01 Jan 1970 00:00:00 GMT"


# ------------------------------------------------------------------ environ from the wire


def test_absolute_form_target_sets_path_info_and_host_from_authority(server: ServerProcess) -> None:
    target = "http://example.org:8080/echo/abs?q=1"
    with connect(server) as conn:
        environ = json_of(conn.request(f"GET {target} HTTP/1.1\r\nHost: other\r\n\r\n".encode()))
        assert environ["PATH_INFO"] == "/echo/abs"
        assert environ["QUERY_STRING"] == "q=1"
        assert environ["HTTP_HOST"] == "example.org:8080"
        assert environ["RAW_URI"] == target


@pytest.mark.parametrize(
    ("target", "path_bytes"),
    [
        (b"/echo/%E2%98%83", b"/echo/\xe2\x98\x83"),
        (b"/echo/caf%e9%20x", b"/echo/caf\xe9 x"),
        (b"/echo/a%2Fb%25", b"/echo/a/b%"),
    ],
    # (a raw UTF-8 target is refused with 400: see REJECTIONS)
    ids=["utf8-encoded", "latin1-encoded", "slash-and-percent"],
)
def test_path_info_is_percent_decoded_as_latin1_and_raw_uri_is_raw(
    server: ServerProcess, target: bytes, path_bytes: bytes
) -> None:
    with connect(server) as conn:
        environ = json_of(conn.request(b"GET " + target + b"?x=%E2%98%83+y HTTP/1.1\r\nHost: t\r\n\r\n"))
        assert environ["PATH_INFO"] == path_bytes.decode("latin-1")
        assert environ["QUERY_STRING"] == "x=%E2%98%83+y"
        raw = (target + b"?x=%E2%98%83+y").decode("latin-1")
        assert environ["RAW_URI"] == raw
        assert environ["REQUEST_URI"] == raw


@pytest.mark.parametrize(
    "fields",
    [
        "X-Forwarded_For: 6.6.6.6\r\n",
        "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded_For: 6.6.6.6\r\n",
        "X-Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n",
    ],
    ids=["alone", "after", "before"],
)
def test_header_names_with_underscore_are_dropped(server: ServerProcess, fields: str) -> None:
    with connect(server) as conn:
        environ = json_of(conn.request(get("/echo", headers=fields)))
        values = [v for k, v in environ.items() if k.startswith("HTTP_X_FORWARDED")]
        expected = [] if "1.2.3.4" not in fields else ["1.2.3.4"]
        assert values == expected
        assert "6.6.6.6" not in json.dumps(environ)


def test_repeated_headers_are_joined_with_comma_and_cookies_with_semicolon(server: ServerProcess) -> None:
    fields = "X-Multi: a\r\nCookie: a=1\r\nX-Multi: b, c\r\nCookie: b=2\r\n"
    with connect(server) as conn:
        environ = json_of(conn.request(get("/echo", headers=fields)))
        assert environ["HTTP_X_MULTI"] == "a, b, c"
        assert environ["HTTP_COOKIE"] == "a=1; b=2"


# ------------------------------------------------------------------ strict rejections


def _req(head_: str, body: bytes = b"") -> bytes:
    return head_.encode("latin-1") + body


REJECTIONS: list[tuple[str, bytes, int]] = [
    (
        "cl-and-te",
        _req("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
        + b"0\r\n\r\n",
        400,
    ),
    (
        "bad-chunk-size",
        _req("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        400,
    ),
    (
        "chunk-size-overflow",
        _req("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        + b"1"
        + b"0" * 16
        + b"\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "no-crlf-after-chunk",
        _req("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        + b"5\r\nhelloXX0\r\n\r\n",
        400,
    ),
    ("obs-fold", _req("GET /hello HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n"), 400),
    ("space-before-colon", _req("GET /hello HTTP/1.1\r\nHost : t\r\n\r\n"), 400),
    ("nul-in-value", _req("GET /hello HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n"), 400),
    ("bare-lf", _req("GET /hello HTTP/1.1\nHost: t\n\n"), 400),
    ("bare-lf-in-field", _req("GET /hello HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n"), 400),
    ("two-hosts", _req("GET /hello HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n"), 400),
    ("no-host", _req("GET /hello HTTP/1.1\r\n\r\n"), 400),
    ("bad-host", _req("GET /hello HTTP/1.1\r\nHost: a b\r\n\r\n"), 400),
    ("bad-header-name", _req("GET /hello HTTP/1.1\r\nHost: t\r\nX(A): b\r\n\r\n"), 400),
    ("conflicting-lengths", _req("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\nab"), 400),
    ("negative-length", _req("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n"), 400),
    ("tab-separator", _req("GET\t/hello HTTP/1.1\r\nHost: t\r\n\r\n"), 400),
    ("raw-utf8-target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("lowercase-version", _req("GET /hello http/1.1\r\nHost: t\r\n\r\n"), 400),
    ("te-in-http10", _req("POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
    (
        "chunked-twice",
        _req("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
        400,
    ),
    ("te-gzip", _req("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n"), 501),
    ("connect", _req("CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"), 501),
    (
        "unknown-expectation",
        _req("POST /echo HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx"),
        417,
    ),
    ("http-2.0", _req("GET /hello HTTP/2.0\r\nHost: t\r\n\r\n"), 505),
    ("line-too-long", _req(f"GET /{'a' * 200} HTTP/1.1\r\nHost: t\r\n\r\n"), 414),
    (
        "too-many-fields",
        _req("GET /hello HTTP/1.1\r\nHost: t\r\n" + "".join(f"X-{i}: v\r\n" for i in range(6)) + "\r\n"),
        431,
    ),
    (
        "body-too-large-length",
        _req("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world"),
        413,
    ),
    (
        "body-too-large-chunked",
        chunked_post("/echo", [b"hello", b" world"]),
        413,
    ),
]


@pytest.mark.parametrize(
    ("data", "status"), [case[1:] for case in REJECTIONS], ids=[case[0] for case in REJECTIONS]
)
def test_malformed_request_is_rejected_closed_and_nothing_after_it_is_processed(
    limited_server: ServerProcess, data: bytes, status: int
) -> None:
    with connect(limited_server) as conn:
        conn.send(data + get("/hello"))
        response = conn.read_response()
        assert response.status == status
        assert response.header("connection") == "close"
        rest, outcome = conn.read_to_end(5)
        assert rest == b"", "a request pipelined after a rejected one was answered"
        assert outcome == "eof", "the connection was not closed cleanly after the error response"
    assert_still_serving(limited_server)


def test_tls_client_hello_on_plain_port_gets_400_and_close(server: ServerProcess) -> None:
    # A TLS 1.2 ClientHello record header and the start of its handshake message.
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + bytes.fromhex("000004c02fc0300100")
    with connect(server) as conn:
        conn.send(hello)
        response = conn.read_response()
        assert response.status == 400
        assert response.header("connection") == "close"
        assert conn.closed_within(5)
    assert_still_serving(server)
