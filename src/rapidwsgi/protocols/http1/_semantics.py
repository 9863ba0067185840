"""HTTP/1.1 request semantics and limits, independent of how the head was tokenized.

Contract: :func:`request_from_head` takes a syntactically valid request head (method,
target, version, fields with lower-cased names) and either returns the
:class:`~rapidwsgi.events.Request` with its framing decided, or raises the
:class:`~rapidwsgi.errors.RemoteProtocolError` the first violation implies
(RFC 9110 / RFC 9112). Of the size limits every front-end applies
(:class:`~rapidwsgi.protocols.base.Limits`), this module checks the declared
Content-Length against ``max_body`` (413); the tokenizer (``_tokenizer.py``) checks the
request-target and field limits (414/431) and the body bytes as they arrive (413).
"""

from __future__ import annotations

from typing import Final

from ..._bounded import remember
from ...errors import (
    BadRequest,
    ContentTooLarge,
    ExpectationFailed,
    NotImplementedByServer,
)
from ...events import CHUNKED, FORWARDING_FIELDS, LENGTH, NO_BODY, Request
from .. import _grammar as g
from ..base import MAX_LENGTH_DIGITS

# The forwarding fields are looked up in the same set (one lookup per field either way):
# a request carrying one is flagged, so the others skip the forwarding policy.
_SPECIAL_FIELDS: Final = (
    frozenset((b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"))
    | FORWARDING_FIELDS
)
#: Host values already validated (a server sees few distinct ones; bounded:
#: _bounded.remember).
_valid_hosts: Final[dict[bytes, bool]] = {}
_MAX_VALID_HOSTS: Final = 64


def _split_list(values: list[bytes]) -> list[bytes]:
    """Parse a comma-separated list field (RFC 9110 §5.6.1), lower-cased, empties dropped."""
    out = []
    for value in values:
        for raw in value.split(b","):
            item = raw.strip(b" \t")
            if item:
                out.append(item.lower())
    return out


def request_from_head(
    method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]], max_body: int = 0
) -> Request:
    """Apply RFC 9110/9112 request semantics to a syntactically valid head.

    ``headers`` have lower-case names. Checks Host (§3.2), the target form (§3.2),
    body framing (§6), persistence (§9.3) and expectations (RFC 9110 §10.1.1); raises
    the RemoteProtocolError that the first violation implies.
    """
    content_lengths: list[bytes] | None = None
    codings: list[bytes] | None = None
    connection: list[bytes] | None = None
    expect: list[bytes] | None = None
    host: bytes | None = None
    host_count = 0
    forwarded = False
    for lname, value in headers:
        if lname not in _SPECIAL_FIELDS:
            continue
        if lname == b"host":
            host = value
            host_count += 1
        elif lname == b"content-length":
            content_lengths = [value] if content_lengths is None else [*content_lengths, value]
        elif lname == b"transfer-encoding":
            codings = [value] if codings is None else [*codings, value]
        elif lname == b"connection":
            connection = [value] if connection is None else [*connection, value]
        elif lname == b"expect":
            expect = [value] if expect is None else [*expect, value]
        else:
            forwarded = True

    # RFC 9112 §3.2: exactly one valid Host in HTTP/1.1, at most one in HTTP/1.0.
    if host_count > 1:
        raise BadRequest("more than one Host header")
    if host_count == 0 and version == b"1.1":
        raise BadRequest("missing Host header")
    if host is not None and host not in _valid_hosts:
        if g.HOST_VALUE.fullmatch(host) is None:
            raise BadRequest("invalid Host header")
        remember(_valid_hosts, host, True, _MAX_VALID_HOSTS)

    # Target forms, RFC 9112 §3.2.
    authority: bytes | None = None
    if method == b"CONNECT":
        raise NotImplementedByServer("CONNECT is not supported")
    if target[0] == 0x2F:  # "/": origin-form
        path, _, query = target.partition(b"?")
    elif target == b"*":
        if method != b"OPTIONS":
            raise BadRequest("asterisk-form is only valid for OPTIONS")
        path, query = b"*", b""
    else:
        authority, path, query = _absolute_form(target)
    # (bytes.find, not `in`: CPython's bytes.__contains__ first tries the operand as an
    # int and raises internally, which costs more than the search itself.)
    if target.find(b"#") >= 0:
        raise BadRequest("fragment in request target")

    # Body framing, RFC 9112 §6.1-§6.3.
    framing = NO_BODY
    content_length = 0
    if codings is not None:
        if version == b"1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if content_lengths is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        items = _split_list(codings)
        if not items:
            raise BadRequest("empty Transfer-Encoding")
        for item in items:
            if item != b"chunked":
                raise NotImplementedByServer("unsupported transfer coding")
        if len(items) != 1:
            raise BadRequest("chunked applied more than once")
        framing = CHUNKED
    elif content_lengths is not None:
        content_length = _content_length(content_lengths)
        if max_body and content_length > max_body:
            raise ContentTooLarge("request body too large")
        if content_length:
            framing = LENGTH

    # Persistence, RFC 9112 §9.3.
    if version == b"1.1":
        keep_alive = True
        if connection is not None and b"close" in _split_list(connection):
            keep_alive = False
    else:
        keep_alive = False
        if connection is not None:
            tokens = _split_list(connection)
            keep_alive = b"keep-alive" in tokens and b"close" not in tokens

    # Expectations, RFC 9110 §10.1.1 (ignored in HTTP/1.0 requests).
    expect_continue = False
    if expect is not None and version == b"1.1":
        for item in _split_list(expect):
            if item != b"100-continue":
                raise ExpectationFailed("unsupported expectation")
        expect_continue = framing != NO_BODY

    return Request(
        method,
        target,
        path,
        query,
        version,
        headers,
        authority=authority,
        content_length=content_length,
        framing=framing,
        keep_alive=keep_alive,
        expect_continue=expect_continue,
        forwarded=forwarded,
    )


def _content_length(values: list[bytes]) -> int:
    """RFC 9110 §8.6: 1*DIGIT; a list of identical values may be accepted as one."""
    lengths = set()
    for value in values:
        for raw in value.split(b","):
            item = raw.strip(b" \t")
            if g.DIGITS.fullmatch(item) is None:
                raise BadRequest("invalid Content-Length")
            if len(item.lstrip(b"0")) > MAX_LENGTH_DIGITS:
                raise ContentTooLarge("request body too large")
            lengths.add(int(item))
    if len(lengths) != 1:
        raise BadRequest("conflicting Content-Length values")
    return lengths.pop()


def _absolute_form(target: bytes) -> tuple[bytes, bytes, bytes]:
    """Split an absolute-form target (RFC 9112 §3.2.2) into authority, path, query."""
    lowered = target[:8].lower()
    if lowered.startswith(b"http://"):
        rest = target[7:]
    elif lowered.startswith(b"https://"):
        rest = target[8:]
    else:
        raise BadRequest("invalid request target")
    cut = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    authority = rest[:cut]
    # RFC 9110 §4.2.4: userinfo in an http(s) URI is an error to treat as such.
    if not authority or authority.find(b"@") >= 0 or g.HOST_VALUE.fullmatch(authority) is None:
        raise BadRequest("invalid authority in request target")
    path, _, query = rest[cut:].partition(b"?")
    return authority, path or b"/", query
