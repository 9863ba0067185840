"""Sans-IO HAProxy PROXY protocol header, versions 1 (text) and 2 (binary).

Contract: :func:`parse` looks at the first bytes of a connection. It returns ``None``
when they cannot start a PROXY header (the connection carries no header), ``NEED_DATA``
when more bytes are needed to decide, or a :class:`ProxyHeader` with the number of bytes
it took; a malformed header raises :class:`~rapidwsgi.errors.BadRequest`.
(haproxy.org "The PROXY protocol", versions 1 and 2.)
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from ..errors import BadRequest
from ..events import NEED_DATA, _Sentinel

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # the longest v1 line, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED: Final = struct.Struct(">12sBBH")


class ProxyHeader:
    """What the proxy said about the connection it forwards.

    ``source`` / ``destination`` are ``(address, port)``, or None for a LOCAL / UNKNOWN
    connection (a health check from the proxy itself).
    """

    __slots__ = ("consumed", "destination", "source")

    def __init__(
        self, consumed: int, source: tuple[str, int] | None, destination: tuple[str, int] | None
    ) -> None:
        self.consumed = consumed
        self.source = source
        self.destination = destination


def parse(data: bytes) -> ProxyHeader | _Sentinel | None:
    """See the module docstring."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)] and data[:1] == b"\r":
        return _v2(data)
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _v1(data)
    return None


def _v1(data: bytes) -> ProxyHeader | _Sentinel:
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise BadRequest("PROXY v1 line too long")
        return NEED_DATA
    parts = data[:end].split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(end + 2, None, None)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise BadRequest("malformed PROXY v1 line")
    try:
        source = ipaddress.ip_address(parts[2].decode("ascii"))
        destination = ipaddress.ip_address(parts[3].decode("ascii"))
        ports = int(parts[4]), int(parts[5])
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("malformed PROXY v1 addresses") from None
    if source.version != (4 if parts[1] == b"TCP4" else 6) or not all(0 <= p <= 65535 for p in ports):
        raise BadRequest("malformed PROXY v1 addresses")
    return ProxyHeader(end + 2, (str(source), ports[0]), (str(destination), ports[1]))


def _v2(data: bytes) -> ProxyHeader | _Sentinel:
    if len(data) < _V2_FIXED.size:
        return NEED_DATA
    _, version_command, family, length = _V2_FIXED.unpack_from(data)
    if version_command >> 4 != 2:
        raise BadRequest("unsupported PROXY protocol version")
    total = _V2_FIXED.size + length
    if len(data) < total:
        return NEED_DATA
    command = version_command & 0x0F
    body = data[_V2_FIXED.size : total]
    if command == 0:  # LOCAL: the proxy's own connection
        return ProxyHeader(total, None, None)
    if command != 1:
        raise BadRequest("unknown PROXY v2 command")
    if family == 0x11 and length >= 12:  # TCP over IPv4
        src, dst, sport, dport = struct.unpack_from(">4s4sHH", body)
        return ProxyHeader(
            total, (str(ipaddress.IPv4Address(src)), sport), (str(ipaddress.IPv4Address(dst)), dport)
        )
    if family == 0x21 and length >= 36:  # TCP over IPv6
        src, dst, sport, dport = struct.unpack_from(">16s16sHH", body)
        return ProxyHeader(
            total, (str(ipaddress.IPv6Address(src)), sport), (str(ipaddress.IPv6Address(dst)), dport)
        )
    if family in (0x00, 0x31, 0x32):  # UNSPEC, unix stream/datagram: no usable address
        return ProxyHeader(total, None, None)
    raise BadRequest("unsupported or truncated PROXY v2 address block")
