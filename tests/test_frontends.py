"""rapidwsgi behind real Apache httpd, HAProxy, Caddy and lighttpd (tests/frontends.py).

Every mode in :data:`tests.frontends.MODES` runs the configuration shipped in
``deploy/<front-end>/`` in front of one rapidwsgi master with two workers, shared by the
tests of this module (one pair per mode, plus a few with ``--root-path`` or
``--threads 4``). After every test both processes must still run, the front-end's logs
must not complain about rapidwsgi (no bad or missing upstream reply) and rapidwsgi must
not have logged a traceback or a bad request.

The HTTP modes reach rapidwsgi over a unix socket and rapidwsgi trusts only that peer
(``--forwarded-allow-ips unix``): the test client itself connects from 127.0.0.1, and a
trusted address may legitimately speak for others, which would make the lying-client
tests moot. The gateway modes (uwsgi, FastCGI) and HAProxy's PROXY protocol mode keep
the defaults (127.0.0.1 trusted).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, upstream_connections
from tests.frontclient import (
    HOST,
    Load,
    assert_still_serving,
    environ_of,
    generations_serving,
    json_request,
    request,
    send,
)
from tests.frontends import MODES, MODES_BY_ID, Frontend, Mode, require_frontend, start_frontend
from tests.rawhttp import RawConnectionExtras, wait_until

FIVE_MB = bytes(range(256)) * (5 * 1024 * 1024 // 256)
MODE_IDS = [mode.id for mode in MODES]
GATEWAY_IDS = [mode.id for mode in MODES if mode.gateway and mode.id != "apache-fcgi-unix"]


@dataclass
class Front:
    """A front-end in ``mode`` in front of one rapidwsgi server."""

    mode: Mode
    server: ServerProcess
    frontend: Frontend
    log_mark: dict[Path, int] = field(default_factory=dict)

    def forget_log(self) -> None:
        """What the front-end logged so far is expected (a refusal the test asserts)."""
        self.log_mark = self.frontend.log_mark()

    @property
    def address(self) -> tuple[str, int]:
        return self.frontend.address


@dataclass
class FrontPool:
    """rapidwsgi servers and front-ends shared by the tests of this module."""

    base: Path
    fronts: dict[tuple[str, str], Front] = field(default_factory=dict)

    def front(self, mode_id: str, variant: str = "") -> Front:
        """``variant``: "" (inline), "threaded" (--threads 4) or "mount" (--root-path /app)."""
        mode = MODES_BY_ID[mode_id]
        require_frontend(mode.frontend)
        key = (mode_id, variant)
        front = self.fronts.get(key)
        if front is not None and front.server.proc.poll() is None and front.frontend.running():
            return front
        if front is not None:
            self._stop(front)
        name = f"{mode_id}{'-' + variant if variant else ''}-{time.monotonic_ns() % 10**9}"
        args = ["--workers", "2", "--protocol", mode.protocol, *mode.server_args]
        if variant == "threaded":
            args += ["--threads", "4"]
        if variant == "mount":
            args += ["--root-path", "/app"]
        bind = f"unix:{self.base / name}.sock" if mode.transport == "unix" else "127.0.0.1:0"
        server = ServerProcess("apps:app", *args, bind=bind)
        try:
            frontend = start_frontend(
                self.base / name, mode, server.address, mount="/app" if variant == "mount" else ""
            )
        except BaseException:
            server.stop(timeout=10)
            raise
        front = Front(mode, server, frontend)
        self.fronts[key] = front
        return front

    @staticmethod
    def _stop(front: Front) -> None:
        front.frontend.stop()
        try:
            front.server.stop(timeout=10)
        except Exception:
            front.server.proc.kill()

    def close(self) -> None:
        """Every front-end first, then every server at once (each drains in parallel)."""
        for front in self.fronts.values():
            front.frontend.stop()
        for front in self.fronts.values():
            front.server.signal(signal.SIGTERM)
        for front in self.fronts.values():
            try:
                front.server.wait(timeout=15)
            except Exception:
                front.server.proc.kill()
                front.server.proc.wait()


@pytest.fixture(scope="module")
def pool() -> Iterator[FrontPool]:
    # Not pytest's tmp_path: Apache's children (www-data) must reach the unix sockets.
    base = Path(tempfile.mkdtemp(prefix="rwfe-", dir="/tmp"))
    base.chmod(0o755)
    fronts = FrontPool(base)
    yield fronts
    fronts.close()
    import shutil

    shutil.rmtree(base, ignore_errors=True)


def checked(front: Front) -> Iterator[Front]:
    """Yields ``front``; then both processes still run and nothing complained."""
    front.forget_log()
    stderr_mark = len(front.server.stderr)
    yield front
    assert front.server.proc.poll() is None, f"rapidwsgi died:\n{front.server.stderr[-3000:]}"
    assert front.frontend.running(), f"{front.mode.frontend} died:\n{front.frontend.log[-3000:]}"
    complaints = front.frontend.complaints_since(front.log_mark)
    assert not complaints, f"{front.mode.frontend} complained about rapidwsgi:\n" + "\n".join(complaints)
    new_stderr = front.server.stderr[stderr_mark:]
    assert "Traceback" not in new_stderr and "Bad request" not in new_stderr, new_stderr


@pytest.fixture(params=MODE_IDS)
def fe(pool: FrontPool, request: pytest.FixtureRequest) -> Iterator[Front]:
    """rapidwsgi (2 workers, inline) behind the front-end of one mode; checked afterwards."""
    yield from checked(pool.front(str(request.param)))


# ---------------------------------------------------------------------- clients


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- the request


# The gateways that send CONTENT_LENGTH=0 for a GET without any body.
GET_CL_ADDED = {"haproxy-fcgi", "caddy-fcgi", "lighttpd-fcgi"}


def test_get_reaches_the_app_with_the_exact_cgi_environ(fe: Front) -> None:
    target = "/echo/some/where?a=1&b=%20two&c=%2F"
    environ = environ_of(fe, target)
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/echo/some/where"
    assert environ["QUERY_STRING"] == "a=1&b=%20two&c=%2F"
    assert environ["RAW_URI"] == target
    assert environ["REQUEST_URI"] == target
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == HOST
    # A request without a body: no CONTENT_TYPE, and CONTENT_LENGTH only where the
    # front-end adds one ("0") itself.
    if fe.mode.id in GET_CL_ADDED:
        assert environ["CONTENT_LENGTH"] == "0"
    else:
        assert "CONTENT_LENGTH" not in environ
    assert "CONTENT_TYPE" not in environ
    assert environ["body_length"] == 0


# What each front-end does with a client's "Content-Length: 0" on a GET: passed on (the
# environ keeps CONTENT_LENGTH "0") or dropped (no CONTENT_LENGTH key).
GET_CL0_KEPT = {
    "apache-http": True,
    "apache-uwsgi": True,
    "apache-fcgi": True,
    "apache-fcgi-unix": True,
    "haproxy-http": True,
    "haproxy-http-close": True,
    "haproxy-proxy-v2": True,
    "haproxy-fcgi": True,
    "caddy-http": False,  # Go's HTTP client drops a zero Content-Length on a GET
    "caddy-fcgi": True,
    "lighttpd-fcgi": True,
    "lighttpd-http": True,
}


def test_get_with_content_length_zero_keeps_it_exactly_as_the_front_end_passes_it(fe: Front) -> None:
    environ = environ_of(fe, "/echo", [("Content-Length", "0")])
    if GET_CL0_KEPT[fe.mode.id]:
        assert environ["CONTENT_LENGTH"] == "0"
    else:
        assert "CONTENT_LENGTH" not in environ
    assert "CONTENT_TYPE" not in environ
    assert environ["body_length"] == 0


def test_percent_encoded_utf8_path_reaches_path_info_as_latin1_of_the_utf8_bytes(fe: Front) -> None:
    environ = environ_of(fe, "/echo/%E2%98%83/caf%C3%A9")
    assert environ["PATH_INFO"] == "/echo/\u2603/caf\u00e9".encode().decode("latin-1")
    assert environ["RAW_URI"] == "/echo/%E2%98%83/caf%C3%A9"
    assert environ["SCRIPT_NAME"] == ""


@pytest.mark.parametrize("path", ["/echo/admin/", "/echo/"])
def test_path_with_a_trailing_slash_is_all_path_info(fe: Front, path: str) -> None:
    # Django's URLs end in "/"; Apache and HAProxy send them whole as SCRIPT_NAME.
    environ = environ_of(fe, path)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", path)


# ---------------------------------------------------------------------- a lying client

LIES = {
    "forwarded": [("Forwarded", "for=6.6.6.6;proto=https;host=evil.example")],
    "x-forwarded-for": [("X-Forwarded-For", "6.6.6.6")],
    "x-forwarded-proto": [("X-Forwarded-Proto", "https")],
    "x-forwarded-host": [("X-Forwarded-Host", "evil.example")],
    "x-real-ip": [("X-Real-IP", "6.6.6.6")],
}
LIES["all"] = [header for lie in list(LIES.values()) for header in lie]


@pytest.mark.parametrize("lie", list(LIES))
def test_a_client_lying_about_who_it_is_changes_neither_address_scheme_nor_host(fe: Front, lie: str) -> None:
    environ = environ_of(fe, "/echo", LIES[lie])
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == HOST
    assert "HTTPS" not in environ
    if not fe.mode.gateway:
        # The shipped configs remove what the front-end does not set itself.
        assert "HTTP_FORWARDED" not in environ
        assert "HTTP_X_REAL_IP" not in environ


def test_proxy_protocol_gives_the_client_address_and_port(pool: FrontPool) -> None:
    for front in checked(pool.front("haproxy-proxy-v2")):
        with socket.create_connection(front.address, timeout=10) as sock:
            port = sock.getsockname()[1]
            sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        environ = json.loads(body)
        assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("127.0.0.1", str(port))
        assert "HTTP_X_FORWARDED_FOR" not in environ  # the config removes it: PROXY says it


# ---------------------------------------------------------------------- request bodies


def test_five_megabyte_body_with_content_length_reaches_the_app_intact(fe: Front) -> None:
    doc = json_request(fe, "POST", "/digest", body=FIVE_MB)
    assert doc == {"length": len(FIVE_MB), "sha256": sha(FIVE_MB)}


# Front-ends that refuse a chunked request body in a mode (their own answer).
CHUNKED_REFUSED = {
    "apache-uwsgi": 411,  # mod_proxy_uwsgi: "POST requires a valid Content-length"
    "haproxy-fcgi": 400,  # HAProxy 2.6 fcgi-app: a body of unknown length beyond its buffer
}


def test_five_megabyte_body_sent_chunked_by_the_client_reaches_the_app_intact(fe: Front) -> None:
    pieces = (FIVE_MB[i : i + 100_003] for i in range(0, len(FIVE_MB), 100_003))
    refused = CHUNKED_REFUSED.get(fe.mode.id)
    if refused is not None:
        # The front-end answers itself, before the body is sent (HAProxy may close).
        try:
            status, _, _ = request(fe, "POST", "/digest", body=pieces, chunked=True)
        except (BrokenPipeError, ConnectionResetError):
            conn = RawConnectionExtras(fe.address)
            conn.send(f"POST /digest HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            with contextlib.suppress(OSError):
                conn.send(b"%x\r\n%b\r\n" % (len(FIVE_MB), FIVE_MB))
            status = conn.read_response().status
            conn.close()
        assert status == refused
        fe.forget_log()
        assert_still_serving(fe)
        return
    status, _, data = request(fe, "POST", "/digest", body=pieces, chunked=True)
    assert status == 200, data[:500]
    assert json.loads(data) == {"length": len(FIVE_MB), "sha256": sha(FIVE_MB)}


def test_small_post_reaches_the_app_with_its_content_type_and_length(fe: Front) -> None:
    body = b'{"k": "v"}'
    doc = json_request(fe, "POST", "/echo", headers=[("Content-Type", "application/json")], body=body)
    assert doc["CONTENT_TYPE"] == "application/json"
    assert doc["CONTENT_LENGTH"] == str(len(body))
    assert doc["body"] == body.decode()
    assert "HTTP_CONTENT_TYPE" not in doc and "HTTP_CONTENT_LENGTH" not in doc


URLENCODED = "application/x-www-form-urlencoded"


def test_urlencoded_form_is_parsed_by_django_with_the_exact_content_type(fe: Front) -> None:
    body = b"name=caf%C3%A9&tags=a&tags=b+c&empty="
    doc = json_request(fe, "POST", "/django-form", headers=[("Content-Type", URLENCODED)], body=body)
    assert doc["CONTENT_TYPE"] == URLENCODED
    assert doc["CONTENT_LENGTH"] == str(len(body))
    assert doc["POST"] == {"name": ["caf\u00e9"], "tags": ["a", "b c"], "empty": [""]}
    assert doc["FILES"] == {}


BOUNDARY = "----rapidwsgiFormBoundary7MA4YWxkTrZu0gW"
UPLOAD = bytes((i * 7) % 256 for i in range(300_001))


def multipart_body() -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="title"\r\n\r\n'.encode()
        + "snow \u2603".encode()
        + b"\r\n",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="tags"\r\n\r\nx\r\n'.encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="tags"\r\n\r\ny\r\n'.encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="upload"; filename="data.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + UPLOAD
        + b"\r\n",
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def test_multipart_form_is_parsed_by_django_with_the_exact_content_type(fe: Front) -> None:
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    body = multipart_body()
    doc = json_request(fe, "POST", "/django-form", headers=[("Content-Type", content_type)], body=body)
    assert doc["CONTENT_TYPE"] == content_type
    assert doc["CONTENT_LENGTH"] == str(len(body))
    assert doc["POST"] == {"title": ["snow \u2603"], "tags": ["x", "y"]}
    assert doc["FILES"] == {
        "upload": [
            {
                "name": "data.bin",
                "size": len(UPLOAD),
                "content_type": "application/octet-stream",
                "sha256": sha(UPLOAD),
            }
        ]
    }


# ---------------------------------------------------------------------- responses


def test_twenty_megabyte_response_arrives_complete(fe: Front) -> None:
    status, _, data = request(fe, "GET", "/big?size=20000000")
    assert status == 200
    assert len(data) == 20_000_000
    assert sha(data) == sha(b"x" * 20_000_000)


def test_file_wrapper_response_arrives_complete(fe: Front) -> None:
    size = 3_000_017
    status, _, data = request(fe, "GET", f"/file?size={size}")
    assert status == 200
    assert len(data) == size
    assert sha(data) == sha(bytes(i % 251 for i in range(size)))


def test_streamed_response_arrives_complete(fe: Front) -> None:
    status, _, data = request(fe, "GET", "/stream?n=200&size=1000&delay=0.001")
    assert status == 200
    assert data == b"".join(bytes([65 + i % 26]) * 1000 for i in range(200))


def test_head_gets_the_headers_and_no_body_and_the_connection_stays_usable(fe: Front) -> None:
    with RawConnectionExtras(fe.address) as conn:
        response = conn.request(f"HEAD /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), head=True)
        assert response.status == 200
        assert response.header("content-type") == "text/plain"
        # Apache's mod_proxy_fcgi drops the Content-Length of a HEAD response.
        expected_length = None if fe.mode.id.startswith("apache-fcgi") else "13"
        assert response.header("content-length") == expected_length
        # No body followed the head: the next response on the connection parses cleanly.
        following = conn.request(f"GET /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        assert (following.status, following.body) == (200, b"Hello, world!")


# ---------------------------------------------------------------------- connections


def test_sequential_requests_reuse_upstream_connections_where_the_mode_keeps_them(fe: Front) -> None:
    seen: list[set[int]] = []
    conn = http.client.HTTPConnection(*fe.address, timeout=10)
    try:
        for _ in range(20):  # on one client connection (HAProxy reuses per client session)
            assert send(conn, "GET", "/hello")[::2] == (200, b"Hello, world!")
            seen.append(upstream_connections(fe.server))
    finally:
        conn.close()
    if fe.mode.reuses:
        # Earlier tests on this shared front may have left a few idle connections in its
        # pool; what matters is that 20 requests did not need 20 connections.
        # rapidwsgi's --keep-alive (5 s) may close idle connections earlier tests left in
        # the pool while the loop runs (seen once with HAProxy fcgi-app: one snapshot
        # empty, then one new connection held for the rest).
        assert sum(1 for held in seen if held) >= 18, f"no upstream connection is held open: {seen}"
        # Reused: 20 sequential requests opened (almost) no new connection. HAProxy with
        # send-proxy-v2 binds a server connection to one client session and still opened
        # a new one now and then (up to 3 in 20 requests, in a full run of this module).
        new = set().union(*seen[1:]) - seen[0]
        assert len(seen[0]) <= 4 and len(new) <= (5 if fe.mode.id == "haproxy-proxy-v2" else 1), seen
    else:
        # One connection per request: closed once the response is complete.
        assert wait_until(lambda: not upstream_connections(fe.server), timeout=5), upstream_connections(
            fe.server
        )


@pytest.mark.parametrize("mode_id", GATEWAY_IDS)
def test_app_mounted_under_a_prefix_gets_it_as_script_name(pool: FrontPool, mode_id: str) -> None:
    for front in checked(pool.front(mode_id, "mount")):
        environ = environ_of(front, "/app/echo/x?y=1")
        assert environ["SCRIPT_NAME"] == "/app"
        assert environ["PATH_INFO"] == "/echo/x"
        assert environ["QUERY_STRING"] == "y=1"
        assert environ["REQUEST_URI"] == "/app/echo/x?y=1"


# ---------------------------------------------------------------------- threaded subset

THREADED_IDS = ["apache-http", "apache-fcgi", "haproxy-http", "caddy-fcgi", "lighttpd-fcgi"]


@pytest.mark.parametrize("mode_id", THREADED_IDS)
def test_threaded_app_gets_chunked_uploads_and_forms_intact(pool: FrontPool, mode_id: str) -> None:
    for front in checked(pool.front(mode_id, "threaded")):
        pieces = (FIVE_MB[i : i + 100_003] for i in range(0, len(FIVE_MB), 100_003))
        status, _, data = request(front, "POST", "/digest", body=pieces, chunked=True)
        assert (status, json.loads(data)) == (200, {"length": len(FIVE_MB), "sha256": sha(FIVE_MB)})
        body = b"name=caf%C3%A9&tags=a&tags=b+c"
        doc = json_request(front, "POST", "/django-form", headers=[("Content-Type", URLENCODED)], body=body)
        assert (doc["CONTENT_TYPE"], doc["POST"]) == (
            URLENCODED,
            {"name": ["caf\u00e9"], "tags": ["a", "b c"]},
        )


# ---------------------------------------------------------------------- reloads


def test_three_sighups_under_load_through_the_front_end_fail_no_request(fe: Front) -> None:
    # Behind the front-ends that reuse idle connections and do not retry (Apache
    # mod_proxy_fcgi enablereuse, HAProxy fcgi-app keep-conn and send-proxy-v2), an old
    # worker closing an idle pooled connection under a request failed it (issue 9, bug 8).
    server = fe.server
    with Load(fe) as load:
        load.wait_for(50)
        for _ in range(3):
            before = generations_serving(server)
            server.signal(signal.SIGHUP)
            reloaded = functools.partial(lambda n: generations_serving(server) > n, before)
            assert wait_until(reloaded, timeout=30), server.stderr[-2000:]
            load.wait_for(load.ok + 100)
    assert load.failures == [], load.failures[:10]
    assert load.ok >= 300
    assert wait_until(lambda: len(server.worker_pids) == 2, timeout=10)
    assert_still_serving(fe)
