"""Sans-IO HTTP/1.1, server side: bytes in, events out; responses in, bytes out.

Contract:

* ``receive_data(data)`` appends received bytes (``b""`` means the peer closed its
  sending side). ``next_event()`` returns the next :mod:`rapidwsgi.events` event,
  ``NEED_DATA`` or ``PAUSED``, or raises a :class:`~rapidwsgi.errors.RemoteProtocolError`
  whose ``status`` is the response to send before closing. After such an error every
  further ``next_event()`` raises again: nothing else on the connection is processed.
* ``send_response`` / ``send_data`` / ``send_end`` turn a response into wire bytes and
  decide the framing (RFC 9112 §6): Content-Length when known, chunked for HTTP/1.1
  streams, close-delimited for HTTP/1.0, no body for HEAD, 1xx, 204 and 304.
* ``start_next_cycle()`` is legal once both sides are DONE on a reusable connection.

No sockets, clocks, threads, logging or configuration objects live here; limits are
plain integers given to the constructor. The state machine is in ``_state.py``.
"""

from __future__ import annotations

from typing import Final, NoReturn

from ...errors import (
    BadRequest,
    ContentTooLarge,
    ExpectationFailed,
    HeaderFieldsTooLarge,
    LocalProtocolError,
    NotImplementedByServer,
    RemoteProtocolError,
    URITooLong,
    VersionNotSupported,
)
from ...events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Request,
    Response,
    _Sentinel,
)
from . import _grammar as g
from ._state import (
    CLOSED,
    DONE,
    ERROR,
    EV_CLOSED,
    EV_END,
    EV_HEAD,
    EV_HEAD_COMPLETE,
    IDLE,
    MUST_CLOSE,
    OUR_TRANSITIONS,
    SEND_BODY,
    THEIR_TRANSITIONS,
)

# Request body framing modes.
_NO_BODY: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
# Response-only framing modes.
_CLOSE_DELIMITED: Final = 3

# Chunked decoder sub-states.
_CH_SIZE: Final = 0
_CH_DATA: Final = 1
_CH_DATA_CRLF: Final = 2
_CH_TRAILERS: Final = 3

#: A chunk-size line (size + extensions) longer than this is refused: chunk extensions
#: carry nothing we use, and unbounded ones are a known denial-of-service vector.
MAX_CHUNK_LINE: Final = 4096
#: More than 18 decimal digits of Content-Length (an exabyte) is not a real body.
_MAX_CL_DIGITS: Final = 18

_SPECIAL_FIELDS: Final = frozenset(
    (b"content-length", b"transfer-encoding", b"host", b"connection", b"expect")
)
#: Host values already validated (a server sees few distinct ones; bounded).
_valid_hosts: Final[set[bytes]] = set()
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_EMPTY_EOM: Final = EndOfMessage()


class Limits:
    """Parser limits (gunicorn's ``limit_request_*`` semantics).

    ``max_line``: request line bytes (414 beyond). ``max_fields``: header field lines
    (431 beyond). ``max_field_size``: bytes of one field line (431 beyond).
    ``max_body``: request body bytes, 0 for no limit (413 beyond). ``max_drain``:
    bytes of an unread request body we read and discard to keep a connection alive
    after an early response; beyond it the connection is closed instead.
    """

    __slots__ = ("max_body", "max_drain", "max_field_size", "max_fields", "max_head", "max_line")

    def __init__(
        self,
        max_line: int = 8190,
        max_fields: int = 100,
        max_field_size: int = 8190,
        max_body: int = 0,
        max_drain: int = 1 << 20,
    ) -> None:
        self.max_line = max_line
        self.max_fields = max_fields
        self.max_field_size = max_field_size
        self.max_body = max_body
        self.max_drain = max_drain
        # The largest head the limits above admit (request line, fields, CRLFs).
        self.max_head = max_line + 2 + max_fields * (max_field_size + 2) + 2


def _split_list(values: list[bytes]) -> list[bytes]:
    """Parse a comma-separated list field (RFC 9110 §5.6.1), lower-cased, empties dropped."""
    out = []
    for value in values:
        for raw in value.split(b","):
            item = raw.strip(b" \t")
            if item:
                out.append(item.lower())
    return out


class H1Connection:
    """One HTTP/1.1 server connection's protocol state. See the module docstring."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits: Final = limits if limits is not None else Limits()
        self.their_state: str = IDLE
        self.our_state: str = IDLE
        self._buf: bytes | bytearray = b""
        self._pos: int = 0
        # Bytes of an incomplete head already examined (offset into _buf), and empty
        # lines skipped before the current request line.
        self._scanned: int = 0
        self._skipped: int = 0
        self._line_checked: bool = False
        self._eof: bool = False
        self._error: RemoteProtocolError | None = None
        # Per-cycle request facts.
        self._version: bytes = b"1.1"
        self._head_request: bool = False
        self._req_keep_alive: bool = True
        self._waiting_continue: bool = False
        # Request body decoder.
        self._body_mode: int = _NO_BODY
        self._remaining: int = 0
        self._chunk_state: int = _CH_SIZE
        self._body_total: int = 0
        # Response encoder.
        self._resp_mode: int = _NO_BODY
        self._resp_length: int = 0
        self._resp_sent: int = 0
        self._resp_keep_alive: bool = True

    # ------------------------------------------------------------------ inspection

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed (pipelined requests, body ahead of use)."""
        return len(self._buf) - self._pos

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def keep_alive(self) -> bool:
        """Whether the current cycle, as far as decided, leaves the connection reusable."""
        return self._req_keep_alive and self._resp_keep_alive

    @property
    def client_waiting_for_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and is still waiting (RFC 9110 §10.1.1)."""
        return self._waiting_continue

    @property
    def body_remaining(self) -> int | None:
        """Request body bytes still to come, or None when not known (chunked)."""
        if self.their_state is not SEND_BODY:
            return 0
        if self._body_mode == _LENGTH:
            return self._remaining
        if self._body_mode == _CHUNKED:
            return None
        return 0

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Add received bytes; ``b""`` records that the peer will send nothing more."""
        if not data:
            self._eof = True
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            # The common case: everything before was consumed; no copy.
            self._buf = data
            self._scanned = 0
        else:
            # Unparsed bytes remain (a partial head, chunk line or trailer section):
            # accumulate in a bytearray, so that a peer trickling bytes one by one
            # costs linear, not quadratic, copying.
            if type(buf) is bytearray:
                if pos:
                    del buf[:pos]
                buf += data
            else:
                acc = bytearray(buf[pos:])
                acc += data
                self._buf = acc
            self._scanned = max(self._scanned - pos, 0)
        self._pos = 0

    def next_event(
        self,
    ) -> Request | Data | EndOfMessage | ConnectionClosed | _Sentinel:
        """Parse and return the next event (see the module docstring)."""
        state = self.their_state
        try:
            if state is IDLE:
                return self._next_head()
            if state is SEND_BODY:
                return self._next_body()
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        if state is ERROR:
            assert self._error is not None
            raise self._error
        if state is CLOSED:
            return ConnectionClosed()
        # DONE or MUST_CLOSE: the next request waits until the response is complete.
        return PAUSED

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self.their_state = ERROR
        self._req_keep_alive = False
        self._waiting_continue = False

    # -- request head

    def _next_head(self) -> Request | ConnectionClosed | _Sentinel:
        buf = self._buf
        pos = self._pos
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line received before
        # the request-line (old clients add a CRLF after a POST body).
        if pos < len(buf) and buf[pos] == 0x0D:
            start = pos
            while buf.startswith(b"\r\n", pos):
                pos += 2
            self._skipped += pos - start
            if self._skipped > self.limits.max_line:
                raise BadRequest("too many empty lines before the request line")
            self._pos = pos
        # Resume the search where the previous incomplete attempt stopped, so a head
        # arriving byte by byte costs linear, not quadratic, time.
        end = buf.find(b"\r\n\r\n", max(pos, self._scanned - 3))
        if end < 0:
            return self._head_incomplete(buf, pos)
        if type(buf) is not bytes:
            buf = self._buf = bytes(buf)  # the head is complete: parse from immutable bytes
        limits = self.limits
        # Checks in the order their bytes arrive (see _head_incomplete), so the verdict
        # does not depend on how the input was split into reads.
        line_end = buf.find(b"\r\n", pos)
        if line_end - pos > limits.max_line:
            self._size_error(buf, pos, limits.max_line, URITooLong("request line too long"))
        method, target, version = self._request_line(buf, pos, line_end)
        if end + 4 - pos > limits.max_head:
            self._size_error(buf, pos, limits.max_head, HeaderFieldsTooLarge("request head too large"))
        fields = self._parse_fields(buf, line_end + 2, end + 2)
        self._pos = end + 4
        self._scanned = 0
        self._skipped = 0
        self._line_checked = False
        return self._build_request(method, target, version, fields)

    def _request_line(self, buf: bytes | bytearray, pos: int, line_end: int) -> tuple[bytes, bytes, bytes]:
        """Validate the request line ``buf[pos:line_end]``; return method, target, version."""
        m = g.REQUEST_LINE.fullmatch(buf, pos, line_end)
        if m is None:
            self._bad_request_line(buf, pos, line_end)
        method, target, major, minor = m.groups()
        if major == b"1" and minor == b"1":
            return method, target, b"1.1"
        if major == b"1" and minor == b"0":
            return method, target, b"1.0"
        if major == b"1":
            # RFC 9110 §2.5: a higher minor version of a major version we implement is
            # processed as the highest minor version we conform to.
            return method, target, b"1.1"
        raise VersionNotSupported("unsupported HTTP version")

    def _head_incomplete(self, buf: bytes | bytearray, pos: int) -> ConnectionClosed | _Sentinel:
        """Checks on a partial head, in the order its bytes can reveal a problem, so
        the verdict does not depend on how the bytes were split into reads."""
        pending = len(buf) - pos
        if pending == 0:
            if self._eof:
                self.their_state = THEIR_TRANSITIONS[(IDLE, EV_CLOSED)]
                return ConnectionClosed()
            return NEED_DATA
        limits = self.limits
        if not (pending == 1 and buf[pos] == 0x0D):  # maybe half of a leading empty line
            # Fail fast on what can never become a request: a first byte that is not
            # a method character (e.g. a TLS handshake sent to a plain-text port).
            if buf[pos] not in _TCHAR_SET:
                raise BadRequest("invalid request line")
            line_end = buf.find(b"\r\n", pos)
            if line_end >= 0:
                line_length = line_end - pos
            else:  # a trailing CR may be the first half of the line's CRLF
                line_length = pending - (buf[len(buf) - 1] == 0x0D)
            if line_length > limits.max_line:
                self._size_error(buf, pos, limits.max_line, URITooLong("request line too long"))
            if line_end >= 0 and not self._line_checked:
                # A complete request line is judged at once (400 or 505), before
                # anything after it.
                self._request_line(buf, pos, line_end)
                self._line_checked = True
            if pending > limits.max_head:
                self._size_error(buf, pos, limits.max_head, HeaderFieldsTooLarge("request head too large"))
            # RFC 9112 §2.2: lines end with CRLF. A bare LF would otherwise leave us
            # waiting for a CRLFCRLF that never comes; refuse it as soon as it is seen.
            # Only bytes not examined by an earlier call are counted (linear overall).
            start = max(pos, self._scanned)
            if buf.count(b"\n", start) != buf.count(b"\r\n", start - 1 if start > pos else start):
                raise BadRequest("bare LF in request head")
        if self._eof:
            raise BadRequest("connection closed in the middle of a request head")
        self._scanned = len(buf)
        return NEED_DATA

    def _size_error(self, buf: bytes | bytearray, pos: int, limit: int, exc: RemoteProtocolError) -> NoReturn:
        """Raise ``exc`` for a head over ``limit`` bytes, unless a byte before the limit
        already made it invalid (that error came first, whatever the read sizes)."""
        stop = min(len(buf), pos + limit + 1)
        if buf[pos] not in _TCHAR_SET:
            raise BadRequest("invalid request line")
        if buf.count(b"\n", pos, stop) != buf.count(b"\r\n", pos, stop):
            raise BadRequest("bare LF in request head")
        raise exc

    def _bad_request_line(self, buf: bytes | bytearray, pos: int, end: int) -> NoReturn:
        """Raise the most specific error for a request line that did not match."""
        parts = buf[pos:end].split(b" ")
        if len(parts) != 3:
            raise BadRequest("invalid request line")
        if g.ANY_VERSION.fullmatch(parts[2]) is None:
            raise BadRequest("invalid HTTP version")
        if g.TOKEN_RE.fullmatch(parts[0]) is None:
            raise BadRequest("invalid method")
        raise BadRequest("invalid request target")

    def _parse_fields(self, buf: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
        """Validate and split the field block ``buf[start:end]`` (each line CRLF-ended).

        ``buf[start - 1]`` must be an LF (see ``_grammar.FIELD_LINE``).
        """
        if start >= end:
            return []
        limits = self.limits
        fields: list[tuple[bytes, bytes]] = g.FIELD_LINE.findall(buf, start, end)
        if len(fields) != buf.count(b"\n", start, end):
            raise BadRequest(_diagnose_field_block(buf[start:end]))
        if len(fields) > limits.max_fields:
            raise HeaderFieldsTooLarge("too many header fields")
        if end - start > limits.max_field_size:
            self._check_field_sizes(buf, start, end)
        return fields

    def _check_field_sizes(self, buf: bytes, start: int, end: int) -> None:
        """Only a long block can hold a long line: check each line's length."""
        max_size = self.limits.max_field_size
        line_start = start
        while line_start < end:
            line_end = buf.find(b"\r\n", line_start)
            if line_end - line_start > max_size:
                raise HeaderFieldsTooLarge("header field too large")
            line_start = line_end + 2

    def _build_request(
        self, method: bytes, target: bytes, version: bytes, fields: list[tuple[bytes, bytes]]
    ) -> Request:
        request = request_from_head(
            method, target, version, [(name.lower(), value) for name, value in fields], self.limits.max_body
        )
        self._version = version
        self._head_request = method == b"HEAD"
        self._req_keep_alive = request.keep_alive
        self._waiting_continue = request.expect_continue
        if request.chunked:
            self.their_state = THEIR_TRANSITIONS[(IDLE, EV_HEAD)]
            self._body_mode = _CHUNKED
            self._chunk_state = _CH_SIZE
            self._body_total = 0
        elif request.content_length:
            self.their_state = THEIR_TRANSITIONS[(IDLE, EV_HEAD)]
            self._body_mode = _LENGTH
            self._remaining = request.content_length
        else:
            self._body_mode = _NO_BODY
            self.their_state = (
                THEIR_TRANSITIONS[(IDLE, EV_HEAD_COMPLETE)] if request.keep_alive else MUST_CLOSE
            )
        return request

    # -- request body

    def _next_body(self) -> Data | EndOfMessage | _Sentinel:
        mode = self._body_mode
        if mode == _NO_BODY:
            return self._end_of_request(_EMPTY_EOM)
        if mode == _LENGTH:
            if self._remaining == 0:
                return self._end_of_request(_EMPTY_EOM)
            return self._take_data()
        return self._next_chunked()

    def _take_data(self) -> Data | _Sentinel:
        """Up to ``_remaining`` bytes of body from the buffer."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail == 0:
            if self._eof:
                raise BadRequest("connection closed before the request body was complete")
            return NEED_DATA
        n = self._remaining if self._remaining < avail else avail
        if type(buf) is bytes:
            data = buf if pos == 0 and n == avail else buf[pos : pos + n]
        else:
            data = bytes(memoryview(buf)[pos : pos + n])
        self._pos = pos + n
        self._remaining -= n
        # Body bytes arriving mean the client stopped waiting for 100 Continue.
        self._waiting_continue = False
        return Data(data)

    def _next_chunked(self) -> Data | EndOfMessage | _Sentinel:
        while True:
            state = self._chunk_state
            if state == _CH_DATA:
                if self._remaining == 0:
                    self._chunk_state = _CH_DATA_CRLF
                    continue
                return self._take_data()
            buf = self._buf
            pos = self._pos
            if state == _CH_SIZE:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0 or line_end - pos > MAX_CHUNK_LINE:
                    return self._chunk_line_incomplete(buf, pos, line_end)
                m = g.CHUNK_LINE.fullmatch(buf, pos, line_end)
                if m is None:
                    raise BadRequest("invalid chunk size line")
                size = int(m.group(1), 16)
                self._pos = line_end + 2
                if size == 0:
                    self._chunk_state = _CH_TRAILERS
                    continue
                self._body_total += size
                max_body = self.limits.max_body
                if max_body and self._body_total > max_body:
                    raise ContentTooLarge("request body too large")
                self._remaining = size
                self._chunk_state = _CH_DATA
            elif state == _CH_DATA_CRLF:
                # RFC 9112 §7.1: chunk-data is followed by exactly CRLF.
                if len(buf) - pos < 2:
                    if self._eof or (len(buf) > pos and buf[pos] != 0x0D):
                        raise BadRequest("chunk data not followed by CRLF")
                    return NEED_DATA
                if buf[pos] != 0x0D or buf[pos + 1] != 0x0A:
                    raise BadRequest("chunk data not followed by CRLF")
                self._pos = pos + 2
                self._chunk_state = _CH_SIZE
            else:
                return self._trailers(buf, pos)

    def _chunk_line_incomplete(self, buf: bytes | bytearray, pos: int, line_end: int) -> _Sentinel:
        if line_end >= 0 or len(buf) - pos > MAX_CHUNK_LINE:
            raise BadRequest("chunk size line too long")
        if buf.find(b"\n", pos) >= 0:
            raise BadRequest("bare LF in chunk size line")
        if self._eof:
            raise BadRequest("connection closed before the request body was complete")
        return NEED_DATA

    def _trailers(self, buf: bytes | bytearray, pos: int) -> EndOfMessage | _Sentinel:
        """RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ), then CRLF."""
        if buf.startswith(b"\r\n", pos):
            self._pos = pos + 2
            return self._end_of_request(_EMPTY_EOM)
        limits = self.limits
        max_trailers = limits.max_fields * (limits.max_field_size + 2)
        end = buf.find(b"\r\n\r\n", max(pos, self._scanned - 3))
        if end < 0:
            # As for heads: only new bytes are examined (linear overall), and a bare LF
            # before the size limit wins over the limit, whatever the read sizes.
            pending = len(buf) - pos
            if pending > max_trailers:
                self._trailer_size_error(buf, pos, max_trailers)
            start = max(pos, self._scanned)
            if buf.count(b"\n", start) != buf.count(b"\r\n", start - 1 if start > pos else start):
                raise BadRequest("bare LF in trailer section")
            if self._eof:
                raise BadRequest("connection closed before the request body was complete")
            self._scanned = len(buf)
            return NEED_DATA
        self._scanned = 0
        if end + 4 - pos > max_trailers:
            self._trailer_size_error(buf, pos, max_trailers)
        # FIELD_LINE anchors on the LF before each line; the trailer section may start
        # at the very beginning of a buffer, so give it one (also makes it bytes).
        fields = self._parse_fields(b"\n" + buf[pos : end + 2], 1, end + 3 - pos)
        self._pos = end + 4
        return self._end_of_request(EndOfMessage([(n.lower(), v) for n, v in fields]))

    def _trailer_size_error(self, buf: bytes | bytearray, pos: int, limit: int) -> NoReturn:
        stop = pos + limit + 1
        if buf.count(b"\n", pos, stop) != buf.count(b"\r\n", pos, stop):
            raise BadRequest("bare LF in trailer section")
        raise HeaderFieldsTooLarge("trailer section too large")

    def _end_of_request(self, eom: EndOfMessage) -> EndOfMessage:
        self.their_state = THEIR_TRANSITIONS[(SEND_BODY, EV_END)]
        self._waiting_continue = False
        if not self._req_keep_alive:
            self.their_state = MUST_CLOSE
        return eom

    # ------------------------------------------------------------------ sending

    def send_continue(self) -> bytes:
        """``100 Continue`` if the client is still waiting for it, else ``b""``."""
        if self._waiting_continue and self.our_state is IDLE:
            self._waiting_continue = False
            return _CONTINUE
        return b""

    def send_response(self, response: Response) -> bytes:
        """Serialise a final response head, choosing the body framing (RFC 9112 §6)."""
        if self.our_state is not IDLE:
            raise LocalProtocolError("a response was already started")
        status = response.status
        if status < 200:
            raise LocalProtocolError("informational responses are not sent this way")
        keep = self._req_keep_alive and not response.close
        length = response.content_length
        framing = b""
        if status == 204:
            # RFC 9110 §8.6: no Content-Length in a 204.
            mode = _NO_BODY
        elif status == 304:
            # RFC 9110 §15.4.5: no content; a Content-Length describes the 200.
            mode = _NO_BODY
            if length is not None:
                framing = b"Content-Length: %d\r\n" % length
        elif length is not None:
            mode = _NO_BODY if self._head_request else _LENGTH
            framing = b"Content-Length: %d\r\n" % length
        elif self._head_request:
            # RFC 9110 §9.3.2: fields only known while generating content may be omitted.
            mode = _NO_BODY
        elif self._version == b"1.1":
            mode = _CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            # HTTP/1.0 client, unknown length: the close delimits the body.
            mode = _CLOSE_DELIMITED
            keep = False
        # An early response (the body is still coming): a client still waiting for 100
        # Continue may or may not send the body now (RFC 9110 §10.1.1), and a large
        # unread body is cheaper to cut off than to read: close in both cases.
        if (
            keep
            and self.their_state is SEND_BODY
            and (
                self._waiting_continue
                or (self._body_mode == _LENGTH and self._remaining > self.limits.max_drain)
            )
        ):
            keep = False
        if self.their_state is ERROR:
            keep = False
        self._waiting_continue = False
        self._resp_keep_alive = keep
        self._resp_mode = mode
        self._resp_length = length if length is not None else 0
        self._resp_sent = 0
        self.our_state = OUR_TRANSITIONS[(IDLE, EV_HEAD)]
        if not keep:
            framing += b"Connection: close\r\n"
        elif self._version == b"1.0":
            framing += b"Connection: keep-alive\r\n"
        return b"".join((b"HTTP/1.1 ", response.status_line, b"\r\n", response.headers, framing, b"\r\n"))

    def send_data(self, data: bytes) -> bytes:
        """Frame one piece of response body (empty input gives empty output)."""
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        mode = self._resp_mode
        if mode == _LENGTH:
            self._resp_sent += len(data)
            if self._resp_sent > self._resp_length:
                raise LocalProtocolError("response body longer than its Content-Length")
            return data
        if mode == _CHUNKED:
            if not data:
                return b""
            return b"%x\r\n%b\r\n" % (len(data), data)
        if mode == _CLOSE_DELIMITED:
            return data
        return b""

    def prepare_raw(self, count: int) -> bool:
        """Account ``count`` body bytes the caller sends itself (``sendfile``).

        Returns False when the response has no body on the wire (HEAD, 204, 304), in
        which case nothing must be sent. Only unframed bodies (Content-Length or
        close-delimited) can be sent raw.
        """
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        mode = self._resp_mode
        if mode == _NO_BODY:
            return False
        if mode == _CHUNKED:
            raise LocalProtocolError("a chunked body cannot be sent raw")
        if mode == _LENGTH:
            self._resp_sent += count
            if self._resp_sent > self._resp_length:
                raise LocalProtocolError("response body longer than its Content-Length")
        return True

    def send_end(self) -> bytes:
        """Finish the response body; raises if a Content-Length was not honoured."""
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        mode = self._resp_mode
        if mode == _LENGTH and self._resp_sent != self._resp_length:
            self.our_state = ERROR
            raise LocalProtocolError("response body shorter than its Content-Length")
        self.our_state = OUR_TRANSITIONS[(SEND_BODY, EV_END)]
        if not self._resp_keep_alive:
            self.our_state = MUST_CLOSE
        return b"0\r\n\r\n" if mode == _CHUNKED else b""

    def send_failed(self) -> None:
        """Record that the response could not be completed: the connection must close."""
        self.our_state = ERROR
        self._resp_keep_alive = False

    def start_next_cycle(self) -> None:
        """Reset both sides to IDLE for the next pipelined/keep-alive request."""
        if self.their_state is not DONE or self.our_state is not DONE:
            raise LocalProtocolError(f"cannot start a new cycle from ({self.their_state}, {self.our_state})")
        self.their_state = IDLE
        self.our_state = IDLE
        self._req_keep_alive = True
        self._resp_keep_alive = True
        self._body_mode = _NO_BODY
        self._head_request = False


_TCHAR_SET: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


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
        else:
            expect = [value] if expect is None else [*expect, value]

    # RFC 9112 §3.2: exactly one valid Host in HTTP/1.1, at most one in HTTP/1.0.
    if host_count > 1:
        raise BadRequest("more than one Host header")
    if host_count == 0 and version == b"1.1":
        raise BadRequest("missing Host header")
    if host is not None and host not in _valid_hosts:
        if g.HOST_VALUE.fullmatch(host) is None:
            raise BadRequest("invalid Host header")
        if len(_valid_hosts) < 64:
            _valid_hosts.add(host)

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
    chunked = False
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
        chunked = True
    elif content_lengths is not None:
        content_length = _content_length(content_lengths)
        if max_body and content_length > max_body:
            raise ContentTooLarge("request body too large")

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
        expect_continue = chunked or content_length > 0

    return Request(
        method,
        target,
        path,
        query,
        version,
        headers,
        authority=authority,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        expect_continue=expect_continue,
    )


def _content_length(values: list[bytes]) -> int:
    """RFC 9110 §8.6: 1*DIGIT; a list of identical values may be accepted as one."""
    lengths = set()
    for value in values:
        for raw in value.split(b","):
            item = raw.strip(b" \t")
            if g.DIGITS.fullmatch(item) is None:
                raise BadRequest("invalid Content-Length")
            if len(item.lstrip(b"0")) > _MAX_CL_DIGITS:
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


def _diagnose_field_block(block: bytes) -> str:
    """A precise reason for a field block that failed validation (error path only)."""
    if block.count(b"\n") != block.count(b"\r\n"):
        return "bare LF in header block"
    for line in block.split(b"\r\n")[:-1]:
        if g.FIELD_LINE.fullmatch(b"\n" + line + b"\r\n", 1) is not None:
            continue
        if not line:
            return "empty header line"
        if line[0] in b" \t":
            return "obsolete line folding in header"
        colon = line.find(b":")
        if colon < 0:
            return "header line without a colon"
        if colon == 0:
            return "empty header name"
        if line[colon - 1] in b" \t":
            return "whitespace before colon in header"
        if g.TOKEN_RE.fullmatch(line[:colon]) is None:
            return "invalid character in header name"
        return "invalid character in header value"
    return "invalid header block"
