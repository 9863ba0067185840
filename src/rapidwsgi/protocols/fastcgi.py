"""Sans-IO FastCGI, the responder role as nginx's ``fastcgi_pass`` speaks it.

Records (FastCGI 1.0 specification §3): an 8-byte header — version (1), type,
request id (u16 BE), content length (u16 BE), padding length, reserved — then the content
and the padding. A request is BEGIN_REQUEST (role, flags), PARAMS records (name-value
pairs, ended by an empty PARAMS), STDIN records (the body, ended by an empty STDIN).
The reply is STDOUT records carrying a CGI response ("Status: 200 OK", fields, blank
line, body), an empty STDOUT, then END_REQUEST. With ``FCGI_KEEP_CONN`` (nginx's
``fastcgi_keep_conn on``) the connection carries the next request; without, it closes.

Management records (request id 0) are answered: GET_VALUES with FCGI_MAX_CONNS,
FCGI_MAX_REQS and FCGI_MPXS_CONNS=0 (no multiplexing); other types with UNKNOWN_TYPE. A
second BEGIN_REQUEST while a request runs is refused with CANT_MPX_CONN; a role other
than RESPONDER with UNKNOWN_ROLE. These replies come out as :class:`Reply` events (bytes
the connection writes back as they are). Malformed records (bad version, a body beyond
CONTENT_LENGTH, records for no request, params over the limits) raise BadRequest.
"""

from __future__ import annotations

import struct
from typing import Final

from ..errors import BadRequest, HeaderFieldsTooLarge, LocalProtocolError
from ..events import (
    EMPTY_EOM,
    NEED_DATA,
    NO_BODY,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Reply,
    Request,
    Response,
    _Sentinel,
)
from ._state import IDLE, SEND_BODY
from .base import GatewayConnection, Limits, NextEvent
from .cgi import request_from_cgi

VERSION: Final = 1
BEGIN_REQUEST: Final = 1
ABORT_REQUEST: Final = 2
END_REQUEST: Final = 3
PARAMS: Final = 4
STDIN: Final = 5
STDOUT: Final = 6
STDERR: Final = 7
DATA: Final = 8
GET_VALUES: Final = 9
GET_VALUES_RESULT: Final = 10
UNKNOWN_TYPE: Final = 11

RESPONDER: Final = 1
KEEP_CONN: Final = 1
REQUEST_COMPLETE: Final = 0
CANT_MPX_CONN: Final = 1
UNKNOWN_ROLE: Final = 3

HEADER: Final = struct.Struct(">BBHHBx")
MAX_CONTENT: Final = 65535
_END_BODY: Final = struct.Struct(">IB3x")


def record(kind: int, request_id: int, content: bytes = b"") -> bytes:
    """One record (content up to 65535 bytes), padded to a multiple of 8 bytes."""
    padding = -len(content) % 8
    return HEADER.pack(VERSION, kind, request_id, len(content), padding) + content + b"\0" * padding


def stream(kind: int, request_id: int, data: bytes) -> bytes:
    """``data`` as as many records of ``kind`` as it takes (never an empty record)."""
    if len(data) <= MAX_CONTENT:
        return record(kind, request_id, data) if data else b""
    return b"".join(
        record(kind, request_id, data[i : i + MAX_CONTENT]) for i in range(0, len(data), MAX_CONTENT)
    )


def end_request(request_id: int, protocol_status: int = REQUEST_COMPLETE, app_status: int = 0) -> bytes:
    return record(END_REQUEST, request_id, _END_BODY.pack(app_status, protocol_status))


def encode_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """Name-value pairs (FastCGI §3.4): lengths of 1 byte below 128, else 4 bytes."""
    out = bytearray()
    for name, value in pairs:
        for length in (len(name), len(value)):
            out += bytes((length,)) if length < 128 else struct.pack(">I", length | 0x80000000)
        out += name + value
    return bytes(out)


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse name-value pairs; raises BadRequest on a truncated or overrunning pair."""
    pairs = []
    pos, end = 0, len(data)
    while pos < end:
        lengths = []
        for _ in range(2):
            if pos >= end:
                raise BadRequest("fastcgi: truncated name-value pair")
            if data[pos] < 128:
                lengths.append(data[pos])
                pos += 1
            else:
                if pos + 4 > end:
                    raise BadRequest("fastcgi: truncated name-value length")
                lengths.append(int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF)
                pos += 4
        name_len, value_len = lengths
        if pos + name_len + value_len > end:
            raise BadRequest("fastcgi: name-value pair overruns the params")
        pairs.append((data[pos : pos + name_len], data[pos + name_len : pos + name_len + value_len]))
        pos += name_len + value_len
    return pairs


# Receive sub-states within one request.
_WAIT_BEGIN: Final = 0
_IN_PARAMS: Final = 1
_IN_STDIN: Final = 2


class FastCGIConnection(GatewayConnection):
    """One FastCGI connection, requests one at a time (see the module docstring)."""

    SELF_DELIMITING = True  # END_REQUEST ends a body without a length
    RAW_BODY_OK = False  # bodies travel in records: no sendfile
    METRICS_PROTOCOL = 2
    BODY_TOO_LONG = "fastcgi: STDIN longer than CONTENT_LENGTH"
    BODY_TOO_SHORT = "fastcgi: STDIN ended before CONTENT_LENGTH"

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self._phase = _WAIT_BEGIN
        self._request_id = 0
        self._keep_conn = False
        self._params = bytearray()

    # -- inspection

    @property
    def can_answer_error(self) -> bool:
        # Only inside a request: before any BEGIN_REQUEST (or between requests) there is
        # no request id to answer on, and id 0 is reserved for management records (§3.3).
        return self._phase != _WAIT_BEGIN

    @property
    def receiving_head(self) -> bool:
        return self.their_state is IDLE and (bool(self._buf) or self._phase != _WAIT_BEGIN)

    # -- receiving

    def _next(self) -> NextEvent:
        while True:
            buf = self._buf
            if len(buf) < HEADER.size:
                return self._starved()
            version, kind, request_id, length, padding = HEADER.unpack_from(buf)
            if version != VERSION:
                raise BadRequest(f"fastcgi: unsupported version {version}")
            total = HEADER.size + length + padding
            if len(buf) < total:
                return self._starved()
            content = buf[HEADER.size : HEADER.size + length]
            self._buf = buf[total:]
            if request_id == 0:
                return Reply(self._management(kind, content))
            event = self._record(kind, request_id, content)
            if event is not None:
                return event

    def _starved(self) -> ConnectionClosed | _Sentinel:
        if not self._eof:
            return NEED_DATA
        if self._buf or self._phase != _WAIT_BEGIN or self.their_state is SEND_BODY:
            raise BadRequest("fastcgi: connection closed inside a record or request")
        return self._closed_cleanly()

    def _management(self, kind: int, content: bytes) -> bytes:
        if kind != GET_VALUES:
            return record(UNKNOWN_TYPE, 0, bytes((kind,)) + b"\0" * 7)
        known = {b"FCGI_MAX_CONNS": b"1024", b"FCGI_MAX_REQS": b"1024", b"FCGI_MPXS_CONNS": b"0"}
        asked = [name for name, _ in decode_pairs(content)]
        return record(GET_VALUES_RESULT, 0, encode_pairs([(n, known[n]) for n in asked if n in known]))

    def _record(
        self, kind: int, request_id: int, content: bytes
    ) -> Request | Data | EndOfMessage | Reply | None:
        phase = self._phase
        if kind == BEGIN_REQUEST:
            if len(content) < 3:
                raise BadRequest("fastcgi: short BEGIN_REQUEST body")
            if phase != _WAIT_BEGIN:
                # One request at a time (FCGI_MPXS_CONNS=0): refuse the other one.
                return Reply(end_request(request_id, CANT_MPX_CONN))
            role = content[0] << 8 | content[1]
            if role != RESPONDER:
                return Reply(end_request(request_id, UNKNOWN_ROLE))
            self._request_id = request_id
            self._keep_conn = bool(content[2] & KEEP_CONN)
            self._params.clear()
            self._phase = _IN_PARAMS
            return None
        if request_id != self._request_id or phase == _WAIT_BEGIN:
            if kind in (PARAMS, STDIN, DATA, ABORT_REQUEST):
                return None  # §3.3: records for an inactive request are ignored
            raise BadRequest(f"fastcgi: unexpected record type {kind}")
        if kind == ABORT_REQUEST:
            raise BadRequest("fastcgi: request aborted by the gateway")
        if kind == PARAMS and phase == _IN_PARAMS:
            if content:
                self._params += content
                if len(self._params) > self.limits.max_head:
                    raise HeaderFieldsTooLarge("fastcgi: params too large")
                return None
            return self._request()
        if kind == STDIN and phase == _IN_STDIN:
            if not content:
                end = self._on_end(EMPTY_EOM)  # (refuses a short body)
                self._phase = _WAIT_BEGIN
                return end
            return self._on_data(Data(content))
        if kind == DATA:
            return None  # the FILTER role's stream: not used by a responder
        raise BadRequest(f"fastcgi: record type {kind} out of order")

    def _request(self) -> Request:
        # Every body ends with an empty STDIN record (§3.3, even an empty one), so no
        # request is complete with its head (``length_optional``: see request_from_cgi).
        request = request_from_cgi(
            decode_pairs(bytes(self._params)), self.limits, length_optional=True, keep_alive=self._keep_conn
        )
        self._params.clear()
        self._phase = _IN_STDIN
        return self._on_request(request)

    # -- sending: a CGI response in STDOUT records

    def send_continue(self) -> bytes:
        return b""  # the gateway deals with Expect: 100-continue

    def send_response(self, response: Response) -> bytes:
        framing = self._begin_response(response)
        head = b"".join((b"Status: ", response.status_line, b"\r\n", response.headers, framing, b"\r\n"))
        return stream(STDOUT, self._request_id, head)

    def send_data(self, data: bytes) -> bytes:
        if self.our_state is not SEND_BODY:
            raise LocalProtocolError("no response body is being sent")
        if self._resp_mode == NO_BODY:
            return b""
        self._count_sent(len(data))
        return stream(STDOUT, self._request_id, data)

    def prepare_raw(self, count: int) -> bool:
        raise LocalProtocolError("FastCGI bodies travel in records: no raw sending")

    def _end_bytes(self, mode: int) -> bytes:
        return record(STDOUT, self._request_id) + end_request(self._request_id)
