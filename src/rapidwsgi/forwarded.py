"""Trusted proxies: which peers may speak for the client, and what they say.

Contract: :class:`TrustedPeers` answers whether a peer address (or ``"unix"`` for a
unix socket) is in ``--forwarded-allow-ips`` (addresses, CIDR ranges, ``unix``, ``*``).
:func:`apply_forwarded` rewrites an environ from a trusted peer's RFC 7239 ``Forwarded``
field, or else its ``X-Forwarded-For`` / ``X-Forwarded-Proto`` / ``X-Forwarded-Host``
fields: REMOTE_ADDR (and REMOTE_PORT when given), ``wsgi.url_scheme``, HTTP_HOST. The
client address is the right-most one not itself a trusted proxy, so a client cannot pose
as another by sending its own ``X-Forwarded-For``. From other peers these fields stay
plain headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, Final

_MAX_CACHED: Final = 1024


class TrustedPeers:
    def __init__(self, spec: Iterable[str]) -> None:
        self.any = False
        self.unix = False
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in spec:
            item = raw.strip()
            if not item:
                continue
            if item == "*":
                self.any = True
            elif item == "unix":
                self.unix = True
            else:
                self.networks.append(ipaddress.ip_network(item, strict=False))
        self._cache: dict[str, bool] = {}

    def __contains__(self, address: str) -> bool:
        """``address`` is an IP address string, or ``"unix"`` for a unix-socket peer."""
        if self.any:
            return True
        if address == "unix":
            return self.unix
        known = self._cache.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            trusted = False
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            trusted = any(ip in net for net in self.networks)
        if len(self._cache) < _MAX_CACHED:
            self._cache[address] = trusted
        return trusted


def validate_spec(spec: Iterable[str]) -> str | None:
    """An error message for an invalid ``--forwarded-allow-ips`` entry, or None."""
    for raw in spec:
        item = raw.strip()
        if item in ("", "*", "unix"):
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an address, a CIDR range, 'unix' or '*'"
    return None


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _node(value: str) -> tuple[str, str]:
    """RFC 7239 §6 node: ``ip``, ``"[v6]:port"``, ``ip:port``; returns (address, port).

    The port is ``""`` unless it is a number: an obfuscated port (``_abc``, §6.3) names
    nothing a WSGI application could use as REMOTE_PORT.
    """
    value = value.strip().strip('"')
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    return host, port if port.isdigit() and port.isascii() and len(port) <= 5 else ""


def _parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 §4: elements separated by "," with ";"-separated name=value pairs."""
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            name, sep, val = pair.partition("=")
            if sep:
                pairs[name.strip().lower()] = val.strip().strip('"')
        if pairs:
            elements.append(pairs)
    return elements


def apply_forwarded(environ: dict[str, Any], trusted: TrustedPeers) -> None:
    """Rewrite ``environ`` from the forwarding fields of a trusted peer (see above)."""
    forwarded = environ.get("HTTP_FORWARDED")
    if forwarded:
        elements = _parse_forwarded(forwarded)
        if not elements:
            return
        client = elements[0]
        for element in reversed(elements):
            address, _ = _node(element.get("for", ""))
            client = element
            if address not in trusted:
                break
        if "for" in client:
            address, port = _node(client["for"])
            if address and not address.startswith("_") and address != "unknown":
                environ["REMOTE_ADDR"] = address
                environ["REMOTE_PORT"] = port
        last = elements[-1]
        proto = last.get("proto", "").lower()
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
        if last.get("host"):
            environ["HTTP_HOST"] = last["host"]
        return
    chain = environ.get("HTTP_X_FORWARDED_FOR")
    if chain:
        addresses = _split(chain)
        client_address = addresses[0] if addresses else ""
        for address in reversed(addresses):
            client_address = address
            if address not in trusted:
                break
        if client_address:
            environ["REMOTE_ADDR"] = client_address
            environ["REMOTE_PORT"] = ""
    protos = _split(environ.get("HTTP_X_FORWARDED_PROTO") or "")
    if protos and protos[-1].lower() in ("http", "https"):
        environ["wsgi.url_scheme"] = protos[-1].lower()
    hosts = _split(environ.get("HTTP_X_FORWARDED_HOST") or "")
    if hosts:
        environ["HTTP_HOST"] = hosts[-1]
