"""Static files through a real server: raw bytes, curl, TLS, threads, nginx in front.

The semantics are pinned in ``tests/test_static.py``; here the same responses must come
out of every path a request can take (the C path, the Python path, an application
thread pool, TLS without sendfile, nginx ``proxy_pass`` and ``uwsgi_pass``) with exact
bytes, and the application must never see a request under a mount.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.nginx import Nginx, nginx_available
from tests.rawhttp import RawConnection, RawResponse, get, head

SMALL = b"small file\n" * 3  # 33 bytes
LARGE = os.urandom(3 * 1024 * 1024 + 17)  # sendfile (or buffered reads over TLS)
CSS = b"h1 { color: rgb(1, 2, 3) }\n"
MODES = {"inline": (), "threaded": ("--threads", "4")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static")
    (root / "small.txt").write_bytes(SMALL)
    (root / "large.bin").write_bytes(LARGE)
    (root / "app.css").write_bytes(CSS)
    (root / "app.css.gz").write_bytes(b"gz-variant")
    (root / ".env").write_bytes(b"SECRET=1\n")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_bytes(b"<p>docs</p>\n")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "passwd").write_bytes(b"root:x:0:0\n")
    (root / "escape").symlink_to(outside / "passwd")
    return root


class Servers:
    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.running: dict[tuple[str, ...], ServerProcess] = {}

    def get(self, *args: str) -> ServerProcess:
        server = self.running.get(args)
        if server is None or server.proc.poll() is not None:
            server = ServerProcess(
                "apps:echo",
                "--static",
                f"/static/={self.tree}",
                "--static",
                f"/assets/={self.tree}:immutable",
                "--static-index",
                *args,
            )
            self.running[args] = server
        return server

    def close(self) -> None:
        for server in self.running.values():
            server.stop(timeout=10)


@pytest.fixture(scope="module")
def servers(tree: Path) -> Iterator[Servers]:
    pool = Servers(tree)
    yield pool
    pool.close()


@pytest.fixture(params=sorted(MODES))
def server(request: pytest.FixtureRequest, servers: Servers) -> Iterator[ServerProcess]:
    server = servers.get(*MODES[request.param])
    mark = len(server.stderr)
    yield server
    assert server.proc.poll() is None, server.stderr[-3000:]
    new = server.stderr[mark:]
    assert "Traceback" not in new and "ERROR" not in new, new


def raw(server: ServerProcess, data: bytes, head: bool = False) -> RawResponse:
    with RawConnection(server.address) as conn:
        return conn.request(data, head=head)


def assert_common(response: RawResponse) -> None:
    assert response.header_count("date") == 1
    assert response.header("server") == "rapidwsgi"


def test_small_file_exact_response(server: ServerProcess, tree: Path) -> None:
    response = raw(server, get("/static/small.txt"))
    st = (tree / "small.txt").stat()
    names = [k.lower() for k, _ in response.headers]
    assert (response.status, response.body) == (200, SMALL)
    assert names == [
        "etag",
        "last-modified",
        "cache-control",
        "content-type",
        "accept-ranges",
        "date",
        "server",
        "content-length",
    ]
    assert response.header("etag") == f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    assert response.header("content-type") == "text/plain; charset=utf-8"
    assert response.header("content-length") == "33"
    assert response.header("cache-control") == "public, max-age=60"
    assert_common(response)


def test_large_file_and_its_ranges(server: ServerProcess) -> None:
    with RawConnection(server.address, timeout=20) as conn:
        whole = conn.request(get("/static/large.bin"))
        assert whole.status == 200
        assert whole.body == LARGE
        part = conn.request(get("/static/large.bin", headers="Range: bytes=1000000-2000000\r\n"))
        assert part.status == 206
        assert part.header("content-range") == f"bytes 1000000-2000000/{len(LARGE)}"
        assert part.body == LARGE[1000000:2000001]
        tail = conn.request(get("/static/large.bin", headers="Range: bytes=-5\r\n"))
        assert tail.body == LARGE[-5:]
        headed = conn.request(head("/static/large.bin"), head=True)
        assert (headed.status, headed.header("content-length")) == (200, str(len(LARGE)))
        # The connection is still in step after all of it.
        assert conn.request(get("/static/small.txt")).body == SMALL


def test_keep_alive_and_pipelining(server: ServerProcess) -> None:
    with RawConnection(server.address) as conn:
        conn.send(get("/static/small.txt") + get("/static/app.css") + get("/static/nope") + get("/hello"))
        responses = [conn.read_response() for _ in range(4)]
    assert [(r.status, r.body) for r in responses[:3]] == [
        (200, SMALL),
        (200, CSS),
        (404, b"404 Not Found\n"),
    ]
    assert json.loads(responses[3].body)["PATH_INFO"] == "/hello"  # outside the mounts: the app


def test_conditional_requests(server: ServerProcess) -> None:
    first = raw(server, get("/static/small.txt"))
    etag, last_modified = first.header("etag"), first.header("last-modified")
    with RawConnection(server.address) as conn:
        r1 = conn.request(get("/static/small.txt", headers=f"If-None-Match: {etag}\r\n"))
        r2 = conn.request(get("/static/small.txt", headers=f"If-Modified-Since: {last_modified}\r\n"))
        r3 = conn.request(get("/static/small.txt", headers='If-Match: "nope"\r\n'))
        r4 = conn.request(get("/static/small.txt"))
    assert (r1.status, r1.body, r1.header("content-length")) == (304, b"", None)
    assert r1.header("etag") == etag
    assert (r2.status, r2.body) == (304, b"")
    assert r3.status == 412
    assert r4.body == SMALL


def test_precompressed_and_vary(server: ServerProcess) -> None:
    gz = raw(server, get("/static/app.css", headers="Accept-Encoding: gzip, br\r\n"))
    assert (gz.body, gz.header("content-encoding"), gz.header("vary")) == (
        b"gz-variant",
        "gzip",
        "Accept-Encoding",
    )
    plain = raw(server, get("/static/app.css"))
    assert (plain.body, plain.header("content-encoding"), plain.header("vary")) == (
        CSS,
        None,
        "Accept-Encoding",
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/static/../small.txt", 404),
        ("/static/%2e%2e/small.txt", 404),
        ("/static/docs%2findex.html", 404),
        ("/static/docs%5cindex.html", 404),
        ("/static/small.txt%00", 404),
        ("/static/.env", 404),
        ("/static/%2eenv", 404),
        ("/static/escape", 404),
        ("/static/docs", 301),
        ("/static/docs/", 200),
        ("/static/", 404),
        ("/static//small.txt", 404),
    ],
)
def test_hostile_paths_never_reach_a_file_or_the_app(server: ServerProcess, path: str, status: int) -> None:
    response = raw(server, get(path))
    assert response.status == status
    if status == 404:
        assert response.body == b"404 Not Found\n"
    if status == 301:
        assert response.header("location") == "/static/docs/"


def test_other_methods_and_a_body_the_responder_does_not_read(server: ServerProcess) -> None:
    with RawConnection(server.address) as conn:
        post = conn.request(b"POST /static/small.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        options = conn.request(b"OPTIONS /static/small.txt HTTP/1.1\r\nHost: test\r\n\r\n")
        after = conn.request(get("/static/small.txt"))
    assert (post.status, post.header("allow")) == (405, "GET, HEAD, OPTIONS")
    assert (options.status, options.header("allow")) == (204, "GET, HEAD, OPTIONS")
    assert after.body == SMALL  # the unread POST body was drained, the connection kept


def test_immutable_mount(server: ServerProcess) -> None:
    response = raw(server, get("/assets/small.txt"))
    assert response.header("cache-control") == "public, max-age=31536000, immutable"


def test_the_application_never_sees_a_mounted_path(servers: Servers, tree: Path) -> None:
    # The app logs every path it is called with; none under /static/ may appear.
    server = servers.get("--access-logfile", "-", "--threads", "2")
    for path in ("/static/small.txt", "/static/nope", "/static/../x", "/hello"):
        raw(server, get(path))
    log = server.wait_for_log(r'"GET /hello HTTP/1.1" 200', stream="stdout")
    assert log is not None
    lines = [line for line in server.stdout.splitlines() if '"GET /' in line]
    assert [line.split('"')[1] for line in lines] == [
        "GET /static/small.txt HTTP/1.1",
        "GET /static/nope HTTP/1.1",
        "GET /static/../x HTTP/1.1",
        "GET /hello HTTP/1.1",
    ]
    assert [line.split('"')[2].split()[0] for line in lines] == ["200", "404", "404", "200"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl(server: ServerProcess, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{server.port}/static"
    out = tmp_path / "out"
    subprocess.run(["curl", "-sf", "-o", str(out), f"{url}/large.bin"], check=True, timeout=30)
    assert out.read_bytes() == LARGE
    subprocess.run(["curl", "-sf", "-r", "10-19", "-o", str(out), f"{url}/large.bin"], check=True, timeout=30)
    assert out.read_bytes() == LARGE[10:20]
    # --compressed asks for gzip (and br where curl has it) and decodes: the .gz beside it.
    headers = subprocess.run(
        ["curl", "-s", "-D", "-", "-o", "/dev/null", "-H", "Accept-Encoding: gzip", f"{url}/app.css"],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout.decode()
    assert "content-encoding: gzip" in headers.lower()
    code = subprocess.run(
        ["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/../tests/apps.py"],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    assert code == b"404"


# ---------------------------------------------------------------------- TLS (no sendfile)


@pytest.fixture(scope="module")
def tls_server(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    trustme = pytest.importorskip("trustme")
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(base / "cert.pem"))
    yield servers.get("--certfile", str(base / "cert.pem")), base / "ca.pem"


def test_large_file_over_tls(tls_server: tuple[ServerProcess, Path]) -> None:
    server, ca = tls_server
    context = ssl.create_default_context(cafile=str(ca))
    host, port = server.address  # type: ignore[misc]
    import http.client

    conn = http.client.HTTPSConnection(host, port, context=context, timeout=20)
    conn.request("GET", "/static/large.bin")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, LARGE)
    conn.request("GET", "/static/large.bin", headers={"Range": "bytes=5-1048580"})
    response = conn.getresponse()
    assert response.status == 206
    assert response.read() == LARGE[5:1048581]  # never more than the range (buffered reads)
    conn.request("GET", "/static/small.txt")
    assert conn.getresponse().read() == SMALL
    conn.close()


# ---------------------------------------------------------------------- behind nginx


@pytest.fixture(scope="module")
def nginx_front(
    tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Nginx, Nginx, ServerProcess, ServerProcess]]:
    if not nginx_available():
        if os.environ.get("RAPIDWSGI_REQUIRE_NGINX"):
            pytest.fail("nginx is required (RAPIDWSGI_REQUIRE_NGINX=1) but not installed")
        pytest.skip("nginx not installed")
    base = tmp_path_factory.mktemp("nginx-static")
    static = ("--static", f"/static/={tree}")
    http_server = ServerProcess(
        "apps:echo", *static, "--forwarded-allow-ips", "unix", bind=f"unix:{base}/h.sock"
    )
    uwsgi_server = ServerProcess("apps:echo", *static, "--protocol", "uwsgi", bind=f"unix:{base}/u.sock")
    proxy = Nginx(base / "proxy", "proxy", http_server.address)
    uwsgi = Nginx(base / "uwsgi", "uwsgi", uwsgi_server.address)
    yield proxy, uwsgi, http_server, uwsgi_server
    proxy.stop()
    uwsgi.stop()
    http_server.stop()
    uwsgi_server.stop()


@pytest.mark.parametrize("front", ["proxy", "uwsgi"])
def test_behind_nginx(nginx_front: tuple[Nginx, Nginx, ServerProcess, ServerProcess], front: str) -> None:
    nginx = nginx_front[0] if front == "proxy" else nginx_front[1]
    with RawConnection(nginx.address, timeout=20) as conn:
        small = conn.request(get("/static/small.txt"))
        assert (small.status, small.body) == (200, SMALL)
        assert small.header("etag") is not None
        not_modified = conn.request(
            get("/static/small.txt", headers=f"If-None-Match: {small.header('etag')}\r\n")
        )
        assert (not_modified.status, not_modified.body) == (304, b"")
        large = conn.request(get("/static/large.bin"))
        assert large.body == LARGE
        part = conn.request(get("/static/large.bin", headers="Range: bytes=7-9\r\n"))
        assert (part.status, part.body) == (206, LARGE[7:10])
        missing = conn.request(get("/static/.env"))
        assert missing.status == 404
        app = conn.request(get("/elsewhere"))
        assert json.loads(app.body)["PATH_INFO"] == "/elsewhere"


# ---------------------------------------------------------------------- starting up


def test_a_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    from rapidwsgi.errors import ExitCode

    missing = tmp_path / "nope"
    server = ServerProcess("apps:echo", "--static", f"/static/={missing}", wait=False)
    assert server.wait(timeout=15) == ExitCode.USAGE
    assert f"static mount '/static/={missing}': '{missing}' is not a directory" in server.stderr
    assert "Traceback" not in server.stderr


def test_a_relative_directory_is_relative_to_chdir(tmp_path: Path, tree: Path) -> None:
    server = ServerProcess(
        "apps:echo", "--chdir", str(tree.parent), "--static", f"/s/={tree.name}", cwd=tmp_path
    )
    try:
        assert raw(server, get("/s/small.txt")).body == SMALL
    finally:
        server.stop()
