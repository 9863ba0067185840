"""The contract every wire protocol implements, and the shared HTTP/1.x response side.

A *wire protocol* is a sans-IO object per connection: ``receive_data(bytes)`` and
``next_event()`` turn bytes into :mod:`rapidwsgi.events`; ``send_*`` turn a response
into bytes. The connection layer drives any protocol through this class only, so the
HTTP/1.1, uwsgi and FastCGI front-ends share one connection, one WSGI adapter and one
response writer.

This class keeps the per-connection state machine (``_state.py``: ``their_state`` and
``our_state``) and implements the response framing of HTTP/1.x (RFC 9112 §6):
Content-Length when known, chunked for an HTTP/1.1 stream, close-delimited for HTTP/1.0,
no body for HEAD, 204 and 304. HTTP/1.1 and uwsgi (whose replies are raw HTTP) use it as
it is; FastCGI wraps it in records.

The skeleton every front-end shares: one ``next_event`` (paused, error, closed, else
the front-end's ``_next()``; a RemoteProtocolError moves their side to ERROR), one
body count (``_on_data``/``_on_end`` against the request's ``framing``, set when the
request was built), one ``send_end`` (the closing bytes from ``_end_bytes``), and every
state change through ``_advance_theirs``/``_advance_ours``, checked against the tables
of ``_state.py``. A front-end decodes its wire format into events through
:meth:`_on_request` / :meth:`_on_data` / :meth:`_on_end` and frames the response head
its way.
"""

from __future__ import annotations

from typing import Final

from ..errors import BadRequest, ContentTooLarge, LocalProtocolError, RemoteProtocolError
from ..events import (
    CHUNKED,
    GATEWAY_FRAMED,
    LENGTH,
    NO_BODY,
    PAUSED,
    UNTIL_CLOSE,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Reply,
    Request,
    Response,
    _Sentinel,
)
from ._state import (
    CLOSED,
    DONE,
    ERROR,
    EV_CLOSED,
    EV_END,
    EV_ERROR,
    EV_HEAD,
    EV_HEAD_COMPLETE,
    EV_LAST,
    EV_NEXT,
    IDLE,
    MUST_CLOSE,
    OUR_MOVES,
    SEND_BODY,
    THEIR_MOVES,
    Move,
    advance,
    replay,
)

__all__ = [
    "CHUNKED",
    "CLOSE_DELIMITED",
    "GATEWAY_FRAMED",
    "LENGTH",
    "MAX_LENGTH_DIGITS",
    "NO_BODY",
    "GatewayConnection",
    "Limits",
    "ServerConnection",
]

#: The response framing in which the close ends the body (``events.UNTIL_CLOSE``).
CLOSE_DELIMITED: Final = UNTIL_CLOSE

#: More decimal digits of a declared body length (Content-Length, CONTENT_LENGTH) than
#: this (an exabyte) is not a real body; also keeps ``int()`` of it cheap. Every
#: front-end applies this one bound.
MAX_LENGTH_DIGITS: Final = 18

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# The moves of the two sides (``_state.py``), held here so a change looks nothing up.
_THEIR_HEAD: Final = THEIR_MOVES[EV_HEAD]
_THEIR_COMPLETE_HEAD: Final = THEIR_MOVES[EV_HEAD_COMPLETE]
_THEIR_END: Final = THEIR_MOVES[EV_END]
_THEIR_LAST: Final = THEIR_MOVES[EV_LAST]
_THEIR_NEXT: Final = THEIR_MOVES[EV_NEXT]
_THEIR_ERROR: Final = THEIR_MOVES[EV_ERROR]
_THEIR_CLOSED: Final = THEIR_MOVES[EV_CLOSED]
_OUR_HEAD: Final = OUR_MOVES[EV_HEAD]
_OUR_END: Final = OUR_MOVES[EV_END]
_OUR_LAST: Final = OUR_MOVES[EV_LAST]
_OUR_NEXT: Final = OUR_MOVES[EV_NEXT]
_OUR_ERROR: Final = OUR_MOVES[EV_ERROR]

# The C path's closing cycle (rule 8 of ``_state.py``) as the events each side saw, and
# where they lead from IDLE: replayed through the tables once, here at import, so that
# the usual case (a cycle from IDLE) costs two comparisons per connection, not five
# checked moves (callgrind: ~350 instructions per new connection).
_C_CLOSE_THEIRS: Final = (_THEIR_COMPLETE_HEAD, _THEIR_LAST)
_C_CLOSE_OURS: Final = (_OUR_HEAD, _OUR_END, _OUR_LAST)
_C_CLOSED_THEIRS: Final = replay(_C_CLOSE_THEIRS, IDLE)
_C_CLOSED_OURS: Final = replay(_C_CLOSE_OURS, IDLE)

#: What ``next_event()`` returns, any front-end.
NextEvent = Request | Data | EndOfMessage | ConnectionClosed | _Sentinel | Reply


class Limits:
    """Request limits (gunicorn's ``limit_request_*`` semantics), for every protocol.

    ``max_line``: request-target bytes (414 beyond). ``max_fields``: header fields or
    gateway variables (431 beyond). ``max_field_size``: bytes of one field or variable
    (431 beyond). ``max_body``: request body bytes, 0 for no limit (413 beyond).
    ``max_drain``: bytes of an unread request body read and discarded to keep a
    connection alive after an early response; beyond it the connection is closed.
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


class ServerConnection:
    """Base of the sans-IO server protocols (see the module docstring).

    A front-end implements ``_next()`` (decode what it can into one event), the
    receiving properties, and, when its response is not raw HTTP/1.x, the sending
    hooks; this class owns the state machine, the opening of ``next_event``, body
    accounting and the response framing.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits: Final = limits if limits is not None else Limits()
        self.their_state: str = IDLE
        self.our_state: str = IDLE
        self._eof = False
        self._error: RemoteProtocolError | None = None
        # Per-cycle request facts.
        self._version: bytes = b"1.1"
        self._head_request: bool = False
        self._req_keep_alive: bool = True
        self._waiting_continue: bool = False
        self._body_mode: int = NO_BODY
        self._remaining: int = 0
        self._received: int = 0
        # Response encoder.
        self._resp_mode: int = NO_BODY
        self._resp_length: int = 0
        self._resp_sent: int = 0
        self._resp_keep_alive: bool = True

    # ------------------------------------------------------------------ state changes

    def _advance_theirs(self, move: Move) -> None:
        """Move their side (``_state.THEIR_MOVES``), or raise LocalProtocolError."""
        self.their_state = advance(move, self.their_state)

    def _advance_ours(self, move: Move) -> None:
        """Move our side (``_state.OUR_MOVES``), or raise LocalProtocolError."""
        self.our_state = advance(move, self.our_state)

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Add received bytes; ``b""`` records that the peer will send nothing more."""
        raise NotImplementedError

    def next_event(self) -> NextEvent:
        """The next event, ``NEED_DATA`` or ``PAUSED``; raises RemoteProtocolError.

        After a complete request ``PAUSED`` (``_paused``) until ``start_next_cycle``;
        after an error the same error again; after a clean close ``ConnectionClosed``.
        Otherwise the front-end's ``_next()`` decodes; a RemoteProtocolError it raises
        moves their side to ERROR (``_fail``) before it propagates.
        """
        state = self.their_state
        try:
            if state is DONE or state is MUST_CLOSE:
                return self._paused()
            if state is ERROR:
                assert self._error is not None
                raise self._error
            if state is CLOSED:
                return ConnectionClosed()
            return self._next()
        except RemoteProtocolError as exc:
            if self.their_state is not ERROR:
                self._fail(exc)
            raise

    def _next(self) -> NextEvent:
        """Decode the next event from the received bytes (their side IDLE or SEND_BODY):
        a Request through ``_on_request``, Data through ``_on_data``, the end through
        ``_on_end``; ``NEED_DATA`` when the bytes run out. Raise RemoteProtocolError
        for malformed input."""
        raise NotImplementedError

    def _paused(self) -> NextEvent:
        """``next_event`` while their side is DONE or MUST_CLOSE: nothing is read
        ahead of the response (RFC 9112 §9.3.2)."""
        return PAUSED

    def _closed_cleanly(self) -> ConnectionClosed:
        """The peer closed between requests (rule 7 of ``_state.py``)."""
        self._advance_theirs(_THEIR_CLOSED)
        return ConnectionClosed()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (pipelined requests, body ahead of use)."""
        raise NotImplementedError

    @property
    def has_pending(self) -> bool:
        """Received input not yet turned into returned events (next_event has work)."""
        raise NotImplementedError

    @property
    def receiving_head(self) -> bool:
        """Part of a request head has arrived, but not all of it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ inspection

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
    def can_answer_error(self) -> bool:
        """A refusal of the input can be sent as a response (else: just close)."""
        return True

    @property
    def body_remaining(self) -> int | None:
        """Request body bytes still to come, or None when not known (chunked, gateway)."""
        if self.their_state is not SEND_BODY:
            return 0
        if self._body_mode == LENGTH:
            return self._remaining
        return None if self._body_mode != NO_BODY else 0

    # ------------------------------------------------------------------ for subclasses

    #: BadRequest reasons for a body that does not match its declared length, in the
    #: front-end's own words (its wire format may let a body run past it).
    BODY_TOO_LONG = "request body longer than its Content-Length"
    BODY_TOO_SHORT = "request body shorter than its Content-Length"

    def _on_request(self, request: Request) -> Request:
        """Record a request head about to be returned; move their side by its framing."""
        self._version = request.version
        self._head_request = request.method == b"HEAD"
        keep_alive = self._req_keep_alive = request.keep_alive
        self._waiting_continue = request.expect_continue
        framing = self._body_mode = request.framing
        self._received = 0
        if framing == NO_BODY:
            self._advance_theirs(_THEIR_COMPLETE_HEAD)
            if not keep_alive:
                self._advance_theirs(_THEIR_LAST)
        else:
            self._remaining = request.content_length
            self._advance_theirs(_THEIR_HEAD)
        return request

    def adopt_request(self, request: Request) -> Request:
        """A request the C path (``_cfast.c``) parsed from bytes this parser never saw:
        the cycle continues here as if ``next_event()`` had returned it."""
        return self._on_request(request)

    def closed_by_c_path(self) -> None:
        """The C path ran a whole cycle ending with a close (rule 8 of ``_state.py``):
        both sides are done with the connection, replayed as the events they saw."""
        if self.their_state is IDLE and self.our_state is IDLE:
            # The replay from IDLE, computed through the tables at import.
            self.their_state = _C_CLOSED_THEIRS
            self.our_state = _C_CLOSED_OURS
            return
        for move in _C_CLOSE_THEIRS:  # from any other state: raises as the moves do
            self._advance_theirs(move)
        for move in _C_CLOSE_OURS:
            self._advance_ours(move)

    def _on_data(self, data: Data) -> Data:
        """Account a piece of request body about to be returned, the one place every
        front-end's body is counted: past a declared length is a framing error
        (``BODY_TOO_LONG``), past ``max_body`` a 413."""
        self._waiting_continue = False  # body bytes: the client stopped waiting
        n = len(data.data)
        if self._body_mode == LENGTH:
            self._remaining -= n
            if self._remaining < 0:
                raise BadRequest(self.BODY_TOO_LONG)
        else:
            # A declared length was checked against max_body with the head.
            received = self._received = self._received + n
            max_body = self.limits.max_body
            if max_body and received > max_body:
                raise ContentTooLarge("request body too large")
        return data

    def _on_end(self, end: EndOfMessage) -> EndOfMessage:
        """The request body is complete (short of a declared length: ``BODY_TOO_SHORT``)."""
        if self._body_mode == LENGTH and self._remaining:
            raise BadRequest(self.BODY_TOO_SHORT)
        self._waiting_continue = False
        self._advance_theirs(_THEIR_END)
        if not self._req_keep_alive:
            self._advance_theirs(_THEIR_LAST)
        return end

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self._advance_theirs(_THEIR_ERROR)
        self._req_keep_alive = False
        self._waiting_continue = False

    # ------------------------------------------------------------------ sending (HTTP/1.x)

    def send_continue(self) -> bytes:
        """``100 Continue`` if the client is still waiting for it, else ``b""``."""
        if self._waiting_continue and self.our_state is IDLE:
            self._waiting_continue = False
            return _CONTINUE
        return b""

    #: The protocol delimits a body without a length itself (FastCGI records), so such
    #: a body needs neither chunked coding nor a close.
    SELF_DELIMITING = False
    #: A response of unknown length to an HTTP/1.1 request may be chunked. uwsgi says
    #: no: its reply goes to a gateway that reads it as HTTP/1.0 (the close ends it).
    CHUNKED_REPLIES = True
    #: A body can be sent raw (sendfile) right after the head.
    RAW_BODY_OK = True
    #: The peer is a gateway that passes CGI variables (REMOTE_ADDR, HTTPS, ...): its
    #: word on the client is authoritative, and X-Forwarded-* fields are the client's.
    GATEWAY = False
    #: The index of this front-end in ``metrics.PROTOCOLS`` (the ``protocol`` label).
    METRICS_PROTOCOL = 0

    def send_response(self, response: Response) -> bytes:
        """Serialise a final response head, choosing the body framing (RFC 9112 §6)."""
        framing = self._begin_response(response)
        if not self._resp_keep_alive:
            framing += b"Connection: close\r\n"
        elif self._version == b"1.0":
            framing += b"Connection: keep-alive\r\n"
        return b"".join((b"HTTP/1.1 ", response.status_line, b"\r\n", response.headers, framing, b"\r\n"))

    def _begin_response(self, response: Response) -> bytes:
        """Decide the framing and persistence of a response; return its framing fields."""
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
            mode = NO_BODY
        elif status == 304:
            # RFC 9110 §15.4.5: no content; a Content-Length describes the 200.
            mode = NO_BODY
            if length is not None:
                framing = b"Content-Length: %d\r\n" % length
        elif length is not None:
            mode = NO_BODY if self._head_request else LENGTH
            framing = b"Content-Length: %d\r\n" % length
        elif self._head_request:
            # RFC 9110 §9.3.2: fields only known while generating content may be omitted.
            mode = NO_BODY
        elif self.SELF_DELIMITING:
            mode = GATEWAY_FRAMED  # the protocol's records end it
        elif self._version == b"1.1" and self.CHUNKED_REPLIES:
            mode = CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            # HTTP/1.0 client (or gateway), unknown length: the close delimits the body.
            mode = UNTIL_CLOSE
            keep = False
        # An early response (the body is still coming): a client still waiting for 100
        # Continue may or may not send the body now (RFC 9110 §10.1.1), and a large
        # unread body is cheaper to cut off than to read: close in both cases.
        if (
            keep
            and self.their_state is SEND_BODY
            and (
                self._waiting_continue
                or (self._body_mode == LENGTH and self._remaining > self.limits.max_drain)
            )
        ):
            keep = False
        if self.their_state is ERROR:
            keep = False
        self._advance_ours(_OUR_HEAD)
        self._waiting_continue = False
        self._resp_keep_alive = keep
        self._resp_mode = mode
        self._resp_length = length if length is not None else 0
        self._resp_sent = 0
        return framing

    def _count_sent(self, count: int) -> None:
        """Account response body bytes against the response's Content-Length."""
        if self._resp_mode == LENGTH:
            self._resp_sent += count
            if self._resp_sent > self._resp_length:
                raise LocalProtocolError("response body longer than its Content-Length")

    def send_data(self, data: bytes) -> bytes:
        """Frame one piece of response body (empty input gives empty output)."""
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        mode = self._resp_mode
        if mode == LENGTH:
            self._count_sent(len(data))
            return data
        if mode == CHUNKED:
            if not data:
                return b""
            return b"%x\r\n%b\r\n" % (len(data), data)
        if mode == NO_BODY:
            return b""
        return data  # UNTIL_CLOSE, GATEWAY_FRAMED: unframed here

    def prepare_raw(self, count: int) -> bool:
        """Account ``count`` body bytes the caller sends itself (``sendfile``).

        Returns False when the response has no body on the wire (HEAD, 204, 304), in
        which case nothing must be sent. Only unframed bodies (Content-Length or
        close-delimited) can be sent raw.
        """
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        mode = self._resp_mode
        if mode == NO_BODY:
            return False
        if mode == CHUNKED:
            raise LocalProtocolError("a chunked body cannot be sent raw")
        self._count_sent(count)
        return True

    def send_end(self) -> bytes:
        """Finish the response body; raises if a Content-Length was not honoured.
        The bytes that end it come from ``_end_bytes``."""
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        mode = self._resp_mode
        if mode == LENGTH and self._resp_sent != self._resp_length:
            self._advance_ours(_OUR_ERROR)
            raise LocalProtocolError("response body shorter than its Content-Length")
        self._advance_ours(_OUR_END)
        if not self._resp_keep_alive:
            self._advance_ours(_OUR_LAST)
        return self._end_bytes(mode)

    def _end_bytes(self, mode: int) -> bytes:
        """The bytes that end a response body framed as ``mode`` (HTTP/1.x: the last
        chunk, RFC 9112 §7.1; nothing otherwise)."""
        return b"0\r\n\r\n" if mode == CHUNKED else b""

    def send_failed(self) -> None:
        """Record that the response could not be completed: the connection must close."""
        self._advance_ours(_OUR_ERROR)
        self._resp_keep_alive = False

    def start_next_cycle(self) -> None:
        """Reset both sides to IDLE for the next pipelined/keep-alive request."""
        if self.their_state is not DONE or self.our_state is not DONE:
            raise LocalProtocolError(f"cannot start a new cycle from ({self.their_state}, {self.our_state})")
        self._advance_theirs(_THEIR_NEXT)
        self._advance_ours(_OUR_NEXT)
        self._req_keep_alive = True
        self._resp_keep_alive = True
        self._body_mode = NO_BODY
        self._head_request = False


class GatewayConnection(ServerConnection):
    """What the gateway front-ends (uwsgi, FastCGI) share: the peer is a gateway passing
    CGI variables, and received bytes wait in one buffer until a whole unit (packet,
    record) can be decoded."""

    GATEWAY = True

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self._buf = b""

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def has_pending(self) -> bool:
        return bool(self._buf)

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self.their_state is not ERROR:
            self._buf = data if not self._buf else self._buf + data
