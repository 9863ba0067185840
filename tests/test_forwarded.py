"""Trusted proxies: TrustedPeers, ForwardingPolicy (wsgi.forward_environ), the PROXY protocol end to end.

Unit tests of ``rapidwsgi.forwarded``, then real servers over HTTP: forwarding fields
from a trusted peer (127.0.0.1 and unix sockets by default) rewrite the environ, from
other peers they stay plain headers; ``--proxy-protocol`` takes the client address from
a HAProxy v1 or v2 header sent by a trusted peer and refuses one from anyone else.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import time
from typing import Any

import pytest

from rapidwsgi.events import FORWARDING_FIELDS
from rapidwsgi.forwarded import CLEARED_ONLY, PROXY_HEADERS, ForwardingPolicy, TrustedPeers, validate_spec
from rapidwsgi.protocols.http1._semantics import request_from_head
from rapidwsgi.wsgi import forward_environ
from tests.conftest import ServerProcess
from tests.fuzz_gateway import uwsgi_packet
from tests.rawhttp import RawConnectionExtras, ServerPool, get, wait_until

# ============================================================================ TrustedPeers


def test_trusted_peers_match_listed_addresses_only() -> None:
    peers = TrustedPeers(["127.0.0.1", "::1"])
    assert "127.0.0.1" in peers and "::1" in peers
    assert "127.0.0.2" not in peers and "10.0.0.1" not in peers and "::2" not in peers


def test_trusted_peers_match_cidr_ranges_of_both_families() -> None:
    peers = TrustedPeers(["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/24"])  # host bits allowed
    assert "10.255.0.1" in peers and "11.0.0.1" not in peers
    assert "2001:db8:1::5" in peers and "2001:db9::1" not in peers
    assert "192.168.1.200" in peers and "192.168.2.1" not in peers


def test_trusted_peers_unix_is_trusted_only_when_listed() -> None:
    assert "unix" in TrustedPeers(["unix"])
    assert "unix" not in TrustedPeers(["127.0.0.1"])
    assert "unix" in TrustedPeers(["127.0.0.1", "::1", "unix"])  # the default set


def test_trusted_peers_star_trusts_every_peer() -> None:
    peers = TrustedPeers(["*"])
    assert "203.0.113.9" in peers and "2001:db8::1" in peers and "unix" in peers


def test_trusted_peers_match_ipv4_mapped_ipv6_peers_as_ipv4() -> None:
    assert "::ffff:127.0.0.1" in TrustedPeers(["127.0.0.1"])
    assert "::ffff:10.1.2.3" in TrustedPeers(["10.0.0.0/8"])
    assert "::ffff:127.0.0.2" not in TrustedPeers(["127.0.0.1"])


def test_trusted_peers_ignore_scope_ids_and_never_trust_non_addresses() -> None:
    peers = TrustedPeers(["fe80::/10", "127.0.0.1"])
    assert "fe80::1%eth0" in peers
    for junk in ("", "unknown", "_hidden", "localhost", "127.0.0.1:80", "1.2.3.4.5"):
        assert junk not in peers, junk


def test_trusted_peers_skip_blank_items_and_the_spec_validator_names_bad_ones() -> None:
    assert "127.0.0.1" in TrustedPeers([" 127.0.0.1 ", "", " "])
    assert validate_spec(["127.0.0.1", "10.0.0.0/8", "unix", "*", "::1"]) is None
    message = validate_spec(["127.0.0.1", "not-an-ip"])
    assert message is not None and "not-an-ip" in message


# ============================================================================ ForwardingPolicy

TRUSTED = TrustedPeers(["127.0.0.1", "10.0.0.0/8", "unix"])
#: Every forwarding field trusted, nothing cleared: the parsing rules of each field.
EVERY_FIELD = ForwardingPolicy(TRUSTED, PROXY_HEADERS, clear_untrusted=False)
#: The defaults: what deploy/nginx/proxy.conf sets, the rest cleared.
DEFAULT = ForwardingPolicy(TRUSTED)


def forwarded(policy: ForwardingPolicy = EVERY_FIELD, **headers: str) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "internal:8000",
    }
    environ.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    forward_environ(environ, policy)
    return environ


def test_x_forwarded_for_single_address_becomes_remote_addr() -> None:
    environ = forwarded(x_forwarded_for="203.0.113.7")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.7", "")


def test_x_forwarded_for_takes_the_right_most_untrusted_address() -> None:
    # A client's own (spoofed) entry, the real client, then our own proxies.
    environ = forwarded(x_forwarded_for="6.6.6.6, 203.0.113.7, 10.0.0.2,10.1.1.1")
    assert environ["REMOTE_ADDR"] == "203.0.113.7"


def test_x_forwarded_for_of_only_trusted_proxies_gives_the_left_most() -> None:
    assert forwarded(x_forwarded_for="10.0.0.3, 10.0.0.2")["REMOTE_ADDR"] == "10.0.0.3"


def test_x_forwarded_for_with_empty_items_ignores_them() -> None:
    assert forwarded(x_forwarded_for=" , 203.0.113.7 ,, ")["REMOTE_ADDR"] == "203.0.113.7"


def test_x_forwarded_proto_and_host_take_the_nearest_proxys_value() -> None:
    environ = forwarded(x_forwarded_proto="http, HTTPS", x_forwarded_host="evil.example, www.example.com")
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == "www.example.com"


def test_x_forwarded_proto_other_than_http_or_https_is_ignored() -> None:
    assert forwarded(x_forwarded_proto="ftp")["wsgi.url_scheme"] == "http"
    assert forwarded(x_forwarded_proto="")["wsgi.url_scheme"] == "http"


def test_without_forwarding_fields_the_environ_is_unchanged() -> None:
    environ = forwarded()
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("127.0.0.1", "50000")
    assert (environ["wsgi.url_scheme"], environ["HTTP_HOST"]) == ("http", "internal:8000")


def test_rfc7239_forwarded_sets_address_scheme_and_host() -> None:
    environ = forwarded(forwarded="for=192.0.2.60;proto=https;host=www.example.com")
    assert environ["REMOTE_ADDR"] == "192.0.2.60"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == "www.example.com"


def test_rfc7239_forwarded_ipv4_node_with_port_sets_remote_port() -> None:
    environ = forwarded(forwarded="for=192.0.2.43:47011")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.43", "47011")


def test_rfc7239_forwarded_quoted_ipv6_node_with_and_without_port() -> None:
    environ = forwarded(forwarded='for="[2001:db8:cafe::17]:4711"')
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("2001:db8:cafe::17", "4711")
    environ = forwarded(forwarded='For="[2001:db8:cafe::17]"')
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("2001:db8:cafe::17", "")


def test_rfc7239_forwarded_takes_the_right_most_untrusted_element() -> None:
    environ = forwarded(forwarded="for=6.6.6.6, for=198.51.100.17;proto=http, for=10.0.0.5;proto=https")
    assert environ["REMOTE_ADDR"] == "198.51.100.17"
    assert environ["wsgi.url_scheme"] == "https"  # said by the nearest proxy


@pytest.mark.parametrize("node", ["unknown", "_hidden", "_SEVKISEK", '"_gazonk"'])
def test_rfc7239_unknown_and_obfuscated_identifiers_leave_remote_addr_alone(node: str) -> None:
    environ = forwarded(forwarded=f"for={node};proto=https")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("127.0.0.1", "50000")
    assert environ["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("node", ["192.0.2.43:_abc", '"[2001:db8::1]:_p9"'])
def test_rfc7239_obfuscated_port_does_not_become_remote_port(node: str) -> None:
    environ = forwarded(forwarded=f"for={node}")
    assert environ["REMOTE_ADDR"] in ("192.0.2.43", "2001:db8::1")
    assert environ["REMOTE_PORT"] == ""  # RFC 7239 §6.3: "_abc" is an identifier, not a port


def test_rfc7239_forwarded_wins_over_x_forwarded_for() -> None:
    environ = forwarded(forwarded="for=192.0.2.60", x_forwarded_for="203.0.113.7", x_forwarded_proto="https")
    assert environ["REMOTE_ADDR"] == "192.0.2.60"
    assert environ["wsgi.url_scheme"] == "http"  # X-Forwarded-Proto is not mixed in


def test_rfc7239_forwarded_without_pairs_is_ignored() -> None:
    environ = forwarded(forwarded="garbage, ;;")
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


def test_default_policy_ignores_and_clears_a_client_sent_forwarded_header() -> None:
    # nginx (deploy/nginx/proxy.conf) passes a client's own Forwarded through untouched.
    environ = forwarded(
        DEFAULT,
        forwarded="for=6.6.6.6;proto=https;host=evil.example",
        x_forwarded_for="198.51.100.4",
        x_forwarded_proto="http",
        x_forwarded_host="www.example.com",
    )
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("198.51.100.4", "")
    assert (environ["wsgi.url_scheme"], environ["HTTP_HOST"]) == ("http", "www.example.com")
    assert "HTTP_FORWARDED" not in environ
    assert environ["HTTP_X_FORWARDED_FOR"] == "198.51.100.4"  # trusted fields stay visible


def test_default_policy_alone_with_a_lying_forwarded_changes_nothing_but_removes_it() -> None:
    environ = forwarded(DEFAULT, forwarded="for=6.6.6.6;proto=https;host=evil.example")
    assert environ == {
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "internal:8000",
    }


def test_default_policy_clears_x_real_ip_x_forwarded_port_and_by() -> None:
    environ = forwarded(DEFAULT, x_real_ip="6.6.6.6", x_forwarded_port="4443", x_forwarded_by="10.0.0.1")
    assert environ == {
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "internal:8000",
    }


def test_without_clearing_untrusted_fields_stay_as_plain_headers() -> None:
    policy = ForwardingPolicy(TRUSTED, ["x-forwarded-for"], clear_untrusted=False)
    environ = forwarded(policy, forwarded="for=6.6.6.6", x_forwarded_proto="https", x_real_ip="6.6.6.6")
    assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    assert environ["HTTP_FORWARDED"] == "for=6.6.6.6"
    assert environ["HTTP_X_FORWARDED_PROTO"] == "https"
    assert environ["HTTP_X_REAL_IP"] == "6.6.6.6"


def test_only_the_named_fields_apply() -> None:
    policy = ForwardingPolicy(TRUSTED, ["x-forwarded-for"])
    environ = forwarded(
        policy, x_forwarded_for="203.0.113.7", x_forwarded_proto="https", x_forwarded_host="e.x"
    )
    assert environ["REMOTE_ADDR"] == "203.0.113.7"
    assert (environ["wsgi.url_scheme"], environ["HTTP_HOST"]) == ("http", "internal:8000")
    assert "HTTP_X_FORWARDED_PROTO" not in environ and "HTTP_X_FORWARDED_HOST" not in environ


def test_x_real_ip_sets_remote_addr_when_trusted() -> None:
    policy = ForwardingPolicy(TRUSTED, ["x-real-ip"])
    environ = forwarded(policy, x_real_ip=" 203.0.113.9 ")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.9", "")


def test_x_real_ip_that_is_no_address_is_ignored() -> None:
    policy = ForwardingPolicy(TRUSTED, ["x-real-ip"])
    assert forwarded(policy, x_real_ip="evil, 1.2.3.4")["REMOTE_ADDR"] == "127.0.0.1"


def test_x_forwarded_for_wins_over_x_real_ip() -> None:
    policy = ForwardingPolicy(TRUSTED, ["x-forwarded-for", "x-real-ip"])
    environ = forwarded(policy, x_forwarded_for="203.0.113.7", x_real_ip="203.0.113.9")
    assert environ["REMOTE_ADDR"] == "203.0.113.7"


def test_x_forwarded_port_sets_server_port_from_the_nearest_proxy() -> None:
    environ = forwarded(x_forwarded_port="80, 443")
    assert environ["SERVER_PORT"] == "443"
    assert "SERVER_PORT" not in forwarded(x_forwarded_port="44x3")
    assert "SERVER_PORT" not in forwarded(x_forwarded_port="123456")


def test_header_names_are_case_insensitive_and_unknown_ones_are_refused() -> None:
    policy = ForwardingPolicy(TRUSTED, [" X-Forwarded-For ", "FORWARDED"])
    assert policy.headers == frozenset({"x-forwarded-for", "forwarded"})
    with pytest.raises(ValueError, match="unknown forwarding header 'x-forwarded-user'"):
        ForwardingPolicy(TRUSTED, ["x-forwarded-user"])


def test_with_a_wildcard_the_client_is_the_right_most_entry_not_the_left_most() -> None:
    # '*' trusts the peer that connects, not every address a client writes in the chain.
    policy = ForwardingPolicy(TrustedPeers(["*"]), PROXY_HEADERS, clear_untrusted=False)
    assert forwarded(policy, x_forwarded_for="6.6.6.6, 203.0.113.7")["REMOTE_ADDR"] == "203.0.113.7"
    assert forwarded(policy, forwarded="for=6.6.6.6, for=203.0.113.7")["REMOTE_ADDR"] == "203.0.113.7"
    both = ForwardingPolicy(TrustedPeers(["*", "10.0.0.0/8"]), PROXY_HEADERS, clear_untrusted=False)
    assert forwarded(both, x_forwarded_for="6.6.6.6, 203.0.113.7, 10.0.0.2")["REMOTE_ADDR"] == "203.0.113.7"


def test_the_parsers_forwarding_fields_are_exactly_the_policys_plus_x_forwarded_by() -> None:
    assert {name.encode() for name in PROXY_HEADERS} | {b"x-forwarded-by"} == FORWARDING_FIELDS
    assert CLEARED_ONLY == ("x-forwarded-by",)
    assert list(PROXY_HEADERS.items()) == [
        ("forwarded", "HTTP_FORWARDED"),
        ("x-forwarded-for", "HTTP_X_FORWARDED_FOR"),
        ("x-forwarded-proto", "HTTP_X_FORWARDED_PROTO"),
        ("x-forwarded-host", "HTTP_X_FORWARDED_HOST"),
        ("x-forwarded-port", "HTTP_X_FORWARDED_PORT"),
        ("x-real-ip", "HTTP_X_REAL_IP"),
    ]


@pytest.mark.parametrize("field", sorted(FORWARDING_FIELDS))
def test_http_parser_flags_a_request_carrying_a_forwarding_field(field: bytes) -> None:
    headers = [(b"host", b"h"), (b"accept", b"*/*")]
    assert request_from_head(b"GET", b"/", b"1.1", headers).forwarded is False
    assert request_from_head(b"GET", b"/", b"1.1", [*headers, (field, b"x")]).forwarded is True


# ============================================================================ end to end

UNTRUSTING = ("--forwarded-allow-ips", "10.0.0.1")


pytestmark = pytest.mark.usefixtures("servers_survive")  # pool: conftest.py


def environ_of(server: ServerProcess, request: bytes, prefix: bytes = b"") -> dict[str, Any]:
    with RawConnectionExtras(server.address, 5) as conn:
        response = conn.request(prefix + request)
        assert response.status == 200, (response.status, response.body[:300])
        doc: dict[str, Any] = json.loads(response.body)
        return doc


FORWARDING = (
    "X-Forwarded-For: 203.0.113.50\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: www.example.com\r\n"
)


def test_forwarding_fields_from_a_trusted_peer_apply(pool: ServerPool) -> None:
    environ = environ_of(pool.get(), get("/echo", host="internal", headers=FORWARDING))
    assert environ["REMOTE_ADDR"] == "203.0.113.50"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == "www.example.com"


def test_rfc7239_forwarded_from_a_trusted_peer_applies_when_named(pool: ServerPool) -> None:
    headers = 'Forwarded: for="[2001:db8::5]:4000";proto=https;host=a.example\r\n'
    environ = environ_of(pool.get("--trusted-proxy-headers", "forwarded"), get("/echo", headers=headers))
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("2001:db8::5", "4000")
    assert (environ["wsgi.url_scheme"], environ["HTTP_HOST"]) == ("https", "a.example")


def test_client_sent_forwarded_from_a_trusted_peer_is_ignored_and_removed_by_default(
    pool: ServerPool,
) -> None:
    headers = "Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\nX-Real-IP: 6.6.6.6\r\n"
    environ = environ_of(pool.get(), get("/echo", host="internal", headers=headers))
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == "internal"
    assert "HTTP_FORWARDED" not in environ and "HTTP_X_REAL_IP" not in environ


def test_x_forwarded_by_alone_from_a_trusted_peer_is_removed(pool: ServerPool) -> None:
    environ = environ_of(pool.get(), get("/echo", headers="X-Forwarded-By: 10.0.0.1\r\n"))
    assert "HTTP_X_FORWARDED_BY" not in environ


def test_untrusted_fields_stay_with_no_clear_untrusted_proxy_headers(pool: ServerPool) -> None:
    headers = "Forwarded: for=6.6.6.6\r\n"
    server = pool.get("--no-clear-untrusted-proxy-headers")
    environ = environ_of(server, get("/echo", host="internal", headers=headers))
    assert (environ["REMOTE_ADDR"], environ["HTTP_FORWARDED"]) == ("127.0.0.1", "for=6.6.6.6")


def test_forwarding_fields_from_a_unix_socket_peer_apply_by_default(pool: ServerPool) -> None:
    environ = environ_of(pool.get(transport="unix"), get("/echo", headers=FORWARDING))
    assert environ["REMOTE_ADDR"] == "203.0.113.50"
    assert environ["wsgi.url_scheme"] == "https"


def test_forwarding_fields_from_an_untrusted_peer_stay_plain_headers(pool: ServerPool) -> None:
    environ = environ_of(pool.get(*UNTRUSTING), get("/echo", host="internal", headers=FORWARDING))
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["REMOTE_PORT"] != ""
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == "internal"
    assert environ["HTTP_X_FORWARDED_FOR"] == "203.0.113.50"
    assert environ["HTTP_X_FORWARDED_PROTO"] == "https"


def test_x_forwarded_fields_sent_through_a_gateway_protocol_do_not_override_its_variables(
    pool: ServerPool,
) -> None:
    server = pool.get("--protocol", "uwsgi", transport="unix")
    variables = [
        (b"REQUEST_METHOD", b"GET"),
        (b"REQUEST_URI", b"/echo"),
        (b"REMOTE_ADDR", b"198.51.100.9"),
        (b"HTTP_X_FORWARDED_FOR", b"6.6.6.6"),
        (b"HTTP_X_FORWARDED_PROTO", b"https"),
    ]
    with RawConnectionExtras(server.address, 5) as conn:
        conn.send(uwsgi_packet(variables))
        response = conn.read_response()
    environ = json.loads(response.body)
    assert environ["REMOTE_ADDR"] == "198.51.100.9"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6"


# ---------------------------------------------------------------------------- PROXY protocol

V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(
    source: str = "203.0.113.7",
    destination: str = "127.0.0.1",
    sport: int = 5555,
    dport: int = 80,
    *,
    command: int = 1,
    version: int = 2,
    tlvs: bytes = b"",
) -> bytes:
    """A PROXY protocol v2 header (HAProxy spec §2.2): signature, version/command,
    family/transport, length, addresses, TLVs."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x11 if src.version == 4 else 0x21  # AF_INET / AF_INET6, STREAM
    body = src.packed + dst.packed + struct.pack(">HH", sport, dport) + tlvs
    return V2_SIGNATURE + struct.pack(">BBH", version << 4 | command, family, len(body)) + body


@pytest.fixture
def proxied(pool: ServerPool) -> ServerProcess:
    return pool.get("--proxy-protocol")


def test_proxy_v1_header_from_a_trusted_peer_sets_remote_addr_and_port(proxied: ServerProcess) -> None:
    environ = environ_of(proxied, get("/echo"), prefix=V1)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.7", "5555")


def test_proxy_v1_tcp6_header_sets_an_ipv6_remote_addr(proxied: ServerProcess) -> None:
    prefix = b"PROXY TCP6 2001:db8::7 ::1 6000 443\r\n"
    environ = environ_of(proxied, get("/echo"), prefix=prefix)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("2001:db8::7", "6000")


def test_proxy_v1_unknown_keeps_the_peer_address(proxied: ServerProcess) -> None:
    environ = environ_of(proxied, get("/echo"), prefix=b"PROXY UNKNOWN\r\n")
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


def test_proxy_v2_header_sets_remote_addr_and_port(proxied: ServerProcess) -> None:
    environ = environ_of(proxied, get("/echo"), prefix=proxy_v2())
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.7", "5555")


def test_proxy_v2_ipv6_header_with_tlvs_sets_remote_addr(proxied: ServerProcess) -> None:
    tlvs = b"\x04\x00\x03abc" + b"\x01\x00\x02h2"  # PP2_TYPE_NOOP, PP2_TYPE_ALPN
    header = proxy_v2("2001:db8::9", "2001:db8::1", 7000, 443, tlvs=tlvs)
    environ = environ_of(proxied, get("/echo"), prefix=header)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("2001:db8::9", "7000")


def test_proxy_v2_local_command_keeps_the_peer_address(proxied: ServerProcess) -> None:
    environ = environ_of(proxied, get("/echo"), prefix=proxy_v2(command=0))
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


def test_proxy_header_arriving_in_pieces_is_reassembled(proxied: ServerProcess) -> None:
    for header in (V1, proxy_v2()):
        with RawConnectionExtras(proxied.address, 5) as conn:
            for i in range(0, len(header), 5):
                conn.send(header[i : i + 5])
                time.sleep(0.01)
            environ = json.loads(conn.request(get("/echo")).body)
            assert environ["REMOTE_ADDR"] == "203.0.113.7"


def test_proxy_header_address_applies_to_every_request_of_the_connection(proxied: ServerProcess) -> None:
    with RawConnectionExtras(proxied.address, 5) as conn:
        conn.send(V1)
        for _ in range(3):
            assert json.loads(conn.request(get("/echo")).body)["REMOTE_ADDR"] == "203.0.113.7"


def test_forwarding_fields_from_the_proxied_client_itself_are_not_trusted(proxied: ServerProcess) -> None:
    environ = environ_of(proxied, get("/echo", headers="X-Forwarded-For: 6.6.6.6\r\n"), prefix=V1)
    assert environ["REMOTE_ADDR"] == "203.0.113.7"
    assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6"


def test_connection_without_a_proxy_header_still_works(pool: ServerPool, proxied: ServerProcess) -> None:
    assert environ_of(proxied, get("/echo"))["REMOTE_ADDR"] == "127.0.0.1"
    untrusted = pool.get("--proxy-protocol", *UNTRUSTING)
    assert environ_of(untrusted, get("/echo"))["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize("header", [V1, proxy_v2()], ids=["v1", "v2"])
def test_proxy_header_from_an_untrusted_peer_is_refused_with_a_close_and_a_log_line(
    pool: ServerPool, header: bytes
) -> None:
    server = pool.get("--proxy-protocol", *UNTRUSTING)
    mark = len(server.stderr)
    with RawConnectionExtras(server.address, 5) as conn:
        conn.send(header + get("/echo"))
        data, outcome = conn.read_to_end(5)
        assert outcome in ("eof", "reset")
        assert b"203.0.113.7" not in data  # the request was not served as the claimed client
    assert wait_until(lambda: "PROXY header from untrusted peer" in server.stderr[mark:], timeout=5)
    assert environ_of(server, get("/echo"))["REMOTE_ADDR"] == "127.0.0.1"


MALFORMED = {
    "v1-short-address": b"PROXY TCP4 203.0.113 127.0.0.1 5555 80\r\n",
    "v1-five-fields": b"PROXY TCP4 203.0.113.7 127.0.0.1 5555\r\n",
    "v1-bad-protocol": b"PROXY TCP5 203.0.113.7 127.0.0.1 5555 80\r\n",
    "v1-port-range": b"PROXY TCP4 203.0.113.7 127.0.0.1 70000 80\r\n",
    "v1-family-mismatch": b"PROXY TCP4 2001:db8::1 127.0.0.1 5555 80\r\n",
    "v1-no-crlf-in-107": b"PROXY TCP4 " + b"1" * 120,
    "v2-version-3": proxy_v2(version=3),
    "v2-command-5": proxy_v2(command=5),
    "v2-truncated-ipv4": V2_SIGNATURE + b"\x21\x11\x00\x04\x01\x02\x03\x04",
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_proxy_header_gets_400_and_a_close(proxied: ServerProcess, case: str) -> None:
    mark = len(proxied.stderr)
    with RawConnectionExtras(proxied.address, 5) as conn:
        conn.send(MALFORMED[case] + get("/echo"))
        data, outcome = conn.read_to_end(5)
    assert data.startswith(b"HTTP/1.1 400 "), data[:100]
    assert outcome == "eof"
    assert wait_until(lambda: "Bad request from 127.0.0.1" in proxied.stderr[mark:], timeout=5)
    assert environ_of(proxied, get("/echo"))["REMOTE_ADDR"] == "127.0.0.1"
