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
it is; FastCGI wraps it in records. Subclasses implement the receive side and call
:meth:`_on_request` / :meth:`_fail` so the state stays consistent.
"""

from __future__ import annotations

from typing import Final

from ..errors import LocalProtocolError, RemoteProtocolError
from ..events import ConnectionClosed, Data, EndOfMessage, Reply, Request, Response, _Sentinel
from ._state import (
    DONE,
    ERROR,
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
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
# Response-only framing mode.
CLOSE_DELIMITED: Final = 3

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_AFTER_HEAD: Final = THEIR_TRANSITIONS[(IDLE, EV_HEAD)]
_AFTER_COMPLETE_HEAD: Final = THEIR_TRANSITIONS[(IDLE, EV_HEAD_COMPLETE)]
AFTER_BODY: Final = THEIR_TRANSITIONS[(SEND_BODY, EV_END)]


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
    """Base of the sans-IO server protocols (see the module docstring)."""

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
        # Response encoder.
        self._resp_mode: int = NO_BODY
        self._resp_length: int = 0
        self._resp_sent: int = 0
        self._resp_keep_alive: bool = True

    # ------------------------------------------------------------------ receiving (abstract)

    def receive_data(self, data: bytes) -> None:
        """Add received bytes; ``b""`` records that the peer will send nothing more."""
        raise NotImplementedError

    def next_event(self) -> Request | Data | EndOfMessage | ConnectionClosed | _Sentinel | Reply:
        """The next event, ``NEED_DATA`` or ``PAUSED``; raises RemoteProtocolError."""
        raise NotImplementedError

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
        """Request body bytes still to come, or None when not known (chunked)."""
        if self.their_state is not SEND_BODY:
            return 0
        if self._body_mode == LENGTH:
            return self._remaining
        if self._body_mode == CHUNKED:
            return None
        return 0

    # ------------------------------------------------------------------ for subclasses

    def _on_request(self, request: Request) -> Request:
        """Record a request head about to be returned; move their side accordingly."""
        self._version = request.version
        self._head_request = request.method == b"HEAD"
        self._req_keep_alive = request.keep_alive
        self._waiting_continue = request.expect_continue
        if request.chunked:
            self.their_state = _AFTER_HEAD
            self._body_mode = CHUNKED
        elif request.content_length:
            self.their_state = _AFTER_HEAD
            self._body_mode = LENGTH
            self._remaining = request.content_length
        else:
            self._body_mode = NO_BODY
            self.their_state = _AFTER_COMPLETE_HEAD if request.keep_alive else MUST_CLOSE
        return request

    def adopt_request(self, request: Request) -> Request:
        """A request the C path (``_cfast.c``) parsed from bytes this parser never saw:
        the cycle continues here as if ``next_event()`` had returned it."""
        return self._on_request(request)

    def closed_by_c_path(self) -> None:
        """The C path sent a final response after which the connection closes: both
        sides are done with it (rule 4 of ``_state.py``)."""
        self.their_state = MUST_CLOSE
        self.our_state = MUST_CLOSE

    def _on_data(self, data: Data) -> Data:
        self._waiting_continue = False  # body bytes: the client stopped waiting
        if self._body_mode == LENGTH:
            self._remaining -= len(data.data)
        return data

    def _on_end(self, end: EndOfMessage) -> EndOfMessage:
        self._waiting_continue = False
        self.their_state = AFTER_BODY if self._req_keep_alive else MUST_CLOSE
        return end

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self.their_state = ERROR
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
            mode = CLOSE_DELIMITED  # (but the protocol, not the close, ends it)
        elif self._version == b"1.1":
            mode = CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            # HTTP/1.0 client, unknown length: the close delimits the body.
            mode = CLOSE_DELIMITED
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
        self._waiting_continue = False
        self._resp_keep_alive = keep
        self._resp_mode = mode
        self._resp_length = length if length is not None else 0
        self._resp_sent = 0
        self.our_state = OUR_TRANSITIONS[(IDLE, EV_HEAD)]
        return framing

    def send_data(self, data: bytes) -> bytes:
        """Frame one piece of response body (empty input gives empty output)."""
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        mode = self._resp_mode
        if mode == LENGTH:
            self._resp_sent += len(data)
            if self._resp_sent > self._resp_length:
                raise LocalProtocolError("response body longer than its Content-Length")
            return data
        if mode == CHUNKED:
            if not data:
                return b""
            return b"%x\r\n%b\r\n" % (len(data), data)
        if mode == CLOSE_DELIMITED:
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
        if mode == NO_BODY:
            return False
        if mode == CHUNKED:
            raise LocalProtocolError("a chunked body cannot be sent raw")
        if mode == LENGTH:
            self._resp_sent += count
            if self._resp_sent > self._resp_length:
                raise LocalProtocolError("response body longer than its Content-Length")
        return True

    def send_end(self) -> bytes:
        """Finish the response body; raises if a Content-Length was not honoured."""
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        mode = self._resp_mode
        if mode == LENGTH and self._resp_sent != self._resp_length:
            self.our_state = ERROR
            raise LocalProtocolError("response body shorter than its Content-Length")
        self.our_state = OUR_TRANSITIONS[(SEND_BODY, EV_END)]
        if not self._resp_keep_alive:
            self.our_state = MUST_CLOSE
        return b"0\r\n\r\n" if mode == CHUNKED else b""

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
