"""Trusted proxies: which peers may speak for the client, and what they say.

Contract: :class:`TrustedPeers` answers whether a peer address (or ``"unix"`` for a
unix socket) is in ``--forwarded-allow-ips`` (addresses, CIDR ranges, ``unix``, ``*``).
:class:`ForwardingPolicy` rewrites the environ of a trusted peer's request from the
forwarding fields that ``--trusted-proxy-headers`` says the proxy sets (by default
exactly what deploy/nginx/proxy.conf sets: ``X-Forwarded-For``, ``-Proto``, ``-Host``)
and, with ``--clear-untrusted-proxy-headers``, removes the other forwarding fields, which
only the client can have written. The client address is the right-most one not itself a
trusted proxy, so a client cannot pose as another by sending its own
``X-Forwarded-For``. From other peers all these fields stay plain headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, Final

from ._bounded import remember

_MAX_CACHED: Final = 1024

#: The forwarding fields ``--trusted-proxy-headers`` may name, with their environ keys.
PROXY_HEADERS: Final = {
    "forwarded": "HTTP_FORWARDED",
    "x-forwarded-for": "HTTP_X_FORWARDED_FOR",
    "x-forwarded-proto": "HTTP_X_FORWARDED_PROTO",
    "x-forwarded-host": "HTTP_X_FORWARDED_HOST",
    "x-forwarded-port": "HTTP_X_FORWARDED_PORT",
    "x-real-ip": "HTTP_X_REAL_IP",
}
#: Exactly what the shipped deploy/nginx/proxy.conf sets (overwrites or appends to).
DEFAULT_HEADERS: Final = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")
#: Cleared from a trusted peer's requests but never applied (waitress clears it too).
_CLEARED_ONLY: Final = ("HTTP_X_FORWARDED_BY",)


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
        return self.any or self.listed(address)

    def listed(self, address: str) -> bool:
        """``address`` is named by an address, range or ``unix`` entry (``*`` aside).

        The test for a hop inside X-Forwarded-For / Forwarded: ``*`` trusts whoever
        connects, not every address a client can write into the chain.
        """
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
        remember(self._cache, address, trusted, _MAX_CACHED)
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
    return host, port if _is_port(port) else ""


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


class ForwardingPolicy:
    """What a trusted peer may say about the client, and what is cleared from the environ.

    ``headers`` names the forwarding fields the trusted proxy sets or overwrites
    itself (``--trusted-proxy-headers``, waitress's ``trusted_proxy_headers``): only
    those are applied. A client's own ``Forwarded`` or ``X-Forwarded-Proto`` passes
    through most proxies untouched, so a field the proxy does not set must not be
    believed; with ``clear_untrusted`` (waitress's ``clear_untrusted_proxy_headers``)
    it is also removed from the environ, so the application cannot believe it either.

    Applied from a trusted peer (precedence for the address: ``Forwarded``, then
    ``X-Forwarded-For``, then ``X-Real-IP``):

    * ``forwarded``: RFC 7239 ``for`` (the right-most element whose node is not a
      trusted proxy), ``proto`` and ``host`` of the nearest element; when it is
      present, the ``X-Forwarded-*`` fields are not mixed in.
    * ``x-forwarded-for``: the right-most address that is not itself a trusted proxy
      (entries left of it were written by the client and are not believed).
    * ``x-real-ip``: one address (nginx ``proxy_set_header X-Real-IP $remote_addr``).
    * ``x-forwarded-proto`` (``http``/``https``), ``x-forwarded-host``,
      ``x-forwarded-port``: the right-most value, the one the nearest proxy added.
    """

    def __init__(
        self,
        trusted: TrustedPeers,
        headers: Iterable[str] = DEFAULT_HEADERS,
        clear_untrusted: bool = True,
    ) -> None:
        self.trusted = trusted
        names = frozenset(h.strip().lower() for h in headers if h.strip())
        unknown = sorted(name for name in names if name not in PROXY_HEADERS)
        if unknown:
            raise ValueError(f"unknown forwarding header {unknown[0]!r}")
        self.headers = names
        self._forwarded = "forwarded" in names
        self._for = "x-forwarded-for" in names
        self._real_ip = "x-real-ip" in names
        self._proto = "x-forwarded-proto" in names
        self._host = "x-forwarded-host" in names
        self._port = "x-forwarded-port" in names
        applied = tuple(key for name, key in PROXY_HEADERS.items() if name in names)
        cleared = tuple(key for name, key in PROXY_HEADERS.items() if name not in names)
        self._clear = (*cleared, *_CLEARED_ONLY) if clear_untrusted else ()
        #: The environ keys whose presence makes :meth:`apply` do anything.
        self._triggers = applied + self._clear

    def apply(self, environ: dict[str, Any]) -> None:
        """Rewrite ``environ`` of a request from a trusted peer (see the class docstring)."""
        for key in self._triggers:
            if key in environ:
                break
        else:
            return  # the common case: a direct client on a trusted address sends none
        for key in self._clear:
            environ.pop(key, None)
        if self._forwarded:
            forwarded = environ.get("HTTP_FORWARDED")
            if forwarded:
                _apply_rfc7239(environ, forwarded, self.trusted)
                return
        if self._for and environ.get("HTTP_X_FORWARDED_FOR"):
            addresses = _split(environ["HTTP_X_FORWARDED_FOR"])
            client_address = addresses[0] if addresses else ""
            for address in reversed(addresses):
                client_address = address
                if not self.trusted.listed(address):
                    break
            if client_address:
                environ["REMOTE_ADDR"] = client_address
                environ["REMOTE_PORT"] = ""
        elif self._real_ip:
            real_ip = (environ.get("HTTP_X_REAL_IP") or "").strip()
            if real_ip and _is_address(real_ip):
                environ["REMOTE_ADDR"] = real_ip
                environ["REMOTE_PORT"] = ""
        if self._proto:
            protos = _split(environ.get("HTTP_X_FORWARDED_PROTO") or "")
            if protos and protos[-1].lower() in ("http", "https"):
                environ["wsgi.url_scheme"] = protos[-1].lower()
        if self._host:
            hosts = _split(environ.get("HTTP_X_FORWARDED_HOST") or "")
            if hosts:
                environ["HTTP_HOST"] = hosts[-1]
        if self._port:
            ports = _split(environ.get("HTTP_X_FORWARDED_PORT") or "")
            if ports and _is_port(ports[-1]):
                environ["SERVER_PORT"] = ports[-1]


def _is_port(text: str) -> bool:
    """Up to 5 ASCII digits: a port, not an RFC 7239 obfuscated identifier or junk."""
    return text.isdigit() and text.isascii() and len(text) <= 5


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _apply_rfc7239(environ: dict[str, Any], value: str, trusted: TrustedPeers) -> None:
    elements = _parse_forwarded(value)
    if not elements:
        return
    client = elements[0]
    for element in reversed(elements):
        address, _ = _node(element.get("for", ""))
        client = element
        if not trusted.listed(address):
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
