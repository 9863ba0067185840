"""rapidwsgi behind a real nginx, in each of its three deployments (tests/nginx.py).

One suite, the same assertions for ``proxy`` (HTTP/1.1 proxy_pass over a unix socket,
upstream keep-alive, X-Forwarded-*), ``uwsgi`` (uwsgi_pass over a unix socket) and
``fastcgi`` (fastcgi_pass over TCP with fastcgi_keep_conn), each with the application
inline and on 4 threads. nginx and rapidwsgi are shared per module (one pair per mode
and dispatch); after every test both must still run and nginx's error log must not
complain about rapidwsgi (an invalid or truncated upstream reply).

In the proxy mode rapidwsgi trusts only its unix-socket peer (``--forwarded-allow-ips
unix``): the test client itself connects from 127.0.0.1, and a client at a trusted
address may legitimately speak for others, which would make the spoofing test moot.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, upstream_connections
from tests.frontclient import HOST, Load, assert_still_serving, environ_of, generations_serving, request
from tests.nginx import MODES, Nginx, require_nginx
from tests.rawhttp import RawConnectionExtras, get, wait_until

DISPATCH = {"inline": ("--threads", "1"), "threaded": ("--threads", "4")}
FIVE_MB = bytes(range(256)) * (5 * 1024 * 1024 // 256)


@dataclass
class Front:
    """nginx on 127.0.0.1 in ``mode`` in front of one rapidwsgi server."""

    mode: str
    server: ServerProcess
    nginx: Nginx

    @property
    def address(self) -> tuple[str, int]:
        return self.nginx.address


class FrontPool:
    """rapidwsgi servers and nginx instances shared by the tests of this module."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: dict[tuple[str, str], ServerProcess] = {}
        self.fronts: dict[tuple[str, str, bool], Front] = {}

    def server(self, mode: str, dispatch: str) -> ServerProcess:
        key = (mode, dispatch)
        server = self.servers.get(key)
        if server is not None and server.proc.poll() is None:
            return server
        sock = self.base / f"{mode}-{dispatch}-{time.monotonic_ns()}.sock"
        if mode == "proxy":
            server = ServerProcess(
                "apps:app", *DISPATCH[dispatch], "--forwarded-allow-ips", "unix", bind=f"unix:{sock}"
            )
        elif mode == "uwsgi":
            server = ServerProcess(
                "apps:app", *DISPATCH[dispatch], "--protocol", "uwsgi", bind=f"unix:{sock}"
            )
        else:
            server = ServerProcess(
                "apps:app", *DISPATCH[dispatch], "--protocol", "fastcgi", bind="127.0.0.1:0"
            )
        self.servers[key] = server
        return server

    def front(self, mode: str, dispatch: str, https: bool = False) -> Front:
        key = (mode, dispatch, https)
        front = self.fronts.get(key)
        server = self.server(mode, dispatch)
        proc = front.nginx.proc if front is not None else None
        if front is not None and front.server is server and proc is not None and proc.poll() is None:
            return front
        if front is not None:
            front.nginx.stop()
        name = f"nginx-{mode}-{dispatch}{'-https' if https else ''}-{time.monotonic_ns()}"
        front = Front(mode, server, Nginx(self.base / name, mode, server.address, https=https))
        self.fronts[key] = front
        return front

    def close(self) -> None:
        for front in self.fronts.values():
            front.nginx.stop()
        for server in self.servers.values():
            try:
                server.stop(timeout=10)
            except Exception:
                server.proc.kill()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontPool]:
    require_nginx()
    fronts = FrontPool(tmp_path_factory.mktemp("nginx"))
    yield fronts
    fronts.close()


@pytest.fixture(params=["inline", "threaded"])
def dispatch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def nginx_front(pool: FrontPool, mode: str, dispatch: str) -> Iterator[Front]:
    """rapidwsgi in ``mode`` (inline or 4 threads) with nginx in front; checked afterwards."""
    front = pool.front(mode, dispatch)
    log_mark = len(front.nginx.error_log)
    stderr_mark = len(front.server.stderr)
    yield front
    assert front.server.proc.poll() is None, f"rapidwsgi died:\n{front.server.stderr[-3000:]}"
    assert front.nginx.proc is not None and front.nginx.proc.poll() is None, "nginx died"
    new_errors = [
        line
        for line in front.nginx.error_log[log_mark:].splitlines()
        if any(m in line for m in ("upstream prematurely", "upstream sent", "invalid header", "[error]"))
        and "client prematurely closed" not in line
    ]
    assert not new_errors, "nginx complained about rapidwsgi:\n" + "\n".join(new_errors)
    new_stderr = front.server.stderr[stderr_mark:]
    assert "Traceback" not in new_stderr and "Bad request" not in new_stderr, new_stderr


# ---------------------------------------------------------------------- clients


def stats(front: Front) -> dict[str, int]:
    status, _, data = request(front, "GET", "/stats")
    assert status == 200
    doc: dict[str, int] = json.loads(data)
    return doc


# ---------------------------------------------------------------------- the request


def test_query_string_and_path_info_reach_the_app_as_the_client_sent_them(nginx_front: Front) -> None:
    environ = environ_of(nginx_front, "/echo/some/where?a=1&b=%20two&c=%2F")
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["PATH_INFO"] == "/echo/some/where"
    assert environ["QUERY_STRING"] == "a=1&b=%20two&c=%2F"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["body_length"] == 0


def test_percent_encoded_utf8_path_reaches_path_info_as_latin1_of_the_utf8_bytes(
    nginx_front: Front,
) -> None:
    environ = environ_of(nginx_front, "/echo/%E2%98%83/caf%C3%A9")
    assert environ["PATH_INFO"] == "/echo/\u2603/caf\u00e9".encode().decode("latin-1")
    assert environ["RAW_URI"] == "/echo/%E2%98%83/caf%C3%A9"


def test_repeated_request_headers_are_joined(nginx_front: Front) -> None:
    headers = [("X-Multi", "one"), ("X-Multi", "two"), ("Cookie", "a=1"), ("Cookie", "b=2")]
    environ = environ_of(nginx_front, "/echo", headers)
    assert environ["HTTP_X_MULTI"] == "one, two"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"


def test_remote_addr_is_the_client_and_a_spoofed_x_forwarded_for_does_not_replace_it(
    nginx_front: Front,
) -> None:
    environ = environ_of(nginx_front, "/echo", [("X-Forwarded-For", "6.6.6.6")])
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert "6.6.6.6" in environ["HTTP_X_FORWARDED_FOR"]  # still visible, as a plain header


LIES = {
    "Forwarded": [("Forwarded", "for=6.6.6.6;proto=https;host=evil.example")],
    "X-Forwarded-For": [("X-Forwarded-For", "6.6.6.6")],
    "X-Forwarded-Proto": [("X-Forwarded-Proto", "https")],
    "X-Forwarded-Host": [("X-Forwarded-Host", "evil.example")],
    "X-Real-IP": [("X-Real-IP", "6.6.6.6")],
    "all": [
        ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "6.6.6.6"),
    ],
}


@pytest.mark.parametrize("lie", LIES)
def test_a_lying_client_changes_neither_remote_addr_nor_scheme_nor_host(nginx_front: Front, lie: str) -> None:
    environ = environ_of(nginx_front, "/echo", LIES[lie])
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == HOST
    if nginx_front.mode == "proxy":
        # nginx passes these through; from the trusted proxy they are removed, since
        # deploy/nginx/proxy.conf does not set them (--clear-untrusted-proxy-headers).
        assert "HTTP_FORWARDED" not in environ and "HTTP_X_REAL_IP" not in environ
        # The headers nginx does set carry its own values, right-most.
        if lie in ("X-Forwarded-Proto", "all"):
            assert environ["HTTP_X_FORWARDED_PROTO"] == "http"
        if lie in ("X-Forwarded-Host", "all"):
            assert environ["HTTP_X_FORWARDED_HOST"] == HOST


def test_url_scheme_is_http_and_http_host_is_the_host_the_client_sent(nginx_front: Front) -> None:
    environ = environ_of(nginx_front, "/echo")
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == HOST


@pytest.mark.parametrize("https_mode", MODES)
def test_https_told_by_nginx_sets_url_scheme_https(pool: FrontPool, https_mode: str) -> None:
    front = pool.front(https_mode, "inline", https=True)
    environ = environ_of(front, "/echo")
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == HOST
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


# ---------------------------------------------------------------------- request bodies


def test_five_megabyte_body_with_content_length_reaches_the_app_intact(nginx_front: Front) -> None:
    status, _, data = request(nginx_front, "POST", "/digest", body=FIVE_MB)
    assert status == 200
    assert json.loads(data) == {"length": len(FIVE_MB), "sha256": hashlib.sha256(FIVE_MB).hexdigest()}


def test_five_megabyte_body_sent_chunked_by_the_client_reaches_the_app_intact(nginx_front: Front) -> None:
    pieces = (FIVE_MB[i : i + 100_003] for i in range(0, len(FIVE_MB), 100_003))
    status, _, data = request(nginx_front, "POST", "/digest", body=pieces, chunked=True)
    assert status == 200
    assert json.loads(data) == {"length": len(FIVE_MB), "sha256": hashlib.sha256(FIVE_MB).hexdigest()}


def test_client_sending_expect_100_continue_gets_continue_then_its_response(nginx_front: Front) -> None:
    body = b"expected body"
    with RawConnectionExtras(nginx_front.address) as conn:
        conn.send(
            f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        interim = conn.read_head()
        assert interim.status == 100
        conn.send(body)
        response = conn.read_response()
        assert response.status == 200
        assert json.loads(response.body)["body"] == "expected body"


def test_body_the_app_never_reads_still_gets_the_response_and_the_next_request_works(
    nginx_front: Front,
) -> None:
    status, _, data = request(nginx_front, "POST", "/noread", body=FIVE_MB)
    assert (status, data) == (200, b"noread")
    assert_still_serving(nginx_front)


URLENCODED = "application/x-www-form-urlencoded"


def test_urlencoded_form_is_parsed_by_django_with_the_exact_content_type(nginx_front: Front) -> None:
    # nginx's stock uwsgi_params/fastcgi_params send CONTENT_TYPE and HTTP_CONTENT_TYPE:
    # once they were joined ("a, a") and Django's request.POST came out empty.
    body = b"name=caf%C3%A9&tags=a&tags=b+c&empty="
    status, _, data = request(
        nginx_front, "POST", "/django-form", headers=[("Content-Type", URLENCODED)], body=body
    )
    assert status == 200, data[:300]
    doc = json.loads(data)
    assert doc["CONTENT_TYPE"] == URLENCODED
    assert doc["CONTENT_LENGTH"] == str(len(body))
    assert doc["POST"] == {"name": ["caf\u00e9"], "tags": ["a", "b c"], "empty": [""]}
    assert doc["FILES"] == {}


def test_multipart_form_is_parsed_by_django_with_the_exact_content_type(nginx_front: Front) -> None:
    boundary = "----rapidwsgiNginxBoundary"
    upload = bytes((i * 7) % 256 for i in range(100_003))
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nsnow\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="d.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + upload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f"multipart/form-data; boundary={boundary}"
    status, _, data = request(
        nginx_front, "POST", "/django-form", headers=[("Content-Type", content_type)], body=body
    )
    assert status == 200, data[:300]
    doc = json.loads(data)
    assert doc["CONTENT_TYPE"] == content_type
    assert doc["POST"] == {"title": ["snow"]}
    assert doc["FILES"] == {
        "upload": [
            {
                "name": "d.bin",
                "size": len(upload),
                "content_type": "application/octet-stream",
                "sha256": hashlib.sha256(upload).hexdigest(),
            }
        ]
    }


# ---------------------------------------------------------------------- responses


def test_streamed_response_arrives_complete(nginx_front: Front) -> None:
    status, _, data = request(nginx_front, "GET", "/stream?n=200&size=1000")
    assert status == 200
    assert data == b"".join(bytes([65 + i % 26]) * 1000 for i in range(200))


def test_head_request_gets_the_headers_and_no_body(nginx_front: Front) -> None:
    with RawConnectionExtras(nginx_front.address) as conn:
        response = conn.request(f"HEAD /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), head=True)
        assert response.status == 200
        assert response.header("content-type") == "text/plain"
        assert response.header("content-length") == "13"
        # No body followed the head: the next response on the connection parses cleanly.
        following = conn.request(get("/hello", host=HOST))
        assert (following.status, following.body) == (200, b"Hello, world!")


def test_twenty_megabyte_response_arrives_complete(nginx_front: Front) -> None:
    status, _, data = request(nginx_front, "GET", "/big?size=20000000")
    assert status == 200
    assert len(data) == 20_000_000
    assert data.count(b"x") == 20_000_000


# ---------------------------------------------------------------------- disconnects, reuse


def test_client_aborting_mid_response_gets_the_iterable_closed_and_server_keeps_serving(
    nginx_front: Front,
) -> None:
    before = stats(nginx_front)
    polls = 0

    def app_started() -> bool:
        # Every /stats poll is itself a request: the count beyond the polls is /slow-stream.
        nonlocal polls
        polls += 1
        return stats(nginx_front)["requests"] - polls > before["requests"]

    sock = socket.create_connection(nginx_front.address, timeout=10)
    try:
        sock.sendall(f"GET /slow-stream HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        # The application is now streaming (nginx may hold the first bytes in its
        # buffers: uwsgi's close-delimited body is only passed on in full buffers).
        assert wait_until(app_started, timeout=10, interval=0.05)
    finally:
        # An abortive close (RST): nginx sees the client gone at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert wait_until(lambda: stats(nginx_front)["closed"] > before["closed"], timeout=15, interval=0.2), (
        "the application's iterable was not closed after the client went away"
    )
    assert_still_serving(nginx_front)


@pytest.mark.parametrize("keepalive_mode", ["proxy", "fastcgi"])
def test_sequential_requests_reuse_one_upstream_connection(pool: FrontPool, keepalive_mode: str) -> None:
    front = pool.front(keepalive_mode, "inline")
    seen: list[set[int]] = []
    for _ in range(20):
        assert_still_serving(front)
        seen.append(upstream_connections(front.server))
    # Earlier tests on this shared front may have left more than one idle connection in
    # nginx's keepalive pool; what matters is that no request needed a new one.
    first = seen[0]
    assert first, "no upstream connection is held open"
    assert all(held == first for held in seen), seen
    assert len(first) <= 2, f"nginx holds {len(first)} upstream connections for sequential requests"


# ---------------------------------------------------------------------- reloads


def test_three_sighups_under_load_through_nginx_fail_no_request(pool: FrontPool, mode: str) -> None:
    # The same bounded load as behind the other front-ends (tests/test_frontends.py):
    # every response 200 with the right body while the worker is replaced three times.
    front = pool.front(mode, "inline")
    server = front.server
    with Load(front) as load:
        load.wait_for(50)
        for _ in range(3):
            before = generations_serving(server)
            server.signal(signal.SIGHUP)
            reloaded = wait_until(lambda n=before: generations_serving(server) > n, timeout=30)
            assert reloaded, server.stderr[-2000:]
            load.wait_for(load.ok + 100)
    assert load.failures == [], load.failures[:10]
    assert load.ok >= 300
    assert wait_until(lambda: len(server.worker_pids) == 1, timeout=10)
    assert_still_serving(front)
