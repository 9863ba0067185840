"""llhttp (through httptools) as the request tokenizer, with rapidwsgi's rules on top.

llhttp does the byte-level work in C: request line, field syntax (it refuses CR, LF,
NUL and other control bytes, obs-fold, whitespace before the colon, bare LF line
endings, malformed chunk framing, Content-Length together with Transfer-Encoding,
duplicate Content-Length). This module turns its callbacks into
:mod:`rapidwsgi.events` and adds what llhttp does not do:

* request semantics (``request_from_head``): exactly one Host, target forms, framing
  rules (501 for unknown transfer codings, no Transfer-Encoding in HTTP/1.0), 505 for
  versions other than 1.0/1.1, Expect, persistence;
* limits (414/431), checked exactly on each complete target and field — llhttp has
  none; the declared Content-Length is held to ``max_body`` with the head, the bytes
  of a chunked body as they are taken (``ServerConnection._on_data``, 413).
  (httptools accumulates a field that arrives in pieces with repeated ``bytes +=``;
  the caller therefore feeds a head that is still incomplete in pieces of at least a
  few KiB, which keeps that accumulation cheap, and bounds the memory of an endless
  head.)
* trailing whitespace is stripped from field values (RFC 9112 §5: OWS is not part of
  the value; llhttp keeps it).

Callbacks never let an error pass silently: they record it and raise, which makes
llhttp stop; the caller reports the recorded error.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, NoReturn

import httptools

from ...errors import (
    HeaderFieldsTooLarge,
    RemoteProtocolError,
    URITooLong,
    VersionNotSupported,
)
from ...events import EMPTY_EOM, NO_BODY, Data, EndOfMessage, Request
from ..base import Limits
from ._semantics import request_from_head

#: Events and errors, in stream order, as the callbacks produce them.
QueueItem = Request | Data | EndOfMessage | RemoteProtocolError

_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}


class Tokenizer:
    """Receives llhttp's callbacks for one connection (see the module docstring)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.queue: deque[QueueItem] = deque()
        #: Body bytes queued as Data events and not yet taken.
        self.queued_bytes = 0
        self.error: RemoteProtocolError | None = None
        #: Made on first use (``feed``): a connection whose requests the C path serves
        #: never needs one, and making one costs thousands of instructions.
        self.parser: Any = None
        self.in_message = False
        self.in_head = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.saw_connection = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.has_body = False

    def feed(self, data: bytes) -> None:
        """Feed bytes to llhttp (its callbacks run; its errors propagate)."""
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        parser.feed_data(data)

    def restart(self) -> None:
        """A fresh llhttp parser (after an Upgrade request, which llhttp stops at)."""
        self.parser = httptools.HttpRequestParser(self)

    def _fail(self, exc: RemoteProtocolError) -> NoReturn:
        self.error = exc
        raise exc

    # -- llhttp callbacks

    def on_message_begin(self) -> None:
        self.in_message = True
        self.in_head = True
        self.url = b""
        self.headers = []
        self.saw_connection = False
        self.trailers = None
        self.has_body = False

    def on_url(self, url: bytes) -> None:
        self.url = url if not self.url else self.url + url
        if len(self.url) > self.limits.max_line:
            self._fail(URITooLong("request target too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        if len(name) + len(value) + 2 > limits.max_field_size:
            self._fail(HeaderFieldsTooLarge("header field too large"))
        if value and value[len(value) - 1] in (0x20, 0x09):
            value = value.rstrip(b" \t")  # RFC 9112 §5: trailing OWS is not the value
        if self.in_head:
            headers = self.headers
            if len(headers) >= limits.max_fields:
                self._fail(HeaderFieldsTooLarge("too many header fields"))
            lname = name.lower()
            if lname == b"connection":
                self.saw_connection = True
            headers.append((lname, value))
        else:  # RFC 9112 §7.1.2: fields after the last chunk are trailers
            trailers = self.trailers
            if trailers is None:
                trailers = self.trailers = []
            if len(trailers) >= limits.max_fields:
                self._fail(HeaderFieldsTooLarge("too many trailer fields"))
            trailers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        # get_http_version() formats a new string each time (a noticeable share of a
        # small request's cost). Without a Connection field, llhttp's keep-alive
        # verdict already tells the version: it is true exactly for HTTP/1.1 (and
        # false for 1.0, 0.9 and 2.0, which need the exact answer below).
        if not self.saw_connection and parser.should_keep_alive():
            version: bytes | None = b"1.1"
        else:
            version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            self._fail(VersionNotSupported("unsupported HTTP version"))
        try:
            request = request_from_head(
                parser.get_method(), self.url, version, self.headers, self.limits.max_body
            )
        except RemoteProtocolError as exc:
            self._fail(exc)
        self.has_body = request.framing != NO_BODY
        self.queue.append(request)

    def on_body(self, body: bytes) -> None:
        self.queued_bytes += len(body)
        self.queue.append(Data(body))

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.has_body:
            trailers = self.trailers
            self.queue.append(EndOfMessage(trailers) if trailers else EMPTY_EOM)
