"""Sans-IO uwsgi protocol, as nginx's ``uwsgi_pass`` speaks it (one request per connection).

Wire format (the uWSGI project's "uwsgi protocol"): a 4-byte header — ``modifier1``
(u8, 0 for a WSGI request), ``datasize`` (u16 little-endian), ``modifier2`` (u8) —
then ``datasize`` bytes of variables, each ``u16 key length, key, u16 value length,
value`` (little-endian), then the request body: CONTENT_LENGTH bytes. The reply is a
raw HTTP response; keep-alive is not assumed, so the connection closes after it.

Contract: the same as every :class:`~rapidwsgi.protocols.base.ServerConnection`; the
request comes out as the same :class:`~rapidwsgi.events.Request` as from HTTP/1.1
(``cgi.request_from_cgi``). Malformed input (a truncated or overrunning variable
block, a modifier other than 0, bytes beyond the declared body) raises
:class:`~rapidwsgi.errors.BadRequest`.
"""

from __future__ import annotations

from typing import Final

from ..errors import BadRequest, RemoteProtocolError
from ..events import NEED_DATA, PAUSED, ConnectionClosed, Data, EndOfMessage, Request, _Sentinel
from ._state import DONE, ERROR, EV_CLOSED, IDLE, MUST_CLOSE, SEND_BODY, THEIR_TRANSITIONS
from .base import GatewayConnection
from .cgi import request_from_cgi

HEADER_SIZE: Final = 4
_EMPTY_EOM: Final = EndOfMessage()


def parse_vars(block: bytes) -> list[tuple[bytes, bytes]]:
    """The variables of a uwsgi packet body; raises BadRequest if the block is malformed."""
    out: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(block)
    while pos < end:
        if pos + 2 > end:
            raise BadRequest("uwsgi: truncated variable name length")
        size = block[pos] | block[pos + 1] << 8
        pos += 2
        if pos + size + 2 > end:
            raise BadRequest("uwsgi: variable overruns the packet")
        key = block[pos : pos + size]
        pos += size
        size = block[pos] | block[pos + 1] << 8
        pos += 2
        if pos + size > end:
            raise BadRequest("uwsgi: variable value overruns the packet")
        out.append((key, block[pos : pos + size]))
        pos += size
    return out


class UwsgiConnection(GatewayConnection):
    """One uwsgi connection: one request, then close (see the module docstring)."""

    METRICS_PROTOCOL = 1

    # -- inspection

    @property
    def receiving_head(self) -> bool:
        return self.their_state is IDLE and bool(self._buf)

    # -- receiving

    def next_event(self) -> Request | Data | EndOfMessage | ConnectionClosed | _Sentinel:
        state = self.their_state
        try:
            if state is IDLE:
                return self._head()
            if state is SEND_BODY:
                return self._body()
            if state is DONE or state is MUST_CLOSE:
                if self._buf:
                    # nginx never sends more: something is off with this peer.
                    raise BadRequest("uwsgi: bytes after the request body")
                return PAUSED
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        if state is ERROR:
            assert self._error is not None
            raise self._error
        return ConnectionClosed()

    def _head(self) -> Request | ConnectionClosed | _Sentinel:
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            if self._eof:
                if not buf:
                    self.their_state = THEIR_TRANSITIONS[(IDLE, EV_CLOSED)]
                    return ConnectionClosed()
                raise BadRequest("uwsgi: connection closed inside the packet header")
            return NEED_DATA
        if buf[0] != 0:
            raise BadRequest(f"uwsgi: unsupported modifier1 {buf[0]} (only 0, WSGI, is served)")
        size = buf[1] | buf[2] << 8
        if len(buf) < HEADER_SIZE + size:
            if self._eof:
                raise BadRequest("uwsgi: connection closed inside the variables")
            return NEED_DATA
        variables = parse_vars(buf[HEADER_SIZE : HEADER_SIZE + size])
        self._buf = buf[HEADER_SIZE + size :]
        request = request_from_cgi(variables, self.limits)
        # The reply to the gateway is HTTP/1.0-style: no chunked coding, the
        # connection's close ends a body without a length (RFC 9112 §6.3).
        request.version = b"1.0"
        return self._on_request(request)

    def _body(self) -> Data | EndOfMessage | _Sentinel:
        if self._remaining == 0:
            return self._on_end(_EMPTY_EOM)
        buf = self._buf
        if not buf:
            if self._eof:
                raise BadRequest("uwsgi: connection closed before the body was complete")
            return NEED_DATA
        n = min(self._remaining, len(buf))
        data = buf if n == len(buf) else buf[:n]
        self._buf = buf[n:]
        return self._on_data(Data(data))
