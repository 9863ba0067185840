"""Trusted proxies: which peers may speak for the client, and what they say.

Contract: :class:`TrustedPeers` answers whether a peer address (or ``"unix"`` for a
unix socket) is in ``--forwarded-allow-ips`` (addresses, CIDR ranges, ``unix``, ``*``).
:class:`ForwardingPolicy` says which forwarding fields a trusted peer is believed for
(``--trusted-proxy-headers``: by default exactly what deploy/nginx/proxy.conf sets,
``X-Forwarded-For``, ``-Proto``, ``-Host``) and which are removed, having been written by
the client (``--clear-untrusted-proxy-headers``); the parsers below read the fields'
values. The environ rewrite itself is the builder's last stage,
``wsgi.forward_environ``. The client address is the right-most one not itself a
trusted proxy, so a client cannot pose as another by sending its own
``X-Forwarded-For``. From other peers all these fields stay plain headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from ._bounded import remember
from .events import FORWARDING_NAMES

_MAX_CACHED: Final = 1024

#: Forwarding fields cleared from a trusted peer's requests but never applied
#: (waitress clears X-Forwarded-By too).
CLEARED_ONLY: Final = ("x-forwarded-by",)


def _environ_key(name: str) -> str:
    # PEP 3333 / CGI: HTTP_ + the name upper-cased, "-" as "_" (as wsgi._environ_key).
    return "HTTP_" + name.upper().replace("-", "_")


#: The forwarding fields ``--trusted-proxy-headers`` may name, with their environ keys:
#: ``events.FORWARDING_NAMES`` but the cleared-only ones.
PROXY_HEADERS: Final = {
    name: _environ_key(name)
    for name in [raw.decode("ascii") for raw in FORWARDING_NAMES]
    if name not in CLEARED_ONLY
}
#: Exactly what the shipped deploy/nginx/proxy.conf sets (overwrites or appends to).
DEFAULT_HEADERS: Final = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")
_CLEARED_ONLY_KEYS: Final = tuple(_environ_key(name) for name in CLEARED_ONLY)


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


def split_items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def node(value: str) -> tuple[str, str]:
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
    return host, port if is_port(port) else ""


def parse_forwarded(value: str) -> list[dict[str, str]]:
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

    Applied (by ``wsgi.forward_environ``) from a trusted peer (precedence for the address: ``Forwarded``, then
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
        # Which fields are believed (read by wsgi.forward_environ).
        self.use_forwarded = "forwarded" in names
        self.use_for = "x-forwarded-for" in names
        self.use_real_ip = "x-real-ip" in names
        self.use_proto = "x-forwarded-proto" in names
        self.use_host = "x-forwarded-host" in names
        self.use_port = "x-forwarded-port" in names
        applied = tuple(key for name, key in PROXY_HEADERS.items() if name in names)
        cleared = tuple(key for name, key in PROXY_HEADERS.items() if name not in names)
        #: The environ keys removed from a trusted peer's request before anything applies.
        self.clear: tuple[str, ...] = (*cleared, *_CLEARED_ONLY_KEYS) if clear_untrusted else ()
        #: The environ keys whose presence makes the rewrite do anything.
        self.triggers: tuple[str, ...] = applied + self.clear


def is_port(text: str) -> bool:
    """Up to 5 ASCII digits: a port, not an RFC 7239 obfuscated identifier or junk."""
    return text.isdigit() and text.isascii() and len(text) <= 5


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True
