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

Tokenizing and the size limits are ``_tokenizer.py`` (llhttp); request semantics are
``_semantics.py``; the limits themselves are :class:`~rapidwsgi.protocols.base.Limits`;
the state machine is data in ``_state.py``. No sockets, clocks,
threads, logging or configuration objects live here; limits are plain integers.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import httptools

from ...errors import BadRequest, HeaderFieldsTooLarge, RemoteProtocolError
from ...events import NEED_DATA, ConnectionClosed, Data, EndOfMessage, Request, _Sentinel
from .._state import IDLE, SEND_BODY
from ..base import Limits, NextEvent, ServerConnection
from ._semantics import request_from_head
from ._tokenizer import Tokenizer

__all__ = ["H1Connection", "Limits", "request_from_head"]

#: While a head is incomplete, small reads are held back and fed to llhttp together
#: once this many bytes are pending (or the head's end has arrived): httptools
#: re-concatenates a field that arrives in pieces, which must not cost a copy per byte.
HEAD_FEED: Final = 4096
#: A head still incomplete after this many bytes is refused (431): a memory bound for
#: what llhttp tolerates without limit (runs of spaces in the request line). The
#: configured limits are enforced exactly per target and field.
HEAD_GUARD: Final = 1 << 20


def _parser_error(exc: Exception) -> RemoteProtocolError:
    """What an llhttp error implies: 400 (malformed request).

    llhttp cannot tell an unregistered but well-formed method token (RFC 9110 §9.1
    would answer 501) from garbage such as a TLS handshake, and gives no position to
    look: like gunicorn and uvicorn, rapidwsgi answers 400 for both.
    """
    return BadRequest(str(exc) or "malformed request")


class H1Connection(ServerConnection):
    """One HTTP/1.1 server connection's protocol state. See the module docstring."""

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self._tokens = Tokenizer(self.limits)
        self._unfed: deque[bytes] = deque()
        self._unfed_bytes = 0
        # An incomplete head: bytes fed so far, and the last 3 (a CRLFCRLF may straddle).
        self._head_fed = 0
        self._tail = b""
        self._dead = False  # llhttp stopped at an error; nothing more is parsed

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
    def at_rest(self) -> bool:
        """Between requests, nothing received and not yet parsed: the next bytes may go
        to the C request path (``_cfast.c``), which runs whole cycles itself."""
        tokens = self._tokens
        return (
            self.their_state is IDLE
            and self.our_state is IDLE
            and not self._unfed
            and not tokens.queue
            and not tokens.in_message
            and not self._eof
            and not self._dead
        )

    @property
    def receiving_head(self) -> bool:
        """Part of a request head has arrived, but not all of it."""
        return self._tokens.in_head or (self.their_state is IDLE and self._unfed_bytes > 0)

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

    def _next(self) -> NextEvent:
        """The next queued event, feeding llhttp when the queue is empty."""
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
            return self._on_data(item)
        if isinstance(item, EndOfMessage):
            return self._on_end(item)
        raise item

    def _starved(self) -> ConnectionClosed | _Sentinel:
        """Nothing parsed from what was received: wait, or report the end of input."""
        if not self._eof:
            return NEED_DATA
        if self._tokens.in_message or self.their_state is SEND_BODY:
            # RFC 9112 §8: a message cut short by the close is incomplete.
            raise BadRequest("connection closed in the middle of a request")
        return self._closed_cleanly()

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
                tokens.feed(data)
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
        super()._fail(exc)
        self._dead = True
        self._drop_unfed()
