"""The protocol-neutral vocabulary every front-end speaks.

A front-end (HTTP/1.1: ``protocols/http1/``; uwsgi: ``protocols/uwsgi.py``; FastCGI:
``protocols/fastcgi.py``) turns wire bytes into these events and turns
:class:`Response` / body bytes back into wire bytes. Everything above the protocol layer
(the WSGI adapter, the connection) only ever sees these classes.

Contract: events are plain value objects; they hold bytes exactly as received
(header names lower-cased) and never refer back to a connection or a socket.
"""

from __future__ import annotations

from typing import Final

#: The ``--protocol`` names of the front-ends, in the order of their
#: ``ServerConnection.METRICS_PROTOCOL`` index: the one list that ``config`` validates
#: against, ``metrics`` labels its counters with and ``worker.WIRE_PROTOCOLS`` maps to
#: the front-end classes.
PROTOCOLS: Final = ("http", "uwsgi", "fastcgi")

#: Request fields through which a proxy speaks for the client, lower-case as on the wire:
#: the one list. ``forwarded.PROXY_HEADERS`` (what ``--trusted-proxy-headers`` may name,
#: in this order) is every one but X-Forwarded-By, which is only ever cleared
#: (``forwarded.CLEARED_ONLY``); the HTTP/1.1 parsers set ``Request.forwarded`` for any
#: of them (``_cfast.c``'s field table is held to this list by tests/test_environ_builder.py).
FORWARDING_NAMES: Final = (
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-real-ip",
    b"x-forwarded-by",
)
FORWARDING_FIELDS: Final = frozenset(FORWARDING_NAMES)

# How a message body is delimited: ``Request.framing``, decided by the front-end when it
# builds the request (never changed afterwards), and the response framing that
# ``protocols/base.py`` chooses (the same values).
#: No body: the head is the whole message.
NO_BODY: Final = 0
#: ``content_length`` bytes (RFC 9112 §6.2).
LENGTH: Final = 1
#: The chunked transfer coding, ended by the last chunk (RFC 9112 §7.1).
CHUNKED: Final = 2
#: Responses only: the connection's close ends the body (RFC 9112 §6.3 rule 8). A
#: request is never delimited this way (rule 7: without framing it has no body).
UNTIL_CLOSE: Final = 3
#: Delimited by the gateway protocol's own stream, with no length declared: FastCGI's
#: empty STDIN record ends a request body, END_REQUEST ends a response body.
GATEWAY_FRAMED: Final = 4


class Request:
    """A complete request head.

    ``target`` is the request-target as sent (for RAW_URI); ``path`` and ``query`` are
    its origin-form parts (``path`` is still percent-encoded); ``authority`` is the
    host from an absolute-form target (RFC 9112 §3.2.2: it overrides ``Host``).
    ``headers`` keeps every field line in order with the name lower-cased.
    Body framing: ``framing`` (:data:`NO_BODY`, :data:`LENGTH` for ``content_length``
    bytes, :data:`CHUNKED` or :data:`GATEWAY_FRAMED`), given by the front-end that
    builds the request or else derived from ``chunked`` and ``content_length``; it is
    never changed afterwards. (A FastCGI request with a declared CONTENT_LENGTH, even 0,
    is :data:`LENGTH`: its STDIN stream still ends the body, and must agree.)
    ``extra`` carries CGI variables a gateway protocol (uwsgi, FastCGI) supplied.
    ``forwarded``: one of the :data:`FORWARDING_FIELDS` is among the headers (set by the
    HTTP/1.1 parser in the pass it already makes over the special fields), so only such
    requests pay for looking at the forwarding policy (``forwarded.py``).
    """

    __slots__ = (
        "authority",
        "content_length",
        "expect_continue",
        "extra",
        "forwarded",
        "framing",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "target",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        query: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        authority: bytes | None = None,
        content_length: int = 0,
        chunked: bool = False,
        keep_alive: bool = True,
        expect_continue: bool = False,
        extra: dict[str, str] | None = None,
        forwarded: bool = False,
        framing: int = -1,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.authority = authority
        self.content_length = content_length
        if framing < 0:
            framing = CHUNKED if chunked else LENGTH if content_length > 0 else NO_BODY
        self.framing = framing
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.extra = extra
        self.forwarded = forwarded

    @property
    def chunked(self) -> bool:
        return self.framing == CHUNKED

    @property
    def has_body(self) -> bool:
        return self.framing != NO_BODY

    def __repr__(self) -> str:
        return (
            f"Request(method={self.method!r}, target={self.target!r}, "
            f"version={self.version!r}, headers={self.headers!r}, "
            f"content_length={self.content_length}, framing={self.framing}, "
            f"keep_alive={self.keep_alive}, expect_continue={self.expect_continue})"
        )


class Data:
    """A piece of request body, already de-framed."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({self.data!r})"


class EndOfMessage:
    """The request body is complete. ``trailers`` holds chunked trailer fields."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.trailers = trailers if trailers is not None else []

    def __repr__(self) -> str:
        return f"EndOfMessage(trailers={self.trailers!r})"


#: The EndOfMessage without trailers, shared (events are never mutated).
EMPTY_EOM: Final = EndOfMessage()


class Reply:
    """Protocol-level bytes the connection writes back at once (FastCGI management
    answers, refusals of a second multiplexed request); never produced by HTTP/1.1."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Reply({self.data!r})"


class ConnectionClosed:
    """The peer closed its side cleanly between requests."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ConnectionClosed()"


class Response:
    """A response head as the shared response writer built it.

    ``status_line`` is e.g. ``b"200 OK"``; ``headers`` is the already validated and
    serialised block of ``Name: value\\r\\n`` lines (Date and Server included).
    ``content_length`` is the app's Content-Length, if it gave one; ``close`` is True
    when the application asked for ``Connection: close``. Framing headers
    (Content-Length / Transfer-Encoding / Connection) are the protocol's business.
    """

    __slots__ = ("close", "content_length", "headers", "status", "status_line")

    def __init__(
        self,
        status: int,
        status_line: bytes,
        headers: bytes,
        content_length: int | None = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.status_line = status_line
        self.headers = headers
        self.content_length = content_length
        self.close = close

    def __repr__(self) -> str:
        return (
            f"Response({self.status}, {self.status_line!r}, {self.headers!r}, "
            f"content_length={self.content_length}, close={self.close})"
        )


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``next_event()`` needs more bytes before it can say anything.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: ``next_event()`` will not parse further until the current response is finished
#: (pipelined requests wait their turn, RFC 9112 §9.3.2).
PAUSED: Final = _Sentinel("PAUSED")

Event = Request | Data | EndOfMessage | ConnectionClosed | Reply
