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

from ..errors import BadRequest
from ..events import EMPTY_EOM, NEED_DATA, PAUSED, ConnectionClosed, Data, EndOfMessage, Request, _Sentinel
from ._state import IDLE, SEND_BODY
from .base import GatewayConnection, NextEvent
from .cgi import request_from_cgi

HEADER_SIZE: Final = 4


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
    #: The reply to the gateway is HTTP/1.0-style: no chunked coding, the connection's
    #: close ends a body without a length (RFC 9112 §6.3).
    CHUNKED_REPLIES = False

    # -- inspection

    @property
    def receiving_head(self) -> bool:
        return self.their_state is IDLE and bool(self._buf)

    # -- receiving

    def _next(self) -> NextEvent:
        if self.their_state is SEND_BODY:
            return self._body()
        return self._head()

    def _paused(self) -> NextEvent:
        if self._buf:
            # nginx never sends more: something is off with this peer.
            raise BadRequest("uwsgi: bytes after the request body")
        return PAUSED

    def _head(self) -> Request | ConnectionClosed | _Sentinel:
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            if self._eof:
                if not buf:
                    return self._closed_cleanly()
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
        return self._on_request(request_from_cgi(variables, self.limits))

    def _body(self) -> Data | EndOfMessage | _Sentinel:
        if self._remaining == 0:
            return self._on_end(EMPTY_EOM)
        buf = self._buf
        if not buf:
            if self._eof:
                raise BadRequest("uwsgi: connection closed before the body was complete")
            return NEED_DATA
        n = min(self._remaining, len(buf))
        data = buf if n == len(buf) else buf[:n]
        self._buf = buf[n:]
        return self._on_data(Data(data))
