"""Sans-IO HTTP/1.1, server side: bytes in, events out; responses in, bytes out.

Contract:

* ``receive_data(data)`` appends received bytes (``b""`` means the peer closed its
  sending side). ``next_event()`` returns the next :mod:`rapidwsgi.events` event,
  ``NEED_DATA`` or ``PAUSED``, or raises a :class:`~rapidwsgi.errors.RemoteProtocolError`
  whose ``status`` is the response to send before closing. After such an error every
  further ``next_event()`` raises again: nothing else on the connection is processed.
* A request without a body is complete with its head (no Data/EndOfMessage follow).
  After a complete request, ``next_event()`` returns ``PAUSED`` until the response is
  finished and ``start_next_cycle()`` is called; pipelined bytes wait (RFC 9112 §9.3.2).
* ``send_response`` / ``send_data`` / ``send_end`` turn a response into wire bytes and
  decide the framing (RFC 9112 §6): Content-Length when known, chunked for HTTP/1.1
  streams, close-delimited for HTTP/1.0, no body for HEAD, 1xx, 204 and 304.

Tokenizing is llhttp's (``_tokenizer.py``); request semantics and limits are
``_semantics.py``; the state machine is data in ``_state.py``. No sockets, clocks,
threads, logging or configuration objects live here; limits are plain integers.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import httptools

from ...errors import (
    BadRequest,
    HeaderFieldsTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
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
from ._semantics import Limits, request_from_head
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
from ._tokenizer import Tokenizer

__all__ = ["H1Connection", "Limits", "request_from_head"]

# Request body framing modes.
_NO_BODY: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
# Response-only framing modes.
_CLOSE_DELIMITED: Final = 3

#: While a head is incomplete, small reads are held back and fed to llhttp together
#: once this many bytes are pending (or the head's end has arrived): httptools
#: re-concatenates a field that arrives in pieces, which must not cost a copy per byte.
HEAD_FEED: Final = 4096
#: A head still incomplete after this many bytes is refused (431): a memory bound for
#: what llhttp tolerates without limit (runs of spaces in the request line). The
#: configured limits are enforced exactly per target and field.
HEAD_GUARD: Final = 1 << 20

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_AFTER_HEAD: Final = THEIR_TRANSITIONS[(IDLE, EV_HEAD)]
_AFTER_COMPLETE_HEAD: Final = THEIR_TRANSITIONS[(IDLE, EV_HEAD_COMPLETE)]
_AFTER_BODY: Final = THEIR_TRANSITIONS[(SEND_BODY, EV_END)]


def _parser_error(exc: Exception) -> RemoteProtocolError:
    """What an llhttp error implies: 400 (malformed request).

    llhttp cannot tell an unregistered but well-formed method token (RFC 9110 §9.1
    would answer 501) from garbage such as a TLS handshake, and gives no position to
    look: like gunicorn and uvicorn, rapidwsgi answers 400 for both.
    """
    return BadRequest(str(exc) or "malformed request")


class H1Connection:
    """One HTTP/1.1 server connection's protocol state. See the module docstring."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits: Final = limits if limits is not None else Limits()
        self.their_state: str = IDLE
        self.our_state: str = IDLE
        self._tokens = Tokenizer(self.limits)
        self._unfed: deque[bytes] = deque()
        self._unfed_bytes = 0
        # An incomplete head: bytes fed so far, and the last 3 (a CRLFCRLF may straddle).
        self._head_fed = 0
        self._tail = b""
        self._dead = False  # llhttp stopped at an error; nothing more is parsed
        self._eof = False
        self._error: RemoteProtocolError | None = None
        # Per-cycle request facts.
        self._version: bytes = b"1.1"
        self._head_request: bool = False
        self._req_keep_alive: bool = True
        self._waiting_continue: bool = False
        self._body_mode: int = _NO_BODY
        self._remaining: int = 0
        # Response encoder.
        self._resp_mode: int = _NO_BODY
        self._resp_length: int = 0
        self._resp_sent: int = 0
        self._resp_keep_alive: bool = True

    # ------------------------------------------------------------------ inspection

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (pipelined requests, body ahead of use)."""
        return self._unfed_bytes + self._tokens.queued_bytes

    @property
    def has_pending(self) -> bool:
        """Received input not yet turned into returned events (next_event has work)."""
        return bool(self._unfed) or bool(self._tokens.queue)

    @property
    def receiving_head(self) -> bool:
        """Part of a request head has arrived, but not all of it."""
        return self._tokens.in_head or (self.their_state is IDLE and self._unfed_bytes > 0)

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
        if self._dead:
            return  # after a framing error nothing more is looked at
        self._unfed.append(data)
        self._unfed_bytes += len(data)

    def next_event(
        self,
    ) -> Request | Data | EndOfMessage | ConnectionClosed | _Sentinel:
        """Return the next event (see the module docstring)."""
        state = self.their_state
        if state is DONE or state is MUST_CLOSE:
            return PAUSED
        if state is ERROR:
            assert self._error is not None
            raise self._error
        if state is CLOSED:
            return ConnectionClosed()
        queue = self._tokens.queue
        if not queue:
            self._feed()
            if not queue:
                return self._starved()
        item = queue.popleft()
        if isinstance(item, Request):
            return self._on_request(item)
        if isinstance(item, Data):
            self._tokens.queued_bytes -= len(item.data)
            self._waiting_continue = False  # body bytes: the client stopped waiting
            if self._body_mode == _LENGTH:
                self._remaining -= len(item.data)
            return item
        if isinstance(item, EndOfMessage):
            self._waiting_continue = False
            self.their_state = _AFTER_BODY if self._req_keep_alive else MUST_CLOSE
            return item
        self._fail(item)
        raise item

    def _on_request(self, request: Request) -> Request:
        self._version = request.version
        self._head_request = request.method == b"HEAD"
        self._req_keep_alive = request.keep_alive
        self._waiting_continue = request.expect_continue
        if request.chunked:
            self.their_state = _AFTER_HEAD
            self._body_mode = _CHUNKED
        elif request.content_length:
            self.their_state = _AFTER_HEAD
            self._body_mode = _LENGTH
            self._remaining = request.content_length
        else:
            self._body_mode = _NO_BODY
            self.their_state = _AFTER_COMPLETE_HEAD if request.keep_alive else MUST_CLOSE
        return request

    def _starved(self) -> ConnectionClosed | _Sentinel:
        """Nothing parsed from what was received: wait, or report the end of input."""
        if not self._eof:
            return NEED_DATA
        if self._tokens.in_message or self.their_state is SEND_BODY:
            # RFC 9112 §8: a message cut short by the close is incomplete.
            exc = BadRequest("connection closed in the middle of a request")
            self._fail(exc)
            raise exc
        self.their_state = THEIR_TRANSITIONS[(IDLE, EV_CLOSED)]
        return ConnectionClosed()

    def _feed(self) -> None:
        """Feed received bytes to llhttp until it produces an event (or runs out)."""
        tokens = self._tokens
        queue = tokens.queue
        unfed = self._unfed
        while unfed and not queue and not self._dead:
            if tokens.in_head:
                if not self._head_may_be_complete():
                    return  # wait for more of the head (see HEAD_FEED)
                data = unfed[0] if len(unfed) == 1 else b"".join(unfed)
                unfed.clear()
            else:
                data = unfed.popleft()
            self._unfed_bytes -= len(data)
            try:
                tokens.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops at a request with Upgrade (or CONNECT); rapidwsgi
                # upgrades nothing (RFC 9110 §7.8 lets a server ignore Upgrade), so
                # what follows is the next request: parse it with a fresh parser.
                offset = exc.args[0] if exc.args else len(data)
                tokens.restart()
                if offset < len(data):
                    rest = data[offset:]
                    unfed.appendleft(rest)
                    self._unfed_bytes += len(rest)
            except httptools.HttpParserError as exc:
                self._stop(tokens.error if tokens.error is not None else _parser_error(exc))
                return
            if tokens.in_head:
                self._head_fed += len(data)
                if self._head_fed > HEAD_GUARD:
                    self._stop(HeaderFieldsTooLarge("request head too large"))
                    return
                self._tail = data[-3:] if len(data) >= 3 else (self._tail + data)[-3:]
            else:
                self._head_fed = 0
                self._tail = b""

    def _head_may_be_complete(self) -> bool:
        """Whether the pending bytes end the head being received, or are worth feeding."""
        if self._unfed_bytes >= HEAD_FEED or self._eof:
            return True
        unfed = self._unfed
        pending = self._tail + (unfed[0] if len(unfed) == 1 else b"".join(unfed))
        return pending.find(b"\r\n\r\n") >= 0

    def _stop(self, error: RemoteProtocolError) -> None:
        """llhttp stopped (or must stop) at an error: queue it, parse nothing more."""
        self._tokens.queue.append(error)
        self._dead = True
        self._drop_unfed()

    def _drop_unfed(self) -> None:
        self._unfed.clear()
        self._unfed_bytes = 0

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self.their_state = ERROR
        self._req_keep_alive = False
        self._waiting_continue = False
        self._dead = True
        self._drop_unfed()

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
