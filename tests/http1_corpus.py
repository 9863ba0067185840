"""A corpus of raw HTTP/1.1 requests, as data, with the outcome a strict server must give.

Written from RFC 9110 / RFC 9112 and from the request-smuggling forms published in the
advisories and bug reports of other servers (named next to each case). Every case is
replayed by ``tests/test_http1_corpus.py`` whole, line by line, byte by byte and in random
splits; the outcome must be the same for every split.

* :class:`Valid`: a byte stream holding one or more (pipelined) requests, each of which
  the parser must report exactly as given by :class:`Req`.
* :class:`Invalid`: a byte stream the parser must refuse with ``status`` (after reporting
  the requests in ``before``, if any). ``in_body`` says that the head of the failing
  request is itself valid (a Request event is produced) and the error is in its body.
  ``eof`` says that the error can only be known once the peer closes (an incomplete
  message, RFC 9112 §8); without the close the parser must simply wait for more data.

``limits`` holds keyword arguments for :class:`rapidwsgi.protocols.http1.Limits`, to
exercise a limit with a small input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Field = tuple[bytes, bytes]


def head(*lines: bytes) -> bytes:
    """A request head: each line CRLF-terminated, then the empty line."""
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@dataclass(frozen=True)
class Req:
    """One request as the parser must report it (header names lower-cased, values raw)."""

    method: bytes
    target: bytes
    headers: tuple[Field, ...]
    body: bytes = b""
    #: None: the target itself (an origin-form target without a query).
    path: bytes | None = None
    query: bytes = b""
    version: bytes = b"1.1"
    authority: bytes | None = None
    chunked: bool = False
    #: None: ``len(body)`` for a Content-Length body, 0 for a chunked one.
    content_length: int | None = None
    keep_alive: bool = True
    expect_continue: bool = False
    trailers: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        if self.path is None and b"?" in self.target:
            raise ValueError("give path and query explicitly for a target with a query")

    @property
    def expected_path(self) -> bytes:
        return self.target if self.path is None else self.path

    @property
    def expected_content_length(self) -> int:
        if self.content_length is not None:
            return self.content_length
        return 0 if self.chunked else len(self.body)

    @property
    def has_body(self) -> bool:
        return self.chunked or self.expected_content_length > 0


@dataclass(frozen=True)
class Valid:
    name: str
    raw: bytes
    requests: tuple[Req, ...]
    limits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Invalid:
    name: str
    raw: bytes
    status: int
    before: tuple[Req, ...] = ()
    in_body: bool = False
    eof: bool = False
    limits: Mapping[str, int] = field(default_factory=dict)
    #: Other statuses accepted for an input that breaks a size limit *and* another
    #: rule: which one is noticed first depends on how the bytes are split into reads.
    also: tuple[int, ...] = ()


HOST: Field = (b"host", b"example.com")
H = b"Host: example.com"
POST_CHUNKED = (b"POST /upload HTTP/1.1", H, b"Transfer-Encoding: chunked")
TE_CHUNKED: Field = (b"transfer-encoding", b"chunked")


def _get(target: bytes = b"/", *extra: Field, **kw: object) -> Req:
    return Req(b"GET", target, (HOST, *extra), **kw)  # type: ignore[arg-type]


def _chunked(body: bytes, *trailers: Field, extra: tuple[Field, ...] = ()) -> Req:
    return Req(b"POST", b"/upload", (HOST, TE_CHUNKED, *extra), body, chunked=True, trailers=trailers)


GET = head(b"GET / HTTP/1.1", H)

# ---------------------------------------------------------------------------- valid

VALID: tuple[Valid, ...] = (
    # --- request line and target forms (RFC 9112 §3)
    Valid("minimal_get", GET, (_get(),)),
    Valid(
        "http10_without_host",
        head(b"GET / HTTP/1.0"),
        (Req(b"GET", b"/", (), version=b"1.0", keep_alive=False),),
    ),
    Valid(
        "query_string",
        head(b"GET /search?q=1&r=a%20b HTTP/1.1", H),
        (_get(b"/search?q=1&r=a%20b", path=b"/search", query=b"q=1&r=a%20b"),),
    ),
    Valid(
        "empty_query",
        head(b"GET /p? HTTP/1.1", H),
        (_get(b"/p?", path=b"/p", query=b""),),
    ),
    Valid(
        "question_mark_inside_query",
        head(b"GET /p?a?b=/c HTTP/1.1", H),
        (_get(b"/p?a?b=/c", path=b"/p", query=b"a?b=/c"),),
    ),
    Valid("percent_encoded_path_kept_raw", head(b"GET /a%20b/%2F HTTP/1.1", H), (_get(b"/a%20b/%2F"),)),
    Valid("double_slash_origin_form", head(b"GET //a//b HTTP/1.1", H), (_get(b"//a//b"),)),
    Valid("head_method", head(b"HEAD / HTTP/1.1", H), (Req(b"HEAD", b"/", (HOST,)),)),
    Valid(
        "options_asterisk_form",
        head(b"OPTIONS * HTTP/1.1", H),
        (Req(b"OPTIONS", b"*", (HOST,), path=b"*"),),
    ),
    # RFC 9112 §3.2.2: with an absolute-form target the Host field is ignored.
    Valid(
        "absolute_form_overrides_host",
        head(b"GET http://example.org/p?q=1 HTTP/1.1", b"Host: other.example"),
        (
            Req(
                b"GET",
                b"http://example.org/p?q=1",
                ((b"host", b"other.example"),),
                path=b"/p",
                query=b"q=1",
                authority=b"example.org",
            ),
        ),
    ),
    Valid(
        "absolute_form_https_with_port",
        head(b"GET https://example.org:8443/x HTTP/1.1", H),
        (Req(b"GET", b"https://example.org:8443/x", (HOST,), path=b"/x", authority=b"example.org:8443"),),
    ),
    # RFC 9112 §3.2.1: an empty path is "/".
    Valid(
        "absolute_form_without_path",
        head(b"GET http://example.org HTTP/1.1", H),
        (Req(b"GET", b"http://example.org", (HOST,), path=b"/", authority=b"example.org"),),
    ),
    Valid(
        "absolute_form_query_without_path",
        head(b"GET http://example.org?x=1 HTTP/1.1", H),
        (Req(b"GET", b"http://example.org?x=1", (HOST,), path=b"/", query=b"x=1", authority=b"example.org"),),
    ),
    # RFC 3986 §3.1: schemes are case-insensitive.
    Valid(
        "absolute_form_uppercase_scheme",
        head(b"GET HTTP://example.org/ HTTP/1.1", H),
        (Req(b"GET", b"HTTP://example.org/", (HOST,), path=b"/", authority=b"example.org"),),
    ),
    # RFC 9110 §2.5: a higher minor version is processed as the highest one implemented.
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
    Valid("leading_crlf", b"\r\n" + GET, (_get(),)),
    Valid("three_leading_crlfs", b"\r\n\r\n\r\n" + GET, (_get(),)),
    # --- Host (RFC 9110 §7.2, RFC 3986 §3.2.2)
    Valid(
        "host_with_port",
        head(b"GET / HTTP/1.1", b"Host: example.com:8080"),
        (Req(b"GET", b"/", ((b"host", b"example.com:8080"),)),),
    ),
    Valid(
        "host_ipv4",
        head(b"GET / HTTP/1.1", b"Host: 127.0.0.1"),
        (Req(b"GET", b"/", ((b"host", b"127.0.0.1"),)),),
    ),
    Valid(
        "host_ipv6_literal",
        head(b"GET / HTTP/1.1", b"Host: [::1]:8080"),
        (Req(b"GET", b"/", ((b"host", b"[::1]:8080"),)),),
    ),
    # RFC 9110 §7.2: Host is sent empty when the target URI has no authority.
    Valid("host_empty", head(b"GET / HTTP/1.1", b"Host:"), (Req(b"GET", b"/", ((b"host", b""),)),)),
    Valid(
        "host_in_http10",
        head(b"GET / HTTP/1.0", H),
        (Req(b"GET", b"/", (HOST,), version=b"1.0", keep_alive=False),),
    ),
    # --- field lines (RFC 9112 §5, RFC 9110 §5.5)
    Valid(
        "ows_around_value_is_stripped",
        head(b"GET / HTTP/1.1", H, b"X-A:   v  \t", b"X-B:\tw\t"),
        (_get(b"/", (b"x-a", b"v"), (b"x-b", b"w")),),
    ),
    Valid(
        "no_space_after_colon",
        head(b"GET / HTTP/1.1", b"Host:example.com", b"X-A:v"),
        (_get(b"/", (b"x-a", b"v")),),
    ),
    Valid("empty_value", head(b"GET / HTTP/1.1", H, b"X-Empty:"), (_get(b"/", (b"x-empty", b"")),)),
    Valid(
        "whitespace_only_value",
        head(b"GET / HTTP/1.1", H, b"X-Empty: \t  "),
        (_get(b"/", (b"x-empty", b"")),),
    ),
    Valid(
        "inner_whitespace_kept",
        head(b"GET / HTTP/1.1", H, b"X-A: a  \t b"),
        (_get(b"/", (b"x-a", b"a  \t b")),),
    ),
    Valid(
        "obs_text_in_value",
        head(b"GET / HTTP/1.1", H, b"X-A: \xe2\x82\xac \xff"),
        (_get(b"/", (b"x-a", b"\xe2\x82\xac \xff")),),
    ),
    Valid(
        "repeated_fields_keep_order",
        head(b"GET / HTTP/1.1", H, b"Accept: a", b"X: 1", b"Accept: b"),
        (_get(b"/", (b"accept", b"a"), (b"x", b"1"), (b"accept", b"b")),),
    ),
    Valid(
        "names_lower_cased_values_raw",
        head(b"GET / HTTP/1.1", b"HOST: example.com", b"X-MiXeD: VaLuE"),
        (_get(b"/", (b"x-mixed", b"VaLuE")),),
    ),
    Valid(
        "all_tchars_in_name",
        head(b"GET / HTTP/1.1", H, b"!#$%&'*+-.^_`|~09azAZ: v"),
        (_get(b"/", (b"!#$%&'*+-.^_`|~09azaz", b"v")),),
    ),
    Valid("colons_in_value", head(b"GET / HTTP/1.1", H, b"X: a:b: c"), (_get(b"/", (b"x", b"a:b: c")),)),
    Valid(
        "quotes_and_commas_in_value",
        head(b"GET / HTTP/1.1", H, b'X: "a, b", c'),
        (_get(b"/", (b"x", b'"a, b", c')),),
    ),
    # --- persistence (RFC 9112 §9.3)
    Valid(
        "connection_close",
        head(b"GET / HTTP/1.1", H, b"Connection: close"),
        (_get(b"/", (b"connection", b"close"), keep_alive=False),),
    ),
    Valid(
        "connection_close_any_case_in_list",
        head(b"GET / HTTP/1.1", H, b"Connection: Keep-Alive, CLOSE"),
        (_get(b"/", (b"connection", b"Keep-Alive, CLOSE"), keep_alive=False),),
    ),
    Valid(
        "connection_close_in_second_field_line",
        head(b"GET / HTTP/1.1", H, b"Connection: upgrade", b"Connection: close"),
        (_get(b"/", (b"connection", b"upgrade"), (b"connection", b"close"), keep_alive=False),),
    ),
    Valid(
        "http10_keep_alive",
        head(b"GET / HTTP/1.0", b"Connection: Keep-Alive"),
        (Req(b"GET", b"/", ((b"connection", b"Keep-Alive"),), version=b"1.0"),),
    ),
    Valid(
        "http10_keep_alive_then_plain_http10",
        head(b"GET /1 HTTP/1.0", b"Connection: keep-alive") + head(b"GET /2 HTTP/1.0"),
        (
            Req(b"GET", b"/1", ((b"connection", b"keep-alive"),), version=b"1.0"),
            Req(b"GET", b"/2", (), version=b"1.0", keep_alive=False),
        ),
    ),
    Valid(
        "http10_content_length_body",
        head(b"POST / HTTP/1.0", b"Content-Length: 3") + b"abc",
        (Req(b"POST", b"/", ((b"content-length", b"3"),), b"abc", version=b"1.0", keep_alive=False),),
    ),
    # --- Content-Length (RFC 9110 §8.6, RFC 9112 §6.2)
    Valid(
        "content_length_body",
        head(b"POST /form HTTP/1.1", H, b"Content-Length: 5") + b"hello",
        (Req(b"POST", b"/form", (HOST, (b"content-length", b"5")), b"hello"),),
    ),
    Valid(
        "content_length_zero",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 0"),
        (Req(b"POST", b"/", (HOST, (b"content-length", b"0"))),),
    ),
    Valid(
        "content_length_leading_zeros",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 005") + b"hello",
        (Req(b"POST", b"/", (HOST, (b"content-length", b"005")), b"hello"),),
    ),
    Valid(
        "content_length_with_ows",
        head(b"POST / HTTP/1.1", H, b"Content-Length: \t5 ") + b"hello",
        (Req(b"POST", b"/", (HOST, (b"content-length", b"5")), b"hello"),),
    ),
    Valid(
        "body_bytes_are_opaque",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 8") + b"\r\n\x00\xff\r\n\r\n",
        (Req(b"POST", b"/", (HOST, (b"content-length", b"8")), b"\r\n\x00\xff\r\n\r\n"),),
    ),
    # RFC 9110 §9.3.1: content in a GET has no semantics, but its framing still applies.
    Valid(
        "get_with_content_length_body",
        head(b"GET / HTTP/1.1", H, b"Content-Length: 3") + b"abc",
        (_get(b"/", (b"content-length", b"3"), body=b"abc"),),
    ),
    # --- chunked (RFC 9112 §7.1)
    Valid("chunked_single_chunk", head(*POST_CHUNKED) + b"5\r\nhello\r\n0\r\n\r\n", (_chunked(b"hello"),)),
    Valid(
        "chunked_two_chunks",
        head(*POST_CHUNKED) + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        (_chunked(b"hello world"),),
    ),
    Valid("chunked_empty_body", head(*POST_CHUNKED) + b"0\r\n\r\n", (_chunked(b""),)),
    Valid(
        "chunked_hex_sizes_any_case",
        head(*POST_CHUNKED) + b"A\r\n0123456789\r\nb\r\nabcdefghijk\r\n0\r\n\r\n",
        (_chunked(b"0123456789abcdefghijk"),),
    ),
    Valid(
        "chunked_size_leading_zeros",
        head(*POST_CHUNKED) + b"0005\r\nhello\r\n0000\r\n\r\n",
        (_chunked(b"hello"),),
    ),
    Valid(
        "chunked_size_sixteen_hex_digits",
        head(*POST_CHUNKED) + b"0000000000000003\r\nabc\r\n0\r\n\r\n",
        (_chunked(b"abc"),),
    ),
    Valid(
        "chunk_data_is_opaque",
        head(*POST_CHUNKED) + b"6\r\n0\r\n\r\n\x00\r\n0\r\n\r\n",
        (_chunked(b"0\r\n\r\n\x00"),),
    ),
    # RFC 9112 §7.1.1: a recipient MUST ignore unrecognized chunk extensions.
    Valid(
        "chunk_extension_name", head(*POST_CHUNKED) + b"5;foo\r\nhello\r\n0\r\n\r\n", (_chunked(b"hello"),)
    ),
    Valid(
        "chunk_extension_token_value",
        head(*POST_CHUNKED) + b"5;foo=bar;baz\r\nhello\r\n0\r\n\r\n",
        (_chunked(b"hello"),),
    ),
    Valid(
        "chunk_extension_quoted_value",
        head(*POST_CHUNKED) + b'5;sig="a b;c=\\"d\\"\t"\r\nhello\r\n0\r\n\r\n',
        (_chunked(b"hello"),),
    ),
    Valid(
        "last_chunk_with_extension",
        head(*POST_CHUNKED) + b"5\r\nhello\r\n0;end=1\r\n\r\n",
        (_chunked(b"hello"),),
    ),
    Valid(
        "chunked_trailers",
        head(*POST_CHUNKED) + b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other:  2 \r\n\r\n",
        (_chunked(b"hello", (b"x-checksum", b"abc"), (b"x-other", b"2")),),
    ),
    Valid(
        "trailer_names_lower_cased",
        head(*POST_CHUNKED) + b"0\r\nX-UPPER: V\r\n\r\n",
        (_chunked(b"", (b"x-upper", b"V")),),
    ),
    # RFC 9110 §7.8: transfer-coding names are case-insensitive.
    Valid(
        "transfer_encoding_any_case",
        head(b"POST /upload HTTP/1.1", H, b"Transfer-Encoding: ChUnKeD") + b"1\r\nx\r\n0\r\n\r\n",
        (Req(b"POST", b"/upload", (HOST, (b"transfer-encoding", b"ChUnKeD")), b"x", chunked=True),),
    ),
    # --- Expect (RFC 9110 §10.1.1)
    Valid(
        "expect_100_continue",
        head(b"POST / HTTP/1.1", H, b"Expect: 100-continue", b"Content-Length: 2") + b"hi",
        (
            Req(
                b"POST",
                b"/",
                (HOST, (b"expect", b"100-continue"), (b"content-length", b"2")),
                b"hi",
                expect_continue=True,
            ),
        ),
    ),
    Valid(
        "expect_100_continue_any_case_chunked",
        head(*POST_CHUNKED, b"Expect: 100-Continue") + b"2\r\nhi\r\n0\r\n\r\n",
        (
            Req(
                b"POST",
                b"/upload",
                (HOST, TE_CHUNKED, (b"expect", b"100-Continue")),
                b"hi",
                chunked=True,
                expect_continue=True,
            ),
        ),
    ),
    # Nothing to wait for without a body.
    Valid(
        "expect_100_continue_without_body",
        head(b"GET / HTTP/1.1", H, b"Expect: 100-continue"),
        (_get(b"/", (b"expect", b"100-continue")),),
    ),
    # "A server that receives a 100-continue expectation in an HTTP/1.0 request MUST
    # ignore that expectation."
    Valid(
        "expect_ignored_in_http10",
        head(b"POST / HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 2") + b"hi",
        (
            Req(
                b"POST",
                b"/",
                ((b"expect", b"100-continue"), (b"content-length", b"2")),
                b"hi",
                version=b"1.0",
                keep_alive=False,
            ),
        ),
    ),
    # --- pipelining (RFC 9112 §9.3.2)
    Valid("pipelined_two_gets", GET + head(b"GET /2 HTTP/1.1", H), (_get(), _get(b"/2"))),
    Valid(
        "pipelined_mixed_framing",
        GET
        + head(b"POST /form HTTP/1.1", H, b"Content-Length: 5")
        + b"hello"
        + head(*POST_CHUNKED)
        + b"3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
        (
            _get(),
            Req(b"POST", b"/form", (HOST, (b"content-length", b"5")), b"hello"),
            _chunked(b"abc", (b"t", b"1")),
        ),
    ),
    Valid(
        "pipelined_five_with_final_close",
        b"".join(head(b"GET /%d HTTP/1.1" % i, H) for i in range(4))
        + head(b"GET /4 HTTP/1.1", H, b"Connection: close"),
        (
            *(_get(b"/%d" % i) for i in range(4)),
            _get(b"/4", (b"connection", b"close"), keep_alive=False),
        ),
    ),
    # Nothing after a request that closes the connection is parsed (RFC 9112 §9.6).
    Valid(
        "bytes_after_connection_close_are_ignored",
        head(b"GET / HTTP/1.1", H, b"Connection: close") + b"GET /smuggled HTTP/1.1\r\n\r\n\x00garbage",
        (_get(b"/", (b"connection", b"close"), keep_alive=False),),
    ),
    # An old client's extra CRLF after a POST body (RFC 9112 §2.2).
    Valid(
        "crlf_between_pipelined_requests",
        head(b"POST /form HTTP/1.1", H, b"Content-Length: 5") + b"hello\r\n" + GET,
        (Req(b"POST", b"/form", (HOST, (b"content-length", b"5")), b"hello"), _get()),
    ),
    # --- limits, exactly at the boundary
    Valid(
        "request_line_exactly_max_line",
        head(b"GET /" + b"a" * 18 + b" HTTP/1.1", H),
        (_get(b"/" + b"a" * 18),),
        limits={"max_line": 32},
    ),
    Valid(
        "field_line_exactly_max_field_size",
        head(b"GET / HTTP/1.1", H, b"X: " + b"a" * 29),
        (_get(b"/", (b"x", b"a" * 29)),),
        limits={"max_field_size": 32},
    ),
    Valid(
        "exactly_max_fields",
        head(b"GET / HTTP/1.1", H, b"A: 1", b"B: 2"),
        (_get(b"/", (b"a", b"1"), (b"b", b"2")),),
        limits={"max_fields": 3},
    ),
    Valid(
        "content_length_exactly_max_body",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 5") + b"hello",
        (Req(b"POST", b"/", (HOST, (b"content-length", b"5")), b"hello"),),
        limits={"max_body": 5},
    ),
    Valid(
        "chunked_exactly_max_body",
        head(*POST_CHUNKED) + b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
        (_chunked(b"hello"),),
        limits={"max_body": 5},
    ),
)

# -------------------------------------------------------------------------- invalid


def _bad(name: str, raw: bytes, status: int = 400, **kw: object) -> Invalid:
    return Invalid(name, raw, status, **kw)  # type: ignore[arg-type]


def _bad_chunked(name: str, body: bytes, status: int = 400, **kw: object) -> Invalid:
    """A valid chunked head followed by a bad chunked body: the error is in the body."""
    return Invalid(name, head(*POST_CHUNKED) + body, status, in_body=True, **kw)  # type: ignore[arg-type]


def _bad_field(name: str, *lines: bytes, status: int = 400) -> Invalid:
    return Invalid(name, head(b"GET / HTTP/1.1", H, *lines), status)


INVALID: tuple[Invalid, ...] = (
    # --- Content-Length together with Transfer-Encoding (RFC 9112 §6.1, §6.3 ¶3; the
    # CL.TE / TE.CL smuggling family, e.g. gunicorn < 19.10 and cheroot issue #275)
    _bad(
        "cl_and_te",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 5", b"Transfer-Encoding: chunked") + b"0\r\n\r\n",
    ),
    _bad(
        "te_and_cl",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Content-Length: 5") + b"0\r\n\r\n",
    ),
    _bad(
        "te_and_cl_zero",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Content-Length: 0") + b"0\r\n\r\n",
    ),
    # gunicorn CVE-2024-6827: an unknown coding made gunicorn fall back to Content-Length.
    _bad(
        "unknown_te_and_cl",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: xchunked", b"Content-Length: 5") + b"hello",
    ),
    # waitress CVE-2019-16786: "gzip, chunked" fell through to Content-Length.
    _bad(
        "te_list_and_cl",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip, chunked", b"Content-Length: 5") + b"hello",
    ),
    # --- Content-Length values (RFC 9110 §8.6: 1*DIGIT; differing values MUST be rejected)
    # cheroot issue #275, meinheld issue #111, waitress CVE-2019-16792: two lengths.
    _bad(
        "cl_differing_lines",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 0", b"Content-Length: 5") + b"hello",
    ),
    _bad("cl_differing_list", head(b"POST / HTTP/1.1", H, b"Content-Length: 5, 6") + b"hello!"),
    # waitress CVE-2022-24761 / protocol-http1 CVE-2023-38697: Python int() accepts these.
    _bad("cl_plus_sign", head(b"POST / HTTP/1.1", H, b"Content-Length: +5") + b"hello"),
    _bad("cl_negative", head(b"POST / HTTP/1.1", H, b"Content-Length: -1")),
    _bad("cl_hex", head(b"POST / HTTP/1.1", H, b"Content-Length: 0x5") + b"hello"),
    _bad("cl_underscore", head(b"POST / HTTP/1.1", H, b"Content-Length: 1_0") + b"0123456789"),
    _bad("cl_space_inside", head(b"POST / HTTP/1.1", H, b"Content-Length: 5 5") + b"hello"),
    _bad("cl_empty", head(b"POST / HTTP/1.1", H, b"Content-Length:")),
    _bad("cl_empty_list_element", head(b"POST / HTTP/1.1", H, b"Content-Length: 5,") + b"hello"),
    _bad("cl_decimal_point", head(b"POST / HTTP/1.1", H, b"Content-Length: 5.0") + b"hello"),
    _bad("cl_letters", head(b"POST / HTTP/1.1", H, b"Content-Length: five")),
    _bad("cl_non_ascii_digit", head(b"POST / HTTP/1.1", H, b"Content-Length: \xd9\xa5")),
    _bad("cl_vertical_tab", head(b"POST / HTTP/1.1", H, b"Content-Length: \x0b5") + b"hello"),
    # More digits than any real body: refused as too large rather than overflowing.
    # More digits than a 64-bit length holds: llhttp refuses it as malformed.
    _bad("cl_huge", head(b"POST / HTTP/1.1", H, b"Content-Length: 1" + b"0" * 30)),
    # --- Transfer-Encoding (RFC 9112 §6.1, §6.3, §7)
    _bad("te_gzip", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip"), 501),
    _bad("te_identity", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: identity"), 501),
    _bad("te_xchunked", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: xchunked"), 501),
    _bad("te_quoted_chunked", head(b"POST / HTTP/1.1", H, b'Transfer-Encoding: "chunked"'), 501),
    # RFC 9112 §7.1: "The chunked coding does not define any parameters."
    _bad("te_chunked_with_parameter", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked;q=1"), 501),
    _bad("te_gzip_then_chunked", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip, chunked"), 501),
    # Chunked not final: the length cannot be determined (RFC 9112 §6.3 ¶4): 400.
    _bad("te_chunked_then_gzip", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked, gzip")),
    # gunicorn CVE-2024-1135: conflicting Transfer-Encoding field lines.
    _bad(
        "te_lines_chunked_then_gzip",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"),
    ),
    # RFC 9112 §6.1: chunked MUST NOT be applied more than once.
    _bad(
        "te_chunked_twice", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked, chunked") + b"0\r\n\r\n"
    ),
    _bad(
        "te_chunked_twice_in_two_lines",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked")
        + b"0\r\n\r\n",
    ),
    _bad("te_empty", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding:")),
    _bad("te_only_commas", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: , ,")),
    # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
    _bad("te_in_http10", head(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked") + b"0\r\n\r\n"),
    # waitress CVE-2019-16789 and gunicorn issue #3364: other "whitespace" around chunked.
    _bad("te_vertical_tab", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: \x0bchunked") + b"0\r\n\r\n"),
    _bad(
        "te_form_feed_and_separators",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked\x0c\x1c\x1f") + b"0\r\n\r\n",
    ),
    # \xa0 and \x85 are obs-text, legal in a value, so this is an unknown coding.
    _bad(
        "te_nbsp_around_chunked", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: \x85\xa0chunked\xa0"), 501
    ),
    # gunicorn issue #3091: \xa0 / \x85 stripped from the end of names.
    _bad("te_name_with_nbsp", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding\xa0: chunked") + b"0\r\n\r\n"),
    _bad("cl_name_with_nel", head(b"POST / HTTP/1.1", H, b"Content-Length\x85: 5") + b"hello"),
    # llhttp CVE-2022-32215: a Transfer-Encoding spread over several lines.
    _bad(
        "te_obs_folded", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip,", b" chunked") + b"0\r\n\r\n"
    ),
    # --- field syntax (RFC 9112 §5)
    # §5.1: no whitespace between name and colon; a server MUST reject with 400.
    _bad_field("space_before_colon", b"X-A : v"),
    _bad(
        "space_before_colon_in_te",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding : chunked", b"Content-Length: 3") + b"abc",
    ),
    _bad_field("tab_before_colon", b"Content-Length\t: 0"),
    # §5.2: obs-fold; node CVE-2024-27982 (space before a Content-Length name).
    _bad_field("obs_fold_space", b"X-A: a", b" b"),
    _bad_field("obs_fold_tab", b"X-A: a", b"\tb"),
    _bad(
        "whitespace_before_first_field",
        head(b"POST / HTTP/1.1", b" Content-Length: 5", H) + b"hello",
    ),
    _bad_field("whitespace_only_line", b"   "),
    # mongoose issue #2293: name and value separated by whitespace only.
    _bad("field_without_colon", head(b"POST / HTTP/1.1", H, b"Content-Length 5") + b"hello"),
    _bad_field("empty_field_name", b": v"),
    _bad_field("nul_in_value", b"X: a\x00b"),
    _bad_field("soh_in_value", b"X: a\x01b"),
    _bad_field("vertical_tab_in_value", b"X: a\x0bb"),
    _bad_field("form_feed_in_value", b"X: a\x0cb"),
    _bad_field("escape_in_value", b"X: \x1b[31m"),
    _bad_field("unit_separator_in_value", b"X: a\x1fb"),
    _bad_field("del_in_value", b"X: a\x7fb"),
    _bad_field("nul_in_name", b"X\x00A: v"),
    _bad_field("space_in_name", b"X A: v"),
    _bad_field("separator_in_name", b"X(A): v"),
    _bad_field("del_in_name", b"X\x7f: v"),
    _bad_field("obs_text_in_name", b"X\xc3\xa9: v"),
    # --- line endings (RFC 9112 §2.2: a bare CR MUST be rejected or replaced; we accept
    # only CRLF). waitress CVE-2019-16785 (GHSA-pg36-wpm5-g57p): bare LF inside a head.
    _bad(
        "bare_lf_between_fields",
        b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n"
        b"X-Header: x\nContent-Length: 0\r\n\r\n0123456789",
    ),
    # llhttp issue #877: bare LF after the request line.
    _bad("bare_lf_after_request_line", b"GET /x HTTP/1.1\nHost: example.com\r\n\r\n"),
    _bad("bare_lf_everywhere", b"GET / HTTP/1.1\nHost: example.com\n\n"),
    _bad("bare_lf_ends_head", b"GET / HTTP/1.1\r\nHost: example.com\r\n\n"),
    _bad("bare_lf_only_line_endings_no_host", b"GET / HTTP/1.0\n\n"),
    _bad("bare_cr_in_request_line", b"GET / HTTP/1.1\rHost: example.com\r\n\r\n"),
    # llhttp CVE-2023-30589: a bare CR taken as a field line terminator.
    _bad(
        "bare_cr_in_value",
        head(b"POST / HTTP/1.1", H, b"X-Abc: \rxTransfer-Encoding: chunked") + b"1\r\nA\r\n0\r\n\r\n",
    ),
    # lwan issue #368: "\rX" treated as the end of a field line.
    _bad(
        "cr_x_ends_field",
        b"POST / HTTP/1.1\r\nHost: a\rX\r\nContent-Length: 31\r\n\r\nGET /evil HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    # node CVE-2025-23167: "\r\n\rX" accepted as the end of the head.
    _bad("cr_after_last_field", b"GET / HTTP/1.1\r\nHost: example.com\r\n\rGET /evil HTTP/1.1\r\n\r\n"),
    # --- Host (RFC 9112 §3.2: 400 for a missing, repeated or invalid Host)
    _bad("missing_host", head(b"GET / HTTP/1.1")),
    _bad("missing_host_absolute_form", head(b"GET http://example.org/ HTTP/1.1")),
    _bad("two_hosts", head(b"GET / HTTP/1.1", H, b"Host: other.example")),
    _bad("two_identical_hosts", head(b"GET / HTTP/1.1", H, H)),
    _bad("two_hosts_in_http10", head(b"GET / HTTP/1.0", H, b"Host: other.example")),
    _bad("host_list", head(b"GET / HTTP/1.1", b"Host: a.example, b.example")),
    _bad("host_with_userinfo", head(b"GET / HTTP/1.1", b"Host: user@example.com")),
    _bad("host_with_path", head(b"GET / HTTP/1.1", b"Host: example.com/evil")),
    _bad("host_with_scheme", head(b"GET / HTTP/1.1", b"Host: http://example.com")),
    _bad("host_with_space", head(b"GET / HTTP/1.1", b"Host: exa mple.com")),
    _bad("host_non_numeric_port", head(b"GET / HTTP/1.1", b"Host: example.com:http")),
    _bad("host_two_ports", head(b"GET / HTTP/1.1", b"Host: example.com:1:2")),
    _bad("host_unclosed_ip_literal", head(b"GET / HTTP/1.1", b"Host: [::1")),
    _bad("host_backslash", head(b"GET / HTTP/1.1", b"Host: example.com\\evil")),
    # --- HTTP version (RFC 9112 §2.3; RFC 9110 §15.6.6)
    _bad("http20", head(b"GET / HTTP/2.0", H), 505),
    _bad("http09", head(b"GET / HTTP/0.9", H), 505),
    # llhttp knows versions 0.9, 1.0, 1.1 and 2.0 only: anything else is malformed (400);
    # the known ones other than 1.x are refused with 505 (below).
    _bad("http30_without_host", head(b"GET / HTTP/3.0")),
    _bad("version_three_parts", head(b"GET / HTTP/1.1.1", H)),
    _bad("version_without_dot", head(b"GET / HTTP/11", H)),
    _bad("version_two_digit_major", head(b"GET / HTTP/10.1", H)),
    _bad("version_lowercase", head(b"GET / http/1.1", H)),
    _bad("version_https_name", head(b"GET / HTTPS/1.1", H)),
    _bad("version_missing_minor", head(b"GET / HTTP/1", H)),
    # llhttp reads a request line without a version as HTTP/0.9, which is refused (505).
    _bad("version_missing_http09_style", head(b"GET /", H), 505),
    # --- request line (RFC 9112 §3: exactly one SP between the three parts)
    _bad("trailing_space", head(b"GET / HTTP/1.1 ", H)),
    _bad("leading_space", head(b" GET / HTTP/1.1", H)),
    _bad("tabs_as_separators", head(b"GET\t/\tHTTP/1.1", H)),
    _bad("space_inside_target", head(b"GET /a b HTTP/1.1", H)),
    _bad("missing_target", head(b"GET HTTP/1.1", H)),
    _bad("missing_method", head(b"/ HTTP/1.1", H)),
    _bad("method_only", head(b"GET", H)),
    _bad("separator_in_method", head(b"G(T / HTTP/1.1", H)),
    _bad("nul_in_target", head(b"GET /a\x00b HTTP/1.1", H)),
    _bad("del_in_target", head(b"GET /a\x7f HTTP/1.1", H)),
    _bad("relative_target", head(b"GET index.html HTTP/1.1", H)),
    # RFC 9112 §3.2.3: authority-form is only for CONNECT.
    _bad("authority_form_for_get", head(b"GET example.com:80 HTTP/1.1", H)),
    # RFC 9110 §4.2.4: userinfo in an http(s) URI is invalid.
    _bad("absolute_form_userinfo", head(b"GET http://user:pass@example.com/ HTTP/1.1", H)),
    _bad("absolute_form_empty_userinfo", head(b"GET http://@example.com/ HTTP/1.1", H)),
    _bad("absolute_form_empty_authority", head(b"GET http:///etc/passwd HTTP/1.1", H)),
    _bad("absolute_form_unsupported_scheme", head(b"GET ftp://example.com/ HTTP/1.1", H)),
    # RFC 9112 §3.2.4: asterisk-form is only for OPTIONS.
    _bad("asterisk_form_for_get", head(b"GET * HTTP/1.1", H)),
    _bad("asterisk_with_suffix", head(b"OPTIONS *x HTTP/1.1", H)),
    _bad("connect_not_implemented", head(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"), 501),
    # RFC 9112 §3.2: a fragment is never sent (RFC 3986 §3.5 removes it first).
    _bad("fragment_in_target", head(b"GET /page#frag HTTP/1.1", H)),
    _bad("fragment_after_query", head(b"GET /p?q=1#frag HTTP/1.1", H)),
    # A TLS ClientHello sent to a plain-text port is refused at its first byte.
    _bad("tls_client_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    _bad("nul_first_byte", b"\x00GET / HTTP/1.1\r\n"),
    # --- Expect (RFC 9110 §10.1.1: 417 for an expectation we cannot meet)
    _bad("expect_unknown", head(b"POST / HTTP/1.1", H, b"Expect: fly", b"Content-Length: 1") + b"x", 417),
    _bad(
        "expect_continue_plus_unknown",
        head(b"POST / HTTP/1.1", H, b"Expect: 100-continue, fly", b"Content-Length: 1") + b"x",
        417,
    ),
    _bad("expect_continue_with_parameter", head(b"GET / HTTP/1.1", H, b"Expect: 100-continue;x=1"), 417),
    # --- limits
    _bad("request_line_too_long", head(b"GET /" + b"a" * 8190 + b" HTTP/1.1", H), 414),
    _bad(
        "request_line_over_small_limit",
        # The limit applies to the request-target (llhttp hands over only that part).
        head(b"GET /" + b"a" * 32 + b" HTTP/1.1", H),
        414,
        limits={"max_line": 32},
    ),
    _bad("request_line_never_ends", b"GET /" + b"a" * 64, 414, limits={"max_line": 32}),
    _bad("too_many_fields", head(b"GET / HTTP/1.1", H, *(b"X-%d: v" % i for i in range(100))), 431),
    _bad(
        "too_many_fields_small_limit",
        head(b"GET / HTTP/1.1", H, b"A: 1", b"B: 2", b"C: 3"),
        431,
        limits={"max_fields": 3},
    ),
    _bad("field_too_large", head(b"GET / HTTP/1.1", H, b"X: " + b"a" * 8188), 431),
    _bad(
        "field_over_small_limit",
        head(b"GET / HTTP/1.1", H, b"X: " + b"a" * 30),
        431,
        limits={"max_field_size": 32},
    ),
    _bad(
        "head_never_ends",
        b"GET / HTTP/1.1\r\n" + b"X: 1234567890\r\n" * 10,
        431,
        limits={"max_line": 32, "max_fields": 2, "max_field_size": 16},
    ),
    _bad(
        "body_over_limit",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 6") + b"hello!",
        413,
        limits={"max_body": 5},
    ),
    # The chunked limit is cumulative: each chunk is small, their sum is not.
    _bad_chunked(
        "chunked_body_over_limit", b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 413, limits={"max_body": 5}
    ),
    # More empty lines before the request line than a request line may be long.
    # --- chunk-size (RFC 9112 §7.1: chunk-size = 1*HEXDIG)
    _bad_chunked("chunk_size_not_hex", b"g\r\nhello\r\n0\r\n\r\n"),
    # WEBrick issue #124, Pound issue #19, waitress CVE-2022-24761: "0x" prefixes.
    _bad_chunked("chunk_size_0x_prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_size_plus_sign", b"+5\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_size_minus_zero", b"-0\r\n\r\n"),
    # uhttpd issue #3: "0_0" (Python int() accepts underscores too).
    _bad_chunked("chunk_size_underscore", b"0_5\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_size_leading_space", b" 5\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_size_trailing_space", b"5 \r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_size_leading_cr", b"\r5\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_size_overflow", b"10000000000000000\r\nhello\r\n0\r\n\r\n"),
    # mongoose issue #2552: a chunked body ended by an empty line instead of "0".
    _bad_chunked("chunk_size_missing", b"5\r\nhello\r\n\r\n\r\n"),
    _bad_chunked("chunk_size_missing_before_extension", b";a=b\r\nhello\r\n0\r\n\r\n"),
    # Go CVE-2025-22871: a bare LF ending a chunk-size line.
    _bad_chunked("chunk_size_bare_lf", b"5\nhello\r\n0\r\n\r\n"),
    _bad_chunked("last_chunk_bare_lf", b"5\r\nhello\r\n0\n\r\n"),
    # --- chunk-data CRLF. h11 CVE-2025-43859: any two bytes were taken as the CRLF.
    _bad_chunked("chunk_data_followed_by_xx", b"5\r\nhelloXX0\r\n\r\n"),
    _bad_chunked("chunk_data_too_long", b"5\r\nhello!\r\n0\r\n\r\n"),
    _bad_chunked("chunk_data_without_crlf", b"5\r\nhello0\r\n\r\n"),
    _bad_chunked("chunk_data_bare_lf", b"5\r\nhello\n0\r\n\r\n"),
    _bad_chunked("chunk_data_bare_cr", b"5\r\nhello\r0\r\n\r\n"),
    # --- chunk extensions (RFC 9112 §7.1.1). waitress CVE-2022-24761: unvalidated
    # extensions; Kestrel CVE-2025-55315 and aiohttp / fasthttp #1899: LF inside one.
    _bad_chunked("chunk_ext_bare_semicolon", b"5;\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_ext_lf_inside", b"5;\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_ext_lf_then_more", b"2;\nxx\r\n0\r\n\r\n"),
    _bad_chunked("chunk_ext_bare_cr", b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_ext_nul", b"5;\x00ext\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_ext_double_equals", b"5;a=b=c\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_ext_space_in_value", b"5;a=b c\r\nhello\r\n0\r\n\r\n"),
    _bad_chunked("chunk_ext_unterminated_quote", b'5;a="b\r\nhello\r\n0\r\n\r\n'),
    _bad_chunked("chunk_ext_ctl_in_quote", b'5;a="b\x01"\r\nhello\r\n0\r\n\r\n'),
    _bad_chunked("chunk_ext_comma_separator", b"5,a\r\nhello\r\n0\r\n\r\n"),
    # RFC 9112 §7.1.1: a server ought to limit the length of chunk extensions.
    # --- trailer section (RFC 9112 §7.1.2). gevent CVE-2023-41419: invalid trailers on
    # a keep-alive connection were seen as a second request.
    _bad_chunked("trailer_is_a_request_line", b"0\r\nGET /admin HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    _bad_chunked("trailer_obs_fold", b"0\r\nX: a\r\n b\r\n\r\n"),
    _bad_chunked("trailer_space_before_colon", b"0\r\nX : a\r\n\r\n"),
    _bad_chunked("trailer_bare_lf", b"0\r\nX: a\n\r\n"),
    _bad_chunked("trailer_section_bare_lf", b"0\r\n\n"),
    _bad_chunked("trailer_nul", b"0\r\nX: a\x00\r\n\r\n"),
    _bad_chunked("trailer_bare_cr", b"0\r\nX: a\rb\r\n\r\n"),
    _bad_chunked("too_many_trailers", b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 431, limits={"max_fields": 2}),
    # --- incomplete messages (RFC 9112 §8): an error only once the peer has closed.
    _bad("eof_in_request_line", b"GET / HT", eof=True),
    _bad("eof_in_fields", b"GET / HTTP/1.1\r\nHost: example.com\r\n", eof=True),
    _bad("eof_before_final_lf", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r", eof=True),
    _bad(
        "eof_in_content_length_body",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 10") + b"hello",
        eof=True,
        in_body=True,
    ),
    _bad_chunked("eof_in_chunk_size", b"5", eof=True),
    _bad_chunked("eof_in_chunk_data", b"5\r\nhel", eof=True),
    _bad_chunked("eof_before_chunk_crlf", b"5\r\nhello", eof=True),
    _bad_chunked("eof_between_cr_and_lf_after_chunk", b"5\r\nhello\r", eof=True),
    _bad_chunked("eof_before_last_chunk", b"5\r\nhello\r\n", eof=True),
    _bad_chunked("eof_after_last_chunk", b"0\r\n", eof=True),
    _bad_chunked("eof_in_trailers", b"0\r\nX: a\r\n", eof=True),
    # --- errors that an incremental parser sees on a short prefix: whatever follows
    # (here a line longer than the limit), the answer is the one the prefix implies.
    _bad("leading_space_then_long_line", b" " * 9000 + b"\r\n\r\n"),
    # Malformed *and* over a size limit: which is noticed first depends on the read sizes.
    _bad(
        "bare_lf_then_long_line",
        b"GET /\n" + b"a" * 9000 + b" HTTP/1.1\r\nHost: example.com\r\n\r\n",
        also=(431,),
    ),
    # (found by tests/fuzz_http1.py) two errors: llhttp refuses the bare LF while the
    # head is read; the version (505) is only judged once the head is complete.
    _bad("bare_lf_in_head_with_unsupported_version", b"GET / HTTP/2.0\r\nX: a\nY: b\r\n\r\n"),
    _bad(
        "bare_lf_early_in_head_over_the_head_limit",
        b"GET / HTTP/1.1\r\nX: a\nY: b\r\n" + b"Z: 1234567890\r\n" * 5,
        limits={"max_line": 32, "max_fields": 2, "max_field_size": 16},
    ),
    _bad_chunked(
        "bare_lf_early_in_trailers_over_the_trailer_limit",
        b"0\r\nX: a\nY: b" + b"z" * 80,
        limits={"max_fields": 2, "max_field_size": 30},
    ),
    # (found by tests/fuzz_http1.py) the request line is too long before the head is.
    _bad(
        "long_request_line_in_a_head_over_the_head_limit",
        head(b"GET /" + b"a" * 40 + b" HTTP/1.1", b"Host: " + b"b" * 30),
        414,
        limits={"max_line": 32, "max_fields": 2, "max_field_size": 16},
    ),
    # --- errors after valid pipelined requests
    _bad(
        "second_pipelined_request_has_two_lengths",
        GET + head(b"POST / HTTP/1.1", H, b"Content-Length: 1", b"Content-Length: 2") + b"ab",
        before=(_get(),),
    ),
    _bad(
        "garbage_after_chunked_body",
        head(*POST_CHUNKED) + b"1\r\nx\r\n0\r\n\r\n\x00GET / HTTP/1.1\r\n\r\n",
        before=(_chunked(b"x"),),
    ),
    _bad(
        "bytes_after_cl_body_are_the_next_request",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 3") + b"abcGET / HTTP/1.1\r\n\r\n",
        before=(Req(b"POST", b"/", (HOST, (b"content-length", b"3")), b"abc"),),
    ),
    # --- refused by the llhttp tokenizer (stricter than RFC 9110/9112 requires)
    # RFC 3986 URIs are ASCII; clients percent-encode (a raw UTF-8 path is refused).
    _bad("utf8_bytes_in_path", head(b"GET /caf\xc3\xa9/\xe2\x82\xac HTTP/1.1", H)),
    # llhttp knows the registered methods (RFC 9110, WebDAV, ...) only; others are refused.
    _bad("extension_method_token", head(b"M-SEARCH~1 / HTTP/1.1", H)),
    _bad("lowercase_method_is_a_different_token", head(b"get / HTTP/1.1", H)),
    _bad("http12", head(b"GET / HTTP/1.2", H)),
    _bad("http19", head(b"GET / HTTP/1.9", H)),
    # RFC 9110 §8.6 allows accepting identical values; llhttp refuses any duplicate.
    _bad("content_length_identical_list", head(b"POST / HTTP/1.1", H, b"Content-Length: 5, 5") + b"hello"),
    _bad(
        "content_length_identical_lines",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 5", b"Content-Length: 5") + b"hello",
    ),
    _bad_chunked("chunk_extension_with_bws", b"5 ; a = b\t;\tc\r\nhello\r\n0\r\n\r\n"),
    _bad(
        "transfer_encoding_empty_list_elements",
        head(b"POST /upload HTTP/1.1", H, b"Transfer-Encoding: , chunked ,") + b"1\r\nx\r\n0\r\n\r\n",
    ),
)

ALLOWED_STATUSES: frozenset[int] = frozenset({400, 408, 413, 414, 417, 431, 501, 505})


# Accepted since the tokenizer moved to llhttp: RFC 9112 §3 lets a recipient parse the
# request line on whitespace boundaries, empty lines before a request cost nothing to
# skip (nothing is buffered), and chunk extensions are ignored, never buffered.
VALID = (
    *VALID,
    Valid("two_spaces_after_method", head(b"GET  / HTTP/1.1", H), (_get(),)),
    Valid("two_spaces_before_version", head(b"GET /  HTTP/1.1", H), (_get(),)),
    Valid("many_leading_empty_lines", b"\r\n" * 9 + head(b"GET / HTTP/1.1", H), (_get(),)),
    Valid(
        "chunk_size_seventeen_digits",
        head(*POST_CHUNKED) + b"00000000000000005\r\nhello\r\n0\r\n\r\n",
        (_chunked(b"hello"),),
    ),
    Valid(
        "chunk_ext_many",
        head(*POST_CHUNKED) + b"5" + b";a=b" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
        (_chunked(b"hello"),),
    ),
    Valid(
        "chunk_ext_missing_name", head(*POST_CHUNKED) + b"5;=b\r\nhello\r\n0\r\n\r\n", (_chunked(b"hello"),)
    ),
    Valid(
        "chunk_ext_empty_value", head(*POST_CHUNKED) + b"5;a=\r\nhello\r\n0\r\n\r\n", (_chunked(b"hello"),)
    ),
)
