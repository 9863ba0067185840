"""The environ builder of ``wsgi.py``, stage by stage, with exact dicts.

Stage 1 ``process_environ`` / ``environ_template`` (per process and listener), stage 2
``connection_environ`` / ``set_client`` (per connection), stage 3 ``build_environ`` (per
request), stage 4 ``forward_environ`` (a trusted proxy's fields), and
``request_environ`` (3 then 4). Then through ``HTTPConnection`` on both request paths:
forwarding fields rewrite the environ only when the peer is trusted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rapidwsgi.config import Config
from rapidwsgi.events import FORWARDING_NAMES, Request
from rapidwsgi.forwarded import ForwardingPolicy, TrustedPeers
from rapidwsgi.protocols.http1._semantics import request_from_head
from rapidwsgi.worker import base_environ
from rapidwsgi.wsgi import (
    EMPTY_INPUT,
    FileWrapper,
    build_environ,
    connection_environ,
    environ_template,
    forward_environ,
    process_environ,
    request_environ,
    set_client,
)
from tests.test_connection_unit import PATHS, Server, in_loop

ERRORS = object()

PROCESS = {
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": ERRORS,
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
    "wsgi.file_wrapper": FileWrapper,
    "wsgi.input_terminated": True,
    "SERVER_SOFTWARE": "rapidwsgi/test",
    "SCRIPT_NAME": "/app",
}
#: What stage 1 adds for the later stages: each key with its commonest value.
LATER_KEYS = {
    "SERVER_NAME": "",
    "SERVER_PORT": "",
    "REMOTE_ADDR": "",
    "REMOTE_PORT": "",
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "",
    "QUERY_STRING": "",
    "RAW_URI": "",
    "REQUEST_URI": "",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "wsgi.input": EMPTY_INPUT,
}


def process() -> dict[str, Any]:
    return process_environ(errors=ERRORS, multithread=True, script_name="/app/", software="rapidwsgi/test")


# ------------------------------------------------------------------ stage 1


def test_process_environ_holds_the_wsgi_constants_and_script_name_without_its_slash() -> None:
    assert process() == PROCESS


def test_worker_base_environ_is_stage_one_from_the_settings() -> None:
    from rapidwsgi import __version__

    env = base_environ(Config(threads=1, root_path=""), ERRORS)
    assert env == {
        **PROCESS,
        "wsgi.multithread": False,
        "SERVER_SOFTWARE": f"rapidwsgi/{__version__}",
        "SCRIPT_NAME": "",
    }


def test_environ_template_adds_every_later_key_with_its_commonest_value() -> None:
    assert environ_template(process()) == {**PROCESS, **LATER_KEYS}


def test_a_tls_listeners_template_says_https() -> None:
    assert environ_template(process(), tls=True) == {
        **PROCESS,
        **LATER_KEYS,
        "wsgi.url_scheme": "https",
        "HTTPS": "on",
    }


def test_environ_template_leaves_its_base_alone() -> None:
    base = process()
    environ_template(base, tls=True)
    assert base == PROCESS


# ------------------------------------------------------------------ stage 2


def test_connection_environ_over_tcp_names_both_ends() -> None:
    template = environ_template(process())
    env = connection_environ(template, ("192.0.2.1", 8000), ("198.51.100.7", 50123))
    assert env == {
        **PROCESS,
        **LATER_KEYS,
        "SERVER_NAME": "192.0.2.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "198.51.100.7",
        "REMOTE_PORT": "50123",
    }
    assert template == {**PROCESS, **LATER_KEYS}  # a copy: the template is shared


def test_connection_environ_over_a_unix_socket_has_no_peer_and_port_zero() -> None:
    env = connection_environ(environ_template(process()), "/run/app.sock", "")
    assert env == {**PROCESS, **LATER_KEYS, "SERVER_NAME": "localhost", "SERVER_PORT": "0"}


def test_connection_environ_over_ipv6_keeps_the_address_text() -> None:
    env = connection_environ(environ_template(process()), ("::1", 8000, 0, 0), ("::1", 41000, 0, 0))
    assert (env["SERVER_NAME"], env["SERVER_PORT"], env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (
        "::1",
        "8000",
        "::1",
        "41000",
    )


def test_set_client_replaces_the_peer_in_place() -> None:
    env = connection_environ(environ_template(process()), ("192.0.2.1", 8000), ("127.0.0.1", 50000))
    same = env
    set_client(env, "203.0.113.9", 4711)
    assert same is env
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.9", "4711")


# ------------------------------------------------------------------ stage 3


def connection() -> dict[str, Any]:
    return connection_environ(environ_template(process()), ("192.0.2.1", 8000), ("127.0.0.1", 50000))


CONNECTION = {
    **PROCESS,
    **LATER_KEYS,
    "SERVER_NAME": "192.0.2.1",
    "SERVER_PORT": "8000",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "50000",
}


def head(
    target: bytes, *fields: tuple[bytes, bytes], method: bytes = b"GET", version: bytes = b"1.1"
) -> Request:
    return request_from_head(method, target, version, [(b"host", b"example.com"), *fields])


def test_build_environ_adds_the_request_keys_to_a_copy_of_the_connections() -> None:
    base = connection()
    body = object()
    request = head(
        b"/app/a%20b?x=1&y=%41",
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"accept", b"text/html"),
        (b"accept", b"*/*"),
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"x_dropped", b"underscore"),
        method=b"POST",
        version=b"1.0",
    )
    assert build_environ(base, request, body) == {
        **CONNECTION,
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/a b",  # below SCRIPT_NAME, percent-decoded
        "QUERY_STRING": "x=1&y=%41",
        "RAW_URI": "/app/a%20b?x=1&y=%41",
        "REQUEST_URI": "/app/a%20b?x=1&y=%41",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "wsgi.input": body,
        "HTTP_HOST": "example.com",
        "HTTP_COOKIE": "a=1; b=2",
        "HTTP_ACCEPT": "text/html, */*",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "5",
    }
    assert base == CONNECTION


# ------------------------------------------------------------------ stage 4

TRUSTED = TrustedPeers(["127.0.0.1"])
POLICY = ForwardingPolicy(TRUSTED)  # X-Forwarded-For/-Proto/-Host believed, the rest cleared

FORWARDING_FIELDS = (
    (b"x-forwarded-for", b"6.6.6.6, 203.0.113.7"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"www.example.com"),
    (b"x-real-ip", b"6.6.6.6"),
)
#: Stage 3 of that request: the fields as plain headers.
PLAIN = {
    **CONNECTION,
    "PATH_INFO": "/",
    "RAW_URI": "/app/",
    "REQUEST_URI": "/app/",
    "HTTP_HOST": "example.com",
    "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7",
    "HTTP_X_FORWARDED_PROTO": "https",
    "HTTP_X_FORWARDED_HOST": "www.example.com",
    "HTTP_X_REAL_IP": "6.6.6.6",
}
#: Stage 4 of it: the believed fields applied, X-Real-IP (not believed) cleared.
FORWARDED = {
    **PLAIN,
    "REMOTE_ADDR": "203.0.113.7",
    "REMOTE_PORT": "",
    "wsgi.url_scheme": "https",
    "HTTP_HOST": "www.example.com",
}
del FORWARDED["HTTP_X_REAL_IP"]


def test_forward_environ_applies_the_believed_fields_and_clears_the_others() -> None:
    env = build_environ(connection(), head(b"/app/", *FORWARDING_FIELDS), EMPTY_INPUT)
    assert env == PLAIN
    forward_environ(env, POLICY)
    assert env == FORWARDED


def test_request_environ_is_stage_three_then_four_for_a_forwarding_peer() -> None:
    request = head(b"/app/", *FORWARDING_FIELDS)
    assert request.forwarded is True
    assert request_environ(connection(), request, EMPTY_INPUT, POLICY) == FORWARDED


def test_request_environ_without_a_policy_leaves_the_fields_plain_headers() -> None:
    # None: the peer is not trusted (or speaks a gateway protocol).
    assert request_environ(connection(), head(b"/app/", *FORWARDING_FIELDS), EMPTY_INPUT, None) == PLAIN


def test_request_environ_of_a_request_without_forwarding_fields_is_stage_three() -> None:
    request = head(b"/app/x?q")
    assert request.forwarded is False
    assert request_environ(connection(), request, EMPTY_INPUT, POLICY) == build_environ(
        connection(), request, EMPTY_INPUT
    )


# ------------------------------------------------- through the connection, both paths

FORWARDED_GET = (
    b"GET /who?q=1 HTTP/1.1\r\nHost: internal:8000\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.7\r\n"
    b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: www.example.com\r\nX-Real-IP: 6.6.6.6\r\n\r\n"
)


def _served_environ(c_path: bool, peer: tuple[str, int]) -> dict[str, Any]:
    """The environ (its str and bool values) the application got for FORWARDED_GET."""
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append({k: v for k, v in environ.items() if isinstance(v, (str, tuple, bool))})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def run() -> None:
        server = Server(app, c_path, peername=peer)
        server.conn.data_received(FORWARDED_GET)
        assert server.transport.out.startswith(b"HTTP/1.1 200 OK\r\n")

    asyncio.run(run())
    assert len(seen) == 1
    return seen[0]


def _expected(remote: tuple[str, str]) -> dict[str, Any]:
    from rapidwsgi import __version__

    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": f"rapidwsgi/{__version__}",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": remote[0],
        "REMOTE_PORT": remote[1],
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/who",
        "QUERY_STRING": "q=1",
        "RAW_URI": "/who?q=1",
        "REQUEST_URI": "/who?q=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "internal:8000",
        "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7",
        "HTTP_X_FORWARDED_PROTO": "https",
        "HTTP_X_FORWARDED_HOST": "www.example.com",
        "HTTP_X_REAL_IP": "6.6.6.6",
    }


@pytest.mark.parametrize("c_path", PATHS)
def test_a_trusted_peers_forwarding_fields_rewrite_the_environ(c_path: bool) -> None:
    # The default --forwarded-allow-ips trusts 127.0.0.1.
    expected = _expected(("203.0.113.7", ""))
    expected.update({"wsgi.url_scheme": "https", "HTTP_HOST": "www.example.com"})
    del expected["HTTP_X_REAL_IP"]  # not believed by default: cleared
    assert _served_environ(c_path, ("127.0.0.1", 50000)) == expected


@pytest.mark.parametrize("c_path", PATHS)
def test_an_untrusted_peers_forwarding_fields_stay_plain_headers(c_path: bool) -> None:
    assert _served_environ(c_path, ("198.51.100.7", 50000)) == _expected(("198.51.100.7", "50000"))


@in_loop
async def test_the_connection_copies_its_listeners_template() -> None:
    server = Server(lambda environ, start_response: [])
    ctx = server.ctx
    assert server.conn._environ_base == {
        **ctx.environ_template,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
    }
    assert ctx.tls_environ_template == {**ctx.environ_template, "wsgi.url_scheme": "https", "HTTPS": "on"}


@pytest.mark.parametrize("field", FORWARDING_NAMES)
@pytest.mark.parametrize("c_path", PATHS)
@in_loop
async def test_every_forwarding_field_reaches_stage_four_on_both_paths(c_path: bool, field: bytes) -> None:
    # The C parser's field table is its own: held here to events.FORWARDING_NAMES. Any
    # of them marks the peer as a proxy (_pooled) and, from a trusted peer, clears
    # what the default policy does not believe.
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(dict(environ))
        start_response("200 OK", [])
        return [b""]

    server = Server(app, c_path)
    server.conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.conn._pooled is False
    server.conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n" + field + b": for=10.9.8.7\r\n\r\n")
    assert server.conn._pooled is True
    key = "HTTP_" + field.decode().upper().replace("-", "_")
    assert key not in seen[0]
    believed = field in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
    assert (key in seen[1]) is believed
