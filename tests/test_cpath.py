"""The C request path (``rapidwsgi._cfast``) against the Python reference, byte for byte.

Every case runs the same input through two connections, ``ServerContext(c_path=False)``
and ``c_path=True``, with the same application, and requires the same response bytes,
the same close / half-close / abort calls at the same points of the output, the same
environ (every key and value, and what ``wsgi.input`` reads), the same other
observations of the application and the same error log (``tests/cpath_harness.py``).
Inputs are fed whole, split at every byte boundary (short inputs), byte by byte and at
random cut points, then EOF.

While the extension is not built (``connection.C_PATH_AVAILABLE`` False) both runs are
the reference: the tests pass and check the harness's determinism; they hold the C path
as soon as it exists.
"""

from __future__ import annotations

import io
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import pytest

from rapidwsgi import connection
from rapidwsgi.errors import AppError
from tests.cpath_harness import (
    C_PATH_AVAILABLE,
    REQUEST_VAR,
    TRUSTED,
    UNTRUSTED,
    Environ,
    LoggingApp,
    Run,
    Setup,
    StartResponse,
    assert_same_run,
    calls,
    differential,
    echo_app,
    echo_stream_app,
    run_connection,
    with_limits,
)
from tests.fuzz_http1 import split_at
from tests.http1_corpus import INVALID, VALID

#: Inputs up to this long are also split at every byte boundary (two reads).
EVERY_BOUNDARY = 256
#: Longer inputs: this many two-read splits, evenly spaced.
SPACED_SPLITS = 48
#: Inputs up to this long are also fed byte by byte.
BYTEWISE = 512
RANDOM_SPLITS = 4


def test_the_harness_sees_the_extension_as_connection_does() -> None:
    assert connection.C_PATH_AVAILABLE is C_PATH_AVAILABLE
    try:
        from rapidwsgi import _cfast  # noqa: F401
    except ImportError:
        assert not C_PATH_AVAILABLE
    else:
        assert C_PATH_AVAILABLE


@pytest.mark.skipif(not C_PATH_AVAILABLE, reason="the C extension is not built")
def test_the_c_path_serves_a_plain_request_without_the_python_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against a vacuous comparison: with c_path=True a plain GET never reaches
    the reference parser (and with c_path=False it does)."""
    from rapidwsgi.protocols.http1 import H1Connection

    seen: list[bytes] = []
    original = H1Connection.receive_data

    def spy(self: H1Connection, data: bytes) -> None:
        if data:
            seen.append(data)
        original(self, data)

    monkeypatch.setattr(H1Connection, "receive_data", spy)
    raw = GET + head(b"GET /2?x=1 HTTP/1.1", b"Host: h", b"Accept: */*")
    run_connection([raw], one_bytes, c_path=False)
    if not seen:
        pytest.skip("compiled build: its native calls bypass the spy")
    assert seen == [raw]
    seen.clear()
    c_run = run_connection([raw], one_bytes, c_path=True)
    assert not seen
    assert c_run.out.count(b"HTTP/1.1 200 OK") == 2


def splits(raw: bytes, seed: str, *, bytewise: bool = True) -> Iterator[list[bytes]]:
    """Whole, two reads at every (or evenly spaced) boundary, byte by byte, random cuts."""
    yield [raw]
    n = len(raw)
    if n <= EVERY_BOUNDARY:
        points: Iterable[int] = range(1, n)
    else:
        points = sorted({1 + i * (n - 1) // SPACED_SPLITS for i in range(SPACED_SPLITS)})
    for i in points:
        yield [raw[:i], raw[i:]]
    if bytewise and 1 < n <= BYTEWISE:
        yield [raw[i : i + 1] for i in range(n)]
    rng = random.Random(seed)
    for _ in range(RANDOM_SPLITS):
        yield split_at(raw, [rng.randrange(n + 1) for _ in range(rng.randint(2, 7))])


def check_all_splits(raw: bytes, app: LoggingApp, setup: Setup, seed: str, *, bytewise: bool = True) -> Run:
    whole = differential([raw], app, setup, what=f"{seed}: whole")
    differential([raw], app, setup, eof=False, what=f"{seed}: whole, no EOF")
    for chunks in splits(raw, seed, bytewise=bytewise):
        differential(chunks, app, setup, what=f"{seed}: reads of {[len(c) for c in chunks]}")
    return whole


# ---------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("case", VALID, ids=[c.name for c in VALID])
def test_valid_corpus_streams(case: object) -> None:
    raw, limits, name = case.raw, dict(case.limits), case.name  # type: ignore[attr-defined]
    run = check_all_splits(raw, echo_app, with_limits(TRUSTED, limits), name)
    assert not run.exceptions
    # The streaming app over the same bytes: whole and byte by byte are enough here.
    differential([raw], echo_stream_app, with_limits(TRUSTED, limits), what=f"{name}: stream app")
    if len(raw) <= BYTEWISE:
        chunks = [raw[i : i + 1] for i in range(len(raw))]
        differential(
            chunks, echo_stream_app, with_limits(TRUSTED, limits), what=f"{name}: stream app, bytewise"
        )


@pytest.mark.parametrize("case", INVALID, ids=[c.name for c in INVALID])
def test_invalid_corpus_streams(case: object) -> None:
    raw, limits, name = case.raw, dict(case.limits), case.name  # type: ignore[attr-defined]
    run = check_all_splits(raw, echo_app, with_limits(TRUSTED, limits), name, bytewise=len(raw) <= 256)
    assert not run.exceptions
    assert b" 200 OK\r\n" not in run.out or case.before  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- more requests


def head(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


BROWSER = head(
    b"GET /shop/caf%C3%A9/a%2Fb/%zz/%?q=a+b&x=%20&empty=&flag HTTP/1.1",
    b"Host: shop.example:8443",
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    b"Accept-Language: en-US,en;q=0.5",
    b"Accept-Encoding: gzip, deflate, br",
    b"Cookie: session=abc123",
    b"Referer: https://shop.example/",
    b"cookie: theme=dark",
    b"X-Dup: one",
    b"DNT: 1",
    b"x-dup: two",
    b"COOKIE: lang=fr",
    b"X-Mixed-CASE-Name: MixedValue",
    b"X_Under_Score: dropped",
    b"X-Trailing: value with trailing space \t ",
    b"X-Empty:",
    b"X-Spaces:    ",
    b"Upgrade-Insecure-Requests: 1",
    b"Sec-Fetch-Mode: navigate",
    b"Cache-Control: max-age=0",
    b"X-High: caf\xc3\xa9 \xff\x80",
    b"Content-Type: text/plain; charset=utf-8",
)
FORWARDING = (
    b"X-Forwarded-For: 203.0.113.7, 10.0.0.1",
    b"X-Forwarded-Proto: https",
    b"X-Forwarded-Host: public.example",
    b"X-Forwarded-Port: 443",
    b"X-Real-IP: 198.51.100.9",
)
GET = head(b"GET / HTTP/1.1", b"Host: h")

#: (name, bytes, setup): browser-like heads, target forms, versions, persistence,
#: pipelining, bodies, Expect, Upgrade, forwarding and --root-path.
REQUESTS: list[tuple[str, bytes, Setup]] = [
    ("browser", BROWSER, TRUSTED),
    ("browser_twice", BROWSER + BROWSER, TRUSTED),
    ("browser_untrusted", BROWSER, UNTRUSTED),
    ("browser_root_path", BROWSER.replace(b"GET /shop/", b"GET /app/shop/"), Setup(root_path="/app")),
    ("root_path_exact", head(b"GET /app HTTP/1.1", b"Host: h"), Setup(root_path="/app/")),
    ("root_path_other", head(b"GET /application/x HTTP/1.1", b"Host: h"), Setup(root_path="/app")),
    ("root_path_encoded", head(b"GET /app%2Fx/y HTTP/1.1", b"Host: h"), Setup(root_path="/app")),
    ("high_bytes_in_target", head(b"GET /caf\xc3\xa9?q=\xff HTTP/1.1", b"Host: h"), TRUSTED),
    ("percent_2f_and_invalid", head(b"GET /a%2Fb%2f%zz%4 HTTP/1.1", b"Host: h"), TRUSTED),
    ("percent_null", head(b"GET /a%00b HTTP/1.1", b"Host: h"), TRUSTED),
    ("head", head(b"HEAD /h HTTP/1.1", b"Host: h"), TRUSTED),
    ("options_star", head(b"OPTIONS * HTTP/1.1", b"Host: h"), TRUSTED),
    ("absolute_form", head(b"GET http://Other.Example:81/p/q?x=1 HTTP/1.1", b"Host: h"), TRUSTED),
    ("absolute_form_https_no_path", head(b"GET https://other.example HTTP/1.1", b"Host: h"), TRUSTED),
    (
        "other_methods",
        b"".join(
            head(m + b" /m HTTP/1.1", b"Host: h")
            for m in (b"PUT", b"DELETE", b"PATCH", b"TRACE", b"PROPFIND", b"M-SEARCH")
        ),
        TRUSTED,
    ),
    ("http10", head(b"GET /old HTTP/1.0"), TRUSTED),
    ("http10_host", head(b"GET /old HTTP/1.0", b"Host: h"), TRUSTED),
    ("http10_keep_alive", head(b"GET /a HTTP/1.0", b"Connection: keep-alive") * 3, TRUSTED),
    ("http10_keep_alive_mixed_case", head(b"GET /a HTTP/1.0", b"connection: Keep-Alive, foo") * 2, TRUSTED),
    ("http10_keep_alive_and_close", head(b"GET /a HTTP/1.0", b"Connection: keep-alive, close") * 2, TRUSTED),
    ("http11_close", head(b"GET /c HTTP/1.1", b"Host: h", b"Connection: close") + GET, TRUSTED),
    ("http11_close_in_list", head(b"GET /c HTTP/1.1", b"Host: h", b"Connection: foo, CLOSE") + GET, TRUSTED),
    (
        "http11_two_connection_fields",
        head(b"GET / HTTP/1.1", b"Host: h", b"Connection: a", b"Connection: close") + GET,
        TRUSTED,
    ),
    ("pipelined_five", GET * 5, TRUSTED),
    (
        "pipelined_mixed",
        GET + head(b"HEAD /x HTTP/1.1", b"Host: h") + head(b"GET /q?a=b HTTP/1.1", b"Host: h") + GET,
        TRUSTED,
    ),
    ("pipelined_then_garbage", GET + GET + b"\x16\x03\x01\x00", TRUSTED),
    ("pipelined_then_partial", GET + b"GET /partial HTTP/1.1\r\nHost:", TRUSTED),
    ("leading_crlf_between", GET + b"\r\n" + GET + b"\r\n\r\n" + GET, TRUSTED),
    ("content_length_0", head(b"POST /p HTTP/1.1", b"Host: h", b"Content-Length: 0") + GET, TRUSTED),
    ("content_length_00", head(b"POST /p HTTP/1.1", b"Host: h", b"Content-Length: 00") + GET, TRUSTED),
    (
        "get_with_content_length_0",
        head(b"GET /p HTTP/1.1", b"Host: h", b"Content-Length: 0", b"Content-Type: x/y") + GET,
        TRUSTED,
    ),
    ("small_body", head(b"POST /p HTTP/1.1", b"Host: h", b"Content-Length: 5") + b"hello" + GET, TRUSTED),
    ("small_body_http10", head(b"POST /p HTTP/1.0", b"Content-Length: 5") + b"hello", TRUSTED),
    ("body_short_then_eof", head(b"POST /p HTTP/1.1", b"Host: h", b"Content-Length: 9") + b"hello", TRUSTED),
    (
        "chunked",
        head(b"POST /c HTTP/1.1", b"Host: h", b"Transfer-Encoding: chunked")
        + b"5\r\nhello\r\n3;x=y\r\n abc\r\n0\r\nT: v\r\n\r\n"
        + GET,
        TRUSTED,
    ),
    (
        "expect_continue",
        head(b"POST /e HTTP/1.1", b"Host: h", b"Expect: 100-continue", b"Content-Length: 4") + b"body" + GET,
        TRUSTED,
    ),
    ("expect_continue_no_body", head(b"GET /e HTTP/1.1", b"Host: h", b"Expect: 100-continue") + GET, TRUSTED),
    (
        "expect_continue_chunked",
        head(b"PUT /e HTTP/1.1", b"Host: h", b"Expect: 100-Continue", b"Transfer-Encoding: chunked")
        + b"2\r\nab\r\n0\r\n\r\n",
        TRUSTED,
    ),
    (
        "expect_continue_http10",
        head(b"POST /e HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 2") + b"ab",
        TRUSTED,
    ),
    (
        "expect_other",
        head(b"POST /e HTTP/1.1", b"Host: h", b"Expect: 200-ok", b"Content-Length: 2") + b"ab",
        TRUSTED,
    ),
    (
        "upgrade",
        head(
            b"GET /ws HTTP/1.1",
            b"Host: h",
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Sec-WebSocket-Version: 13",
        )
        + GET,
        TRUSTED,
    ),
    (
        "upgrade_h2c",
        head(b"GET / HTTP/1.1", b"Host: h", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__") + GET,
        TRUSTED,
    ),
    ("forwarded_trusted", head(b"GET /f HTTP/1.1", b"Host: h", *FORWARDING) + GET, TRUSTED),
    ("forwarded_untrusted", head(b"GET /f HTTP/1.1", b"Host: h", *FORWARDING) + GET, UNTRUSTED),
    (
        "forwarded_rfc7239",
        head(
            b"GET /f HTTP/1.1",
            b"Host: h",
            b'Forwarded: for="[2001:db8::1]:4711";proto=https;host=pub.example',
        ),
        TRUSTED,
    ),
    ("forwarded_by_only", head(b"GET /f HTTP/1.1", b"Host: h", b"X-Forwarded-By: 10.0.0.1"), TRUSTED),
    ("forwarded_underscore", head(b"GET /f HTTP/1.1", b"Host: h", b"X-Forwarded_For: 6.6.6.6"), TRUSTED),
    # A pooling peer closed on an error: the last bytes go out corked, FIN with them.
    (
        "forwarded_then_bad",
        head(b"GET /f HTTP/1.1", b"Host: h", b"X-Forwarded-For: 1.2.3.4") + b"BAD\x00\r\n\r\n",
        TRUSTED,
    ),
    (
        "forwarded_then_close",
        head(b"GET /f HTTP/1.1", b"Host: h", b"X-Forwarded-For: 1.2.3.4", b"Connection: close"),
        TRUSTED,
    ),
    ("unix_socket_peer", GET + GET, Setup(peername=None, sockname="/run/app.sock")),
    ("ipv6_peer", GET, Setup(peername=("::1", 50001), sockname=("::1", 8000))),
    ("tls", GET + head(b"GET /t HTTP/1.1", b"Host: h", b"X-Forwarded-Proto: http"), Setup(tls=True)),
    (
        "proxy_protocol_v1",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n" + GET + GET,
        Setup(proxy_protocol=True),
    ),
    ("proxy_protocol_absent", GET + GET, Setup(proxy_protocol=True)),
    ("shutting_down", GET + GET, Setup(shutting_down=True)),
    (
        "threaded",
        GET + head(b"POST /p HTTP/1.1", b"Host: h", b"Content-Length: 5") + b"hello" + GET,
        Setup(threads=4),
    ),
    (
        "threaded_expect",
        head(b"POST /e HTTP/1.1", b"Host: h", b"Expect: 100-continue", b"Content-Length: 4") + b"body" + GET,
        Setup(threads=4),
    ),
    (
        "small_limits",
        head(b"GET /" + b"a" * 40 + b" HTTP/1.1", b"Host: h") + GET,
        Setup(limits=(("max_line", 32),)),
    ),
    (
        "small_field_limit",
        GET + head(b"GET / HTTP/1.1", b"Host: h", b"X: " + b"v" * 40),
        Setup(limits=(("max_field_size", 32),)),
    ),
    (
        "small_fields_count",
        GET + head(b"GET / HTTP/1.1", b"Host: h", b"A: 1", b"B: 2"),
        Setup(limits=(("max_fields", 2),)),
    ),
    (
        "body_over_limit",
        head(b"POST / HTTP/1.1", b"Host: h", b"Content-Length: 10") + b"0123456789",
        Setup(limits=(("max_body", 5),)),
    ),
    (
        "no_read_body_drained",
        head(b"POST /p HTTP/1.1", b"Host: h", b"Content-Length: 5") + b"hello" + GET,
        Setup(read_body=False),
    ),
    (
        "no_read_body_too_large",
        head(b"POST /p HTTP/1.1", b"Host: h", b"Content-Length: 50") + b"x" * 50 + GET,
        Setup(read_body=False, limits=(("max_drain", 8),)),
    ),
    ("http09", b"GET /\r\n\r\n", TRUSTED),
    ("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", TRUSTED),
    ("version_12", head(b"GET / HTTP/1.2", b"Host: h"), TRUSTED),
    ("lf_only", b"GET / HTTP/1.1\nHost: h\n\n", TRUSTED),
    ("two_hosts", head(b"GET / HTTP/1.1", b"Host: h", b"Host: h"), TRUSTED),
    ("no_host", head(b"GET / HTTP/1.1"), TRUSTED),
    ("fragment", head(b"GET /a#b HTTP/1.1", b"Host: h"), TRUSTED),
    ("connect", head(b"CONNECT h:443 HTTP/1.1", b"Host: h:443"), TRUSTED),
    ("empty_input", b"", TRUSTED),
    ("only_crlf", b"\r\n\r\n", TRUSTED),
]


@pytest.mark.parametrize(("name", "raw", "setup"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_requests(name: str, raw: bytes, setup: Setup) -> None:
    run = check_all_splits(raw, echo_app, setup, name)
    assert not run.exceptions
    differential([raw], echo_stream_app, setup, what=f"{name}: stream app")


# ---------------------------------------------------------------------- response shapes

CT = ("Content-Type", "text/plain")


def _path(environ: Environ) -> bytes:
    return str(environ["PATH_INFO"]).encode("latin-1")


def one_bytes(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return [b"one:" + _path(environ)]


def several(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return [b"a", b"", b"bc", _path(environ)]


def several_with_length(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("Content-Length", "6")])
    return [b"ab", b"cd", b"ef"]


def as_tuple(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("201 Created", [CT, ("Location", "/x")])
    return (b"tu", b"ple")


def empty_list(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return []


def empty_bytes(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [])
    return [b""]


def generator(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    yield b"gen:"
    yield b""
    yield _path(environ)


def generator_with_length(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("Content-Length", "7")])
    yield b"gen"
    yield b"erat"


def generator_empty(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    yield from ()


def many_chunks(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return (b"%d," % i for i in range(100))  # beyond the per-turn chunk budget


def big_list(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return [bytes(range(256)) * 80]  # above the 16 KiB single-write threshold


def _temp_file(data: bytes) -> io.BufferedRandom:
    f = tempfile.TemporaryFile()  # noqa: SIM115 - the server closes it through the wrapper
    f.write(data)
    f.seek(0)
    return f


FILE_DATA = b"0123456789abcdefghij" * 50


def file_wrapper(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](_temp_file(FILE_DATA))  # type: ignore[no-any-return]


def file_wrapper_offset_and_length(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    f = _temp_file(FILE_DATA)
    f.seek(7)
    start_response("200 OK", [("Content-Length", "30")])
    return environ["wsgi.file_wrapper"](f, 16)  # type: ignore[no-any-return]


def file_wrapper_too_long_length(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "2000")])
    return environ["wsgi.file_wrapper"](_temp_file(b"short"))  # type: ignore[no-any-return]


def file_wrapper_bytesio(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return environ["wsgi.file_wrapper"](io.BytesIO(b"not a regular file" * 3), 10)  # type: ignore[no-any-return]


def write_callable(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    write = start_response("200 OK", [CT])
    write(b"written;")
    write(b"")
    write(bytearray(b"ba;"))
    return [b"returned", b";" + _path(environ)]


def write_then_generator(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    write = start_response("200 OK", [CT, ("Content-Length", "9")])
    write(b"abc")

    def rest() -> Iterator[bytes]:
        yield b"def"
        yield b"ghi"

    return rest()


def write_non_bytes(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    write = start_response("200 OK", [CT])
    try:
        write("text")
    except TypeError as exc:
        log.append(("write refused", str(exc)))
    return [b"ok"]


def exc_info_before_headers(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("X-First", "1")])
    try:
        raise ValueError("replaced")
    except ValueError:
        start_response("500 Internal Server Error", [CT, ("X-Second", "2")], sys.exc_info())
    return [b"error page"]


def exc_info_after_headers(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    yield b"partial"
    try:
        raise KeyError("late")
    except KeyError:
        start_response("500 Internal Server Error", [CT], sys.exc_info())  # re-raises
    yield b"never"


def exc_info_without_error(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT], None)
    return [b"fine"]


def raise_before_start_response(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    raise RuntimeError("before")


def raise_after_start_response(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    raise RuntimeError("after")


def generator_raises_first(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    raise RuntimeError("in the generator, before any chunk")
    yield b"unreachable"  # pragma: no cover


def generator_raises_later(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    yield b"first"
    raise RuntimeError("in the generator, after a chunk")


def never_start_response(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    return [b"no head"]


def never_start_response_empty(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    return []


def start_response_twice(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    try:
        start_response("201 Created", [CT])
    except AppError as exc:
        log.append(("refused", type(exc).__name__, str(exc)))
        raise
    return [b"x"]  # pragma: no cover


def length_shorter(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("Content-Length", "3")])
    return [b"hello"]


def length_longer(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("Content-Length", "10")])
    return [b"hi"]


def length_shorter_generator(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("Content-Length", " 4 ")])
    yield b"abc"
    yield b"def"


def length_longer_generator(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("Content-Length", "10")])
    yield b"abc"


def length_twice_equal(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "2"), ("content-length", "2")])
    return [b"ok"]


def length_conflict(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "2"), ("Content-Length", "3")])
    return [b"ok"]  # pragma: no cover


def length_invalid(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "-1")])
    return [b"ok"]  # pragma: no cover


def status_204(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("204 No Content", [])
    return []


def status_204_length(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("204 No Content", [("Content-Length", "0")])
    return [b""]


def status_204_with_body(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("204 No Content", [])
    return [b"ignored body"]


def status_304(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("304 Not Modified", [("ETag", '"abc"')])
    return []


def status_304_length(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("304 Not Modified", [("ETag", '"abc"'), ("Content-Length", "42")])
    return [b""]


def status_304_generator(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("304 Not Modified", [])
    yield b""


def app_connection_close(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("Connection", "close")])
    return [b"closing"]


def app_connection_keep_alive(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [CT, ("Connection", " Keep-Alive ")])
    return [b"kept"]


def app_date_and_server(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [("Date", "yesterday"), ("Server", "mine"), ("X-Ünicode", "é")])
    return [b"own date"]


def app_date_only(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [("date", "yesterday")])
    return [b"own date"]


def hop_by_hop(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [("Transfer-Encoding", "chunked")])
    return [b"x"]  # pragma: no cover


def bytearray_item(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return [bytearray(b"bytearray")]  # type: ignore[list-item]


def bytearray_items(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return [b"a", bytearray(b"b"), memoryview(b"c")]  # type: ignore[list-item]


def str_item(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return ["text"]  # type: ignore[list-item]


def str_item_generator(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    yield b"ok"
    yield "text"  # type: ignore[misc]


def invalid_header_refused(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    for bad in ([("X-A", "b\r\nX-Injected: c")], [("X-A\r\n", "b")], [("X-A", "b\nc")], [("X A", "b")]):
        try:
            start_response("200 OK", bad)
        except AppError as exc:
            log.append(("refused", type(exc).__name__, str(exc)))
        else:
            log.append(("accepted", bad))
    start_response("200 OK", [CT])
    return [b"after refusals"]


def invalid_header_raised(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("200 OK", [("X-A", "b\r\nSet-Cookie: x=y")])
    return [b"x"]  # pragma: no cover


def header_not_a_tuple(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [["X-A", "b"]])
    return [b"x"]  # pragma: no cover


def headers_not_a_list(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", ((CT),))
    return [b"x"]  # pragma: no cover


def status_99(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("99 x", [])
    return [b"x"]  # pragma: no cover


def status_informational(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    start_response("103 Early Hints", [])
    return [b"x"]  # pragma: no cover


def status_not_str(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response(200, [])
    return [b"x"]  # pragma: no cover


def status_unusual(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("599 Whatever \xe9", [])
    return [b"x"]


def status_no_reason(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 ", [])
    return [b"x"]


def context_variable(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    REQUEST_VAR.set("set by " + str(environ["PATH_INFO"]))
    start_response("200 OK", [CT])

    def generate() -> Iterator[bytes]:
        value = REQUEST_VAR.get()
        log.append(("var in first chunk", value))
        yield value.encode("latin-1")
        log.append(("var in second chunk", REQUEST_VAR.get()))
        yield b";"

    return generate()


def context_variable_list(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    REQUEST_VAR.set("list " + str(environ["PATH_INFO"]))
    start_response("200 OK", [CT])
    return [REQUEST_VAR.get().encode("latin-1")]


class ClosingIterable:
    """An iterable with ``close()``: the server must call it exactly once."""

    def __init__(self, log: list[object], chunks: Sequence[bytes]) -> None:
        self.log = log
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.log.append(("close called", REQUEST_VAR.get()))


def closing_iterable(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    REQUEST_VAR.set("closing")
    start_response("200 OK", [CT])
    return ClosingIterable(log, [b"it", b"er"])


class ListWithClose(list[bytes]):
    """A list subclass: not ``type(result) is list``, so the general path."""

    def __init__(self, log: list[object], items: Iterable[bytes]) -> None:
        super().__init__(items)
        self.log = log

    def close(self) -> None:
        self.log.append(("list close called",))


def list_subclass(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return ListWithClose(log, [b"sub", b"class"])


class CloseRaises(ClosingIterable):
    def close(self) -> None:
        raise RuntimeError("close failed")


def close_raises(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return CloseRaises(log, [b"x"])


def returns_none(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    start_response("200 OK", [CT])
    return None  # type: ignore[return-value]


def reads_input_itself(environ: Environ, start_response: StartResponse, log: list[object]) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    log.append(("readline", stream.readline(), "read(2)", stream.read(2), "rest", stream.read()))
    start_response("200 OK", [CT])
    return [b"read"]


APPS: dict[str, LoggingApp] = {
    f.__name__: f
    for f in (
        one_bytes,
        several,
        several_with_length,
        as_tuple,
        empty_list,
        empty_bytes,
        generator,
        generator_with_length,
        generator_empty,
        many_chunks,
        big_list,
        file_wrapper,
        file_wrapper_offset_and_length,
        file_wrapper_too_long_length,
        file_wrapper_bytesio,
        write_callable,
        write_then_generator,
        write_non_bytes,
        exc_info_before_headers,
        exc_info_after_headers,
        exc_info_without_error,
        raise_before_start_response,
        raise_after_start_response,
        generator_raises_first,
        generator_raises_later,
        never_start_response,
        never_start_response_empty,
        start_response_twice,
        length_shorter,
        length_longer,
        length_shorter_generator,
        length_longer_generator,
        length_twice_equal,
        length_conflict,
        length_invalid,
        status_204,
        status_204_length,
        status_204_with_body,
        status_304,
        status_304_length,
        status_304_generator,
        app_connection_close,
        app_connection_keep_alive,
        app_date_and_server,
        app_date_only,
        hop_by_hop,
        bytearray_item,
        bytearray_items,
        str_item,
        str_item_generator,
        invalid_header_refused,
        invalid_header_raised,
        header_not_a_tuple,
        headers_not_a_list,
        status_99,
        status_informational,
        status_not_str,
        status_unusual,
        status_no_reason,
        context_variable,
        context_variable_list,
        closing_iterable,
        list_subclass,
        close_raises,
        returns_none,
        reads_input_itself,
    )
}

#: The requests every response shape is tried with: a keep-alive pipeline (a response
#: that breaks the connection must stop it; one that does not must let the next
#: request through, with a fresh context), HEAD, HTTP/1.0, a body.
PIPELINE = (
    head(b"GET /first?a=1 HTTP/1.1", b"Host: h", b"Cookie: a=1", b"cookie: b=2")
    + head(b"HEAD /second HTTP/1.1", b"Host: h")
    + head(b"POST /third HTTP/1.1", b"Host: h", b"Content-Length: 5")
    + b"hello"
    + head(b"GET /fourth HTTP/1.1", b"Host: h")
)
SHAPE_STREAMS: dict[str, tuple[bytes, Setup]] = {
    "pipeline": (PIPELINE, TRUSTED),
    "http10": (head(b"GET /ten HTTP/1.0", b"Connection: keep-alive") + head(b"GET /ten2 HTTP/1.0"), TRUSTED),
    "head_only": (head(b"HEAD /h HTTP/1.1", b"Host: h"), TRUSTED),
    "chunked_body": (
        head(b"PUT /c HTTP/1.1", b"Host: h", b"Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\n\r\n" + GET,
        TRUSTED,
    ),
    "threaded": (PIPELINE, Setup(threads=3)),
    "tls": (GET + GET, Setup(tls=True)),
    "forwarded_close": (
        head(b"GET /f HTTP/1.1", b"Host: h", b"X-Forwarded-For: 1.2.3.4") + GET,
        Setup(shutting_down=True),
    ),
}


@pytest.mark.parametrize("stream", SHAPE_STREAMS)
@pytest.mark.parametrize("app_name", APPS)
def test_response_shapes(app_name: str, stream: str) -> None:
    app = APPS[app_name]
    raw, setup = SHAPE_STREAMS[stream]
    seed = f"{app_name}/{stream}"
    if stream == "pipeline":
        # Two reads at every 7th boundary (the request corpus covers every boundary of
        # the head parser), byte by byte, random cuts.
        run = differential([raw], app, setup, what=f"{seed}: whole")
        differential([raw], app, setup, eof=False, what=f"{seed}: whole, no EOF")
        for i in range(1, len(raw), 7):
            differential([raw[:i], raw[i:]], app, setup, what=f"{seed}: reads of {i}, {len(raw) - i}")
        assert run.app_log, "the application was never called"
    else:
        differential([raw], app, setup, what=f"{seed}: whole")
        rng = random.Random(seed)
        for _ in range(RANDOM_SPLITS):
            chunks = split_at(raw, [rng.randrange(len(raw) + 1) for _ in range(rng.randint(1, 5))])
            differential(chunks, app, setup, what=f"{seed}: reads of {[len(c) for c in chunks]}")
        run = differential([raw[i : i + 1] for i in range(len(raw))], app, setup, what=f"{seed}: bytewise")
    assert not run.exceptions, run.exceptions


# ---------------------------------------------------------------------- the harness itself


def test_harness_tells_different_outputs_apart() -> None:
    """The comparison is not vacuous: two different applications are told apart."""
    reference = run_connection([GET], one_bytes, c_path=False)
    other = run_connection([GET], several, c_path=False)
    with pytest.raises(AssertionError, match="'out'"):
        assert_same_run(reference, other)
    assert reference.out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reference.out.endswith(b"one:/")
    assert reference.calls == [("close", len(reference.out))]  # EOF while idle: close
    idle = run_connection([GET], one_bytes, c_path=False, eof=False)
    # No EOF: the keep-alive timeout half-closes (lingering), the linger timeout closes.
    assert idle.calls == [("write_eof", len(idle.out)), ("close", len(idle.out))]


def test_harness_records_environ_and_untrusted_forwarding() -> None:
    raw = head(b"GET /f HTTP/1.1", b"Host: h", *FORWARDING)
    trusted = run_connection([raw], one_bytes, c_path=False)
    untrusted = run_connection([raw], one_bytes, c_path=False, setup=UNTRUSTED)
    env_t = calls(trusted)[0][1]
    env_u = calls(untrusted)[0][1]
    assert env_t["REMOTE_ADDR"][2] == "10.0.0.1"  # the right-most hop that is not a trusted proxy
    assert env_t["wsgi.url_scheme"][2] == "https"
    assert env_u["REMOTE_ADDR"][2] == "10.9.8.7"
    assert env_u["HTTP_X_FORWARDED_FOR"][2] == "203.0.113.7, 10.0.0.1"


def test_harness_sends_files_with_sendfile_in_stream_order() -> None:
    run = run_connection([GET + GET], file_wrapper, c_path=False)
    assert run.out.count(FILE_DATA) == 2
    assert run.out.count(b"HTTP/1.1 200 OK") == 2
    assert run.out.index(b"HTTP/1.1", 10) > run.out.index(FILE_DATA)


def test_harness_waits_for_a_helper_thread_before_the_body() -> None:
    """Inline, a client waiting for 100 Continue gets it before its body is fed."""
    raw_head = head(b"POST /e HTTP/1.1", b"Host: h", b"Expect: 100-continue", b"Content-Length: 4")
    run = run_connection([raw_head, b"body"], one_bytes, c_path=False)
    assert run.out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert calls(run)[0][2] == "other thread"


def test_harness_keeps_the_context_per_request() -> None:
    run = run_connection([GET + head(b"GET /2 HTTP/1.1", b"Host: h")], context_variable, c_path=False)
    assert ("var in second chunk", "set by /") in run.app_log[0]
    assert ("var in second chunk", "set by /2") in run.app_log[1]
    assert [c[4] for c in calls(run)] == ["unset", "unset"]


def many_chunks_setting_the_variable(
    environ: Environ, start_response: StartResponse, log: list[object]
) -> Iterable[bytes]:
    REQUEST_VAR.set("leaked from " + str(environ["PATH_INFO"]))
    return many_chunks(environ, start_response, log)


EXPECT_HEAD = head(b"POST /e HTTP/1.1", b"Host: h", b"Expect: 100-continue", b"Content-Length: 4")


@pytest.mark.parametrize(
    ("chunks", "app", "setup"),
    [
        ([GET + GET], context_variable_list, Setup(threads=2)),
        ([GET + GET], many_chunks_setting_the_variable, TRUSTED),
        ([EXPECT_HEAD, b"body" + GET], context_variable_list, TRUSTED),
    ],
    ids=["threaded", "inline-streaming-beyond-one-turn", "inline-after-expect-helper"],
)
def test_reference_context_variables_do_not_leak_into_the_next_request(
    chunks: list[bytes], app: LoggingApp, setup: Setup
) -> None:
    run = run_connection(chunks, app, c_path=False, setup=setup)
    assert [c[4] for c in calls(run)] == ["unset", "unset"]
