"""Static files (``--static``): resolution, conditional and range semantics, variants.

The responder (``rapidwsgi.static.StaticFiles``) is tested here directly with exact
environs and exact expected headers; ``tests/test_static_server.py`` sends the same
kinds of requests through a real server (and nginx, TLS, threads).
"""

from __future__ import annotations

import email.utils
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rapidwsgi import static as static_mod
from rapidwsgi.errors import ConfigError
from rapidwsgi.static import (
    IMMUTABLE_MAX_AGE,
    File,
    Missing,
    Redirect,
    StaticFiles,
    accepted_codings,
    content_type,
    parse_date,
    parse_etags,
    parse_mount,
    parse_range,
    validate_mounts,
)

HELLO = b"hello world\n"
CSS = b"body { color: red }\n" * 10
MTIME = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
MTIME_HTTP = "Tue, 14 Nov 2023 22:13:20 GMT"


def _write(path: Path, data: bytes, mtime: int = MTIME) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    _write(root / "hello.txt", HELLO)
    _write(root / "app.css", CSS)
    _write(root / "app.css.br", b"BROTLI-BYTES")
    _write(root / "app.css.gz", b"GZIP-BYTES!")
    _write(root / "only.js", b"x=1\n")
    _write(root / "only.js.gz", b"GZ")
    _write(root / "data.bin", bytes(range(256)) * 1200)  # 307200 bytes: beyond SMALL_FILE
    _write(root / "empty.txt", b"")
    _write(root / ".secret", b"hidden\n")
    (root / ".hidden").mkdir()
    _write(root / ".hidden" / "x.txt", b"x\n")
    (root / "sub").mkdir()
    _write(root / "sub" / "index.html", b"<h1>sub</h1>\n")
    (root / "emptydir").mkdir()
    _write(root / "sp ace.txt", b"space\n")
    _write(root / "\u00fcn\u00ef.txt".encode().decode("utf-8"), b"utf8\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    _write(outside / "secret.txt", b"outside\n")
    (root / "link_in").symlink_to(root / "hello.txt")
    (root / "link_out").symlink_to(outside / "secret.txt")
    (root / "dir_out").symlink_to(outside)
    os.mkfifo(root / "fifo")
    return root


def make(root: Path, **kwargs: Any) -> StaticFiles:
    spec = kwargs.pop("spec", f"/static/={root}")
    mount = parse_mount(spec, kwargs.pop("max_age", 60))
    return StaticFiles([mount], **kwargs)


def environ_for(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> dict[str, Any]:
    raw_path = path.partition("?")[0]
    return {
        "REQUEST_METHOD": method,
        # As the server builds it (wsgi.build_environ): percent-decoded, bytes as latin-1.
        "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
        "RAW_URI": path,
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in (headers or {}).items()},
    }


class Reply:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.code = int(status.split(maxsplit=1)[0])

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} repeated: {values}"
        return values[0] if values else None

    @property
    def names(self) -> list[str]:
        return [k for k, _ in self.headers]


NO_DATE: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")


def call(sf: StaticFiles, path: str, method: str = "GET", **headers: str) -> Reply:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    response, result = sf.respond(environ_for(path, method, hdrs), NO_DATE)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    lines = response.headers.decode("latin-1").split("\r\n")
    assert lines[-1] == ""
    fields = [tuple(line.split(": ", 1)) for line in lines[:-1]]
    if response.content_length is not None:
        fields.append(("Content-Length", str(response.content_length)))
        if method == "GET" or response.status >= 400:
            assert len(body) == response.content_length
    reply = Reply(response.status_line.decode(), fields, body)  # type: ignore[arg-type]
    assert reply.code == response.status
    return reply


def etag_of(path: Path, suffix: str = "") -> str:
    st = path.stat()
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}{suffix}"'


# ---------------------------------------------------------------------- path resolution

# (raw request path, expected status). PATH_INFO is decoded as the server decodes it.
HOSTILE = [
    ("/static/hello.txt", 200),
    ("/static/../hello.txt", 404),
    ("/static/sub/../hello.txt", 404),
    ("/static/%2e%2e/hello.txt", 404),
    ("/static/%2E%2E/%2E%2E/etc/passwd", 404),
    ("/static/.%2e/hello.txt", 404),
    ("/static/./hello.txt", 404),
    ("/static//hello.txt", 404),
    ("/static/sub%2findex.html", 404),
    ("/static/sub%2Findex.html", 404),
    ("/static/sub%5cindex.html", 404),
    ("/static/sub\\index.html", 404),
    ("/static/..\\hello.txt", 404),
    ("/static/hello.txt%00.png", 404),
    ("/static/%00", 404),
    ("/static/.secret", 404),
    ("/static/%2esecret", 404),
    ("/static/.hidden/x.txt", 404),
    ("/static/link_in", 200),
    ("/static/link_out", 404),
    ("/static/dir_out/secret.txt", 404),
    ("/static/fifo", 404),
    ("/static/emptydir/", 404),
    ("/static/emptydir", 404),
    ("/static/sub/", 404),  # --static-index is off
    ("/static/sub", 404),
    ("/static/", 404),
    ("/static", 404),
    ("/static/hello.txt/", 404),
    ("/static/nope.txt", 404),
    ("/static/sp%20ace.txt", 200),
    ("/static/%C3%BCn%C3%AF.txt", 200),
    ("/static/hello.txt?x=1", 200),
    ("/static/%68ello.txt", 200),
]


@pytest.mark.parametrize(("path", "status"), HOSTILE)
def test_hostile_paths(tree: Path, path: str, status: int) -> None:
    reply = call(make(tree), path)
    assert reply.code == status
    if status == 404:
        assert reply.body == b"404 Not Found\n"
        assert reply.headers == [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "14")]


def test_symlinks_outside_with_follow_symlinks(tree: Path) -> None:
    sf = make(tree, follow_symlinks=True)
    assert call(sf, "/static/link_out").body == b"outside\n"
    assert call(sf, "/static/dir_out/secret.txt").body == b"outside\n"
    # Still never a dotfile, a traversal or a FIFO.
    assert call(sf, "/static/../root/hello.txt").code == 404
    assert call(sf, "/static/fifo").code == 404


def test_dotfiles_when_asked(tree: Path) -> None:
    sf = make(tree, dotfiles=True)
    assert call(sf, "/static/.secret").body == b"hidden\n"
    assert call(sf, "/static/.hidden/x.txt").body == b"x\n"
    assert call(sf, "/static/../hello.txt").code == 404
    assert call(sf, "/static/./hello.txt").code == 404


def test_index(tree: Path) -> None:
    sf = make(tree, index=True)
    reply = call(sf, "/static/sub/")
    assert (reply.code, reply.body) == (200, b"<h1>sub</h1>\n")
    assert reply.header("Content-Type") == "text/html; charset=utf-8"
    redirect = call(sf, "/static/sub?a=1")
    assert redirect.code == 301
    assert redirect.header("Location") == "/static/sub/?a=1"
    assert call(sf, "/static/emptydir/").code == 404  # no index.html: never a listing
    assert call(sf, "/static/emptydir").code == 404
    assert call(sf, "/static/").code == 404  # the root has no index.html either
    (tree / "index.html").write_bytes(b"root\n")
    sf = make(tree, index=True)
    assert call(sf, "/static/").body == b"root\n"
    assert call(sf, "/static").header("Location") == "/static/"


def test_longest_prefix_wins(tree: Path) -> None:
    sf = StaticFiles([parse_mount(f"/static/={tree}", 60), parse_mount(f"/static/sub/={tree}:10", 60)])
    # /static/sub/hello.txt is hello.txt of the second mount, not sub/hello.txt of the first.
    reply = call(sf, "/static/sub/hello.txt")
    assert reply.body == HELLO
    assert reply.header("Cache-Control") == "public, max-age=10"
    assert call(sf, "/static/hello.txt").header("Cache-Control") == "public, max-age=60"


def test_claims(tree: Path) -> None:
    sf = make(tree)
    claimed = ["/static/", "/static", "/static/x", "/static/../x", "/static/a/b"]
    for path in claimed:
        assert sf.claims({"PATH_INFO": path}), path
    for path in ["/", "/staticx", "/stati", "/static.css", "//static/x", "/x/static/"]:
        assert not sf.claims({"PATH_INFO": path}), path


# ---------------------------------------------------------------------- a 200


def test_full_response_headers(tree: Path) -> None:
    reply = call(make(tree), "/static/hello.txt")
    assert reply.status == "200 OK"
    assert reply.headers == [
        ("ETag", etag_of(tree / "hello.txt")),
        ("Last-Modified", MTIME_HTTP),
        ("Cache-Control", "public, max-age=60"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Accept-Ranges", "bytes"),
        ("Content-Length", "12"),
    ]
    assert reply.body == HELLO


def test_head_has_the_headers_of_get_and_no_body(tree: Path) -> None:
    sf = make(tree)
    get, head = call(sf, "/static/data.bin"), call(sf, "/static/data.bin", "HEAD")
    assert head.headers == get.headers
    assert head.body == b""
    assert get.body == bytes(range(256)) * 1200
    assert get.header("Content-Length") == "307200"


def test_large_file_is_a_file_wrapper(tree: Path) -> None:
    sf = make(tree)
    _, result = sf.respond(environ_for("/static/data.bin"), NO_DATE)
    assert type(result).__name__ == "FileWrapper"
    result.close()  # type: ignore[union-attr]
    _, small = sf.respond(environ_for("/static/hello.txt"), NO_DATE)
    assert small == [HELLO]


def test_date_and_server_lines_are_the_writers(tree: Path) -> None:
    date_server = (b"Date: x\r\nServer: y\r\n", b"Date: x\r\n", b"Server: y\r\n", b"")
    for path, headers in [
        ("/static/hello.txt", {}),
        ("/static/nope", {}),
        ("/static/app.css", {"Range": "bytes=0-1"}),
    ]:
        response, _ = make(tree).respond(environ_for(path, "GET", headers), date_server)
        assert response.headers.endswith(b"\r\nDate: x\r\nServer: y\r\n")
        assert response.headers.count(b"Date:") == 1


def test_empty_file(tree: Path) -> None:
    reply = call(make(tree), "/static/empty.txt")
    assert (reply.code, reply.body, reply.header("Content-Length")) == (200, b"", "0")


def test_immutable_mount(tree: Path) -> None:
    sf = make(tree, spec=f"/static/={tree}:immutable")
    assert (
        call(sf, "/static/hello.txt").header("Cache-Control")
        == f"public, max-age={IMMUTABLE_MAX_AGE}, immutable"
    )
    sf = make(tree, spec=f"/static/={tree}:600:immutable")
    assert call(sf, "/static/hello.txt").header("Cache-Control") == "public, max-age=600, immutable"


def test_last_modified_never_in_the_future(tree: Path) -> None:
    future = 4_000_000_000
    os.utime(tree / "hello.txt", (future, future))
    sf = StaticFiles([parse_mount(f"/static/={tree}", 60)], wall=lambda: float(MTIME))
    assert call(sf, "/static/hello.txt").header("Last-Modified") == MTIME_HTTP


@pytest.mark.parametrize(
    ("method", "status", "allow"),
    [
        ("POST", 405, True),
        ("PUT", 405, True),
        ("DELETE", 405, True),
        ("PATCH", 405, True),
        ("OPTIONS", 204, True),
    ],
)
def test_methods(tree: Path, method: str, status: int, allow: bool) -> None:
    reply = call(make(tree), "/static/hello.txt", method)
    assert reply.code == status
    assert reply.header("Allow") == "GET, HEAD, OPTIONS"
    if status == 405:
        assert reply.body == b"405 Method Not Allowed\n"
    else:
        assert reply.body == b""


def test_405_for_a_missing_file_too(tree: Path) -> None:
    assert call(make(tree), "/static/nope", "POST").code == 405


# ---------------------------------------------------------------------- conditionals (RFC 9110 §13)


def test_if_none_match(tree: Path) -> None:
    sf = make(tree)
    tag = etag_of(tree / "hello.txt")
    reply = call(sf, "/static/hello.txt", if_none_match=tag)
    assert reply.status == "304 Not Modified"
    assert reply.headers == [
        ("ETag", tag),
        ("Last-Modified", MTIME_HTTP),
        ("Cache-Control", "public, max-age=60"),
    ]
    assert reply.body == b""
    # Weak comparison (§13.1.2): W/ and list members match too; "*" matches any.
    assert call(sf, "/static/hello.txt", if_none_match=f"W/{tag}").code == 304
    assert call(sf, "/static/hello.txt", if_none_match=f'"other", {tag}').code == 304
    assert call(sf, "/static/hello.txt", if_none_match="*").code == 304
    assert call(sf, "/static/hello.txt", "HEAD", if_none_match=tag).code == 304
    assert call(sf, "/static/hello.txt", if_none_match='"other"').code == 200
    assert call(sf, "/static/hello.txt", if_none_match=tag[1:-1]).code == 200  # unquoted: no tag


def test_if_modified_since(tree: Path) -> None:
    sf = make(tree)
    assert call(sf, "/static/hello.txt", if_modified_since=MTIME_HTTP).code == 304
    later = email.utils.formatdate(MTIME + 1, usegmt=True)
    earlier = email.utils.formatdate(MTIME - 1, usegmt=True)
    assert call(sf, "/static/hello.txt", if_modified_since=later).code == 304
    assert call(sf, "/static/hello.txt", if_modified_since=earlier).code == 200
    assert call(sf, "/static/hello.txt", if_modified_since="Tuesday, 14-Nov-23 22:13:20 GMT").code == 304
    assert call(sf, "/static/hello.txt", if_modified_since="Tue Nov 14 22:13:20 2023").code == 304
    assert call(sf, "/static/hello.txt", if_modified_since="yesterday").code == 200  # invalid: ignored


def test_if_none_match_wins_over_if_modified_since(tree: Path) -> None:
    # §13.1.3: If-Modified-Since is ignored when If-None-Match is present.
    reply = call(make(tree), "/static/hello.txt", if_none_match='"other"', if_modified_since=MTIME_HTTP)
    assert reply.code == 200


def test_if_match(tree: Path) -> None:
    sf = make(tree)
    tag = etag_of(tree / "hello.txt")
    assert call(sf, "/static/hello.txt", if_match=tag).code == 200
    assert call(sf, "/static/hello.txt", if_match="*").code == 200
    failed = call(sf, "/static/hello.txt", if_match='"other"')
    assert (failed.status, failed.body) == ("412 Precondition Failed", b"412 Precondition Failed\n")
    assert call(sf, "/static/hello.txt", if_match=f"W/{tag}").code == 412  # strong comparison


def test_if_unmodified_since(tree: Path) -> None:
    sf = make(tree)
    earlier = email.utils.formatdate(MTIME - 1, usegmt=True)
    assert call(sf, "/static/hello.txt", if_unmodified_since=MTIME_HTTP).code == 200
    assert call(sf, "/static/hello.txt", if_unmodified_since=earlier).code == 412
    # §13.2.2 step 2 only applies without If-Match.
    tag = etag_of(tree / "hello.txt")
    assert call(sf, "/static/hello.txt", if_match=tag, if_unmodified_since=earlier).code == 200


def test_precondition_order(tree: Path) -> None:
    # §13.2.2: If-Match is evaluated before If-None-Match.
    tag = etag_of(tree / "hello.txt")
    assert call(make(tree), "/static/hello.txt", if_match='"x"', if_none_match=tag).code == 412


# ---------------------------------------------------------------------- ranges (RFC 9110 §14)

DATA = bytes(range(256)) * 1200


@pytest.mark.parametrize("path", ["/static/hello.txt", "/static/data.bin"])
@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=2-5", 2, 5),
        ("bytes=5-", 5, None),
        ("bytes=-3", None, 3),
        ("bytes=0-99999999", 0, None),
        ("BYTES=1-2", 1, 2),
        ("bytes= 1-2 ", 1, 2),
        ("bytes=1-2,3-4", 1, 4),  # adjacent ranges coalesce into one
        ("bytes=1-5,2-3", 1, 5),
        ("bytes=-999999", 0, None),
    ],
)
def test_single_range(tree: Path, path: str, spec: str, first: int | None, last: int | None) -> None:
    data = HELLO if path.endswith("txt") else DATA
    size = len(data)
    if first is None:
        assert last is not None
        first, last = size - last, size - 1
    elif last is None:
        last = size - 1
    reply = call(make(tree), path, range=spec)
    assert reply.status == "206 Partial Content"
    assert reply.header("Content-Range") == f"bytes {first}-{last}/{size}"
    assert reply.header("Content-Length") == str(last - first + 1)
    assert reply.body == data[first : last + 1]


@pytest.mark.parametrize("spec", ["bytes=12-", "bytes=100-200", "bytes=-0", "bytes=12-12,20-"])
def test_unsatisfiable_range(tree: Path, spec: str) -> None:
    reply = call(make(tree), "/static/hello.txt", range=spec)
    assert reply.status == "416 Range Not Satisfiable"
    assert reply.header("Content-Range") == "bytes */12"


def test_range_on_empty_file_is_unsatisfiable(tree: Path) -> None:
    reply = call(make(tree), "/static/empty.txt", range="bytes=0-")
    assert (reply.code, reply.header("Content-Range")) == (416, "bytes */0")


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=5-2",
        "bytes=a-b",
        "bytes=",
        "bytes=-",
        "items=0-1",
        "bytes 0-1",
        "bytes=1-2-3",
        "bytes=\u0661-2",
    ],
)
def test_invalid_range_is_ignored(tree: Path, spec: str) -> None:
    reply = call(make(tree), "/static/hello.txt", range=spec)
    assert (reply.code, reply.body, reply.header("Content-Range")) == (200, HELLO, None)


def test_multiple_ranges_get_the_whole_file(tree: Path) -> None:
    reply = call(make(tree), "/static/hello.txt", range="bytes=0-1,5-6")
    assert (reply.code, reply.body) == (200, HELLO)
    assert reply.header("Accept-Ranges") == "bytes"


def test_too_many_ranges_are_ignored(tree: Path) -> None:
    spec = "bytes=" + ",".join(["0-0"] * (static_mod.MAX_RANGES + 1))
    assert call(make(tree), "/static/hello.txt", range=spec).code == 200


def test_range_is_for_get_only(tree: Path) -> None:
    reply = call(make(tree), "/static/hello.txt", "HEAD", range="bytes=0-1")
    assert (reply.code, reply.header("Content-Length")) == (200, "12")


def test_if_range(tree: Path) -> None:
    sf = make(tree)
    tag = etag_of(tree / "hello.txt")
    assert call(sf, "/static/hello.txt", range="bytes=0-1", if_range=tag).body == b"he"
    assert call(sf, "/static/hello.txt", range="bytes=0-1", if_range=MTIME_HTTP).body == b"he"
    # A changed validator, a weak tag, a date that is not the exact Last-Modified: all of it.
    for value in ['"other"', f"W/{tag}", email.utils.formatdate(MTIME + 1, usegmt=True), "junk"]:
        reply = call(sf, "/static/hello.txt", range="bytes=0-1", if_range=value)
        assert (reply.code, reply.body) == (200, HELLO), value


def test_range_after_a_matching_if_none_match_is_304(tree: Path) -> None:
    tag = etag_of(tree / "hello.txt")
    assert call(make(tree), "/static/hello.txt", range="bytes=0-1", if_none_match=tag).code == 304


# ---------------------------------------------------------------------- precompressed variants


@pytest.mark.parametrize(
    ("accept", "body", "encoding"),
    [
        (None, CSS, None),
        ("", CSS, None),
        ("gzip", b"GZIP-BYTES!", "gzip"),
        ("br", b"BROTLI-BYTES", "br"),
        ("gzip, deflate, br", b"BROTLI-BYTES", "br"),  # a tie: br first
        ("gzip;q=1.0, br;q=0.5", b"GZIP-BYTES!", "gzip"),
        ("br;q=0, gzip", b"GZIP-BYTES!", "gzip"),
        ("br;q=0, gzip;q=0", CSS, None),
        ("*", b"BROTLI-BYTES", "br"),
        ("*;q=0", CSS, None),
        ("identity", CSS, None),
        ("GZIP", b"GZIP-BYTES!", "gzip"),
        ("gzip;q=bogus, br;q=2", CSS, None),
        ("deflate", CSS, None),
        ("gzip;q=0.5, identity", CSS, None),  # identity ranks first (§12.5.3)
        ("identity;q=0.5, gzip;q=0.4", CSS, None),
        ("gzip, identity", b"GZIP-BYTES!", "gzip"),  # a tie: the variant
        ("x-gzip", b"GZIP-BYTES!", "gzip"),  # §8.4.1.3
    ],
)
def test_precompressed(tree: Path, accept: str | None, body: bytes, encoding: str | None) -> None:
    headers = {} if accept is None else {"accept_encoding": accept}
    reply = call(make(tree), "/static/app.css", **headers)
    assert reply.code == 200
    assert reply.body == body
    assert reply.header("Content-Encoding") == encoding
    assert reply.header("Content-Type") == "text/css; charset=utf-8"
    assert reply.header("Vary") == "Accept-Encoding"
    assert reply.header("Content-Length") == str(len(body))
    suffix = "" if encoding is None else {"br": ".br", "gzip": ".gz"}[encoding]
    assert reply.header("ETag") == etag_of(
        tree / ("app.css" + suffix), "" if encoding is None else "-" + encoding
    )


def test_variant_only_where_present(tree: Path) -> None:
    reply = call(make(tree), "/static/only.js", accept_encoding="br, gzip")
    assert (reply.body, reply.header("Content-Encoding")) == (b"GZ", "gzip")
    plain = call(make(tree), "/static/hello.txt", accept_encoding="br, gzip")
    assert (plain.header("Content-Encoding"), plain.header("Vary")) == (None, None)


def test_range_requests_get_the_identity(tree: Path) -> None:
    reply = call(make(tree), "/static/app.css", range="bytes=0-3", accept_encoding="br")
    assert (reply.code, reply.body, reply.header("Content-Encoding")) == (206, CSS[:4], None)
    assert reply.header("Vary") == "Accept-Encoding"


def test_304_of_a_variant_matches_its_own_tag(tree: Path) -> None:
    sf = make(tree)
    br_tag = etag_of(tree / "app.css.br", "-br")
    assert call(sf, "/static/app.css", accept_encoding="br", if_none_match=br_tag).code == 304
    reply = call(sf, "/static/app.css", if_none_match=br_tag)  # identity wanted: a 200
    assert (reply.code, reply.body) == (200, CSS)
    not_modified = call(sf, "/static/app.css", accept_encoding="br", if_none_match=br_tag)
    assert ("Vary", "Accept-Encoding") in not_modified.headers


def test_variant_files_by_their_own_name(tree: Path) -> None:
    reply = call(make(tree), "/static/app.css.gz")
    assert (reply.body, reply.header("Content-Type"), reply.header("Content-Encoding")) == (
        b"GZIP-BYTES!",
        "application/gzip",
        None,
    )


# ---------------------------------------------------------------------- the stat cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hot_file_costs_no_system_call(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    sf = StaticFiles([parse_mount(f"/static/={tree}", 60)], clock=clock, cache_ttl=1.0)
    assert call(sf, "/static/hello.txt").body == HELLO
    assert call(sf, "/static/nope.txt").code == 404
    calls: list[str] = []
    for name in ("stat", "lstat", "open", "fstat", "readlink"):
        real = getattr(os, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    for _ in range(5):
        assert call(sf, "/static/hello.txt").body == HELLO
        assert call(sf, "/static/nope.txt").code == 404  # misses are cached too
        clock.now += 0.1
    assert calls == []
    clock.now += 0.6  # past the TTL: resolved and stat'ed again
    assert call(sf, "/static/hello.txt").body == HELLO
    assert "stat" in calls
    assert "open" not in calls  # unchanged: its cached bytes are kept


def test_changed_file_is_seen_after_the_ttl(tree: Path) -> None:
    clock = Clock()
    sf = StaticFiles([parse_mount(f"/static/={tree}", 60)], clock=clock, cache_ttl=1.0)
    before = call(sf, "/static/hello.txt")
    _write(tree / "hello.txt", b"changed!\n", MTIME + 10)
    clock.now += 0.5
    assert call(sf, "/static/hello.txt").body == HELLO  # within the TTL: the cached file
    clock.now += 0.6
    after = call(sf, "/static/hello.txt")
    assert after.body == b"changed!\n"
    assert after.header("ETag") == etag_of(tree / "hello.txt")
    assert after.header("ETag") != before.header("ETag")
    assert after.header("Last-Modified") == email.utils.formatdate(MTIME + 10, usegmt=True)
    # The old tag no longer gives a 304.
    assert call(sf, "/static/hello.txt", if_none_match=before.header("ETag") or "").code == 200


def test_new_and_removed_files_after_the_ttl(tree: Path) -> None:
    clock = Clock()
    sf = StaticFiles([parse_mount(f"/static/={tree}", 60)], clock=clock, cache_ttl=1.0)
    assert call(sf, "/static/new.txt").code == 404
    _write(tree / "new.txt", b"new\n")
    (tree / "hello.txt").unlink()
    clock.now += 1.0
    assert call(sf, "/static/new.txt").body == b"new\n"
    assert call(sf, "/static/hello.txt").code == 404


def test_large_file_changed_within_the_ttl_is_resolved_again(tree: Path) -> None:
    clock = Clock()
    sf = StaticFiles([parse_mount(f"/static/={tree}", 60)], clock=clock, cache_ttl=60.0)
    assert len(call(sf, "/static/data.bin").body) == 307200
    _write(tree / "data.bin", b"y" * 300000, MTIME + 5)
    reply = call(sf, "/static/data.bin")  # the fstat of the opened file disagrees: resolved again
    assert (reply.code, reply.body, reply.header("ETag")) == (200, b"y" * 300000, etag_of(tree / "data.bin"))


def test_cache_entries_are_bounded(tree: Path) -> None:
    sf = make(tree, cache_entries=3)
    for i in range(10):
        call(sf, f"/static/missing{i}")
    assert len(sf._cache) == 3


def test_cached_bytes_are_bounded(tree: Path) -> None:
    sf = make(tree, cache_bytes=230)
    assert call(sf, "/static/app.css").body == CSS  # 200 + 12 + 11 bytes: kept
    assert call(sf, "/static/hello.txt").body == HELLO  # would pass the bound: read per request
    entry = sf.lookup("/static/hello.txt")
    assert type(entry) is File and entry.identity.body is None
    assert sf._cached_bytes == len(CSS) + 12 + 11


def test_sendfile_to() -> None:
    assert [
        StaticFiles([], sendfile=m).sendfile_to(same) for m in ("auto", "on", "off") for same in (False, True)
    ] == [
        True,
        False,
        True,
        True,
        False,
        False,
    ]


def test_a_file_the_server_may_not_read_is_a_404(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.open

    def refusing(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fsdecode(path).endswith(("data.bin", "hello.txt", "app.css.br")):
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    sf = make(tree)
    for path in ("/static/data.bin", "/static/hello.txt"):
        assert [call(sf, path, method).code for method in ("GET", "HEAD")] == [404, 404], path
    # A variant it may not read is not offered.
    reply = call(sf, "/static/app.css", accept_encoding="br, gzip")
    assert (reply.body, reply.header("Content-Encoding")) == (b"GZIP-BYTES!", "gzip")


def test_out_of_descriptors_is_a_503(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf = make(tree)
    assert call(sf, "/static/data.bin", "HEAD").code == 200  # resolved and cached
    real = os.open

    def exhausted(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fsdecode(path).endswith("data.bin"):
            raise OSError(24, "Too many open files")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", exhausted)
    reply = call(sf, "/static/data.bin")
    assert (reply.status, reply.header("Retry-After")) == ("503 Service Unavailable", "1")


def test_suffix_range_of_an_empty_file_is_the_whole_file(tree: Path) -> None:
    reply = call(make(tree), "/static/empty.txt", range="bytes=-5")
    assert (reply.code, reply.body, reply.header("Content-Range")) == (200, b"", None)


def test_lookup_kinds(tree: Path) -> None:
    sf = make(tree, index=True)
    assert type(sf.lookup("/static/hello.txt")) is File
    assert type(sf.lookup("/static/sub")) is Redirect
    assert type(sf.lookup("/static/nope")) is Missing


# ---------------------------------------------------------------------- parsers and settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"a"', [(False, '"a"')]),
        ('W/"a", "b"', [(True, '"a"'), (False, '"b"')]),
        ("*", None),
        (' "a" ,, W/"b" ', [(False, '"a"'), (True, '"b"')]),
        ('a, "b', []),
        ('"a"b"', []),
    ],
)
def test_parse_etags(value: str, expected: list[tuple[bool, str]] | None) -> None:
    assert parse_etags(value) == expected


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-499", 1000, [(0, 499)]),
        ("bytes=500-999", 1000, [(500, 999)]),
        ("bytes=-500", 1000, [(500, 999)]),
        ("bytes=9500-", 1000, []),
        ("bytes=0-0,-1", 1000, [(0, 0), (999, 999)]),
        ("bytes=500-600,601-999", 1000, [(500, 999)]),
        ("bytes=500-700,601-999", 1000, [(500, 999)]),
        ("bytes=0-", 0, []),
        ("bytes=-1", 0, None),  # satisfiable (§14.1.1) yet no range to send: the whole, a 200
        ("bytes=1-0", 1000, None),
        ("bytes=,0-1,", 1000, [(0, 1)]),
        ("bytes=,", 1000, None),
        ("bytes=+1-2", 1000, None),
    ],
)
def test_parse_range(value: str, size: int, expected: list[tuple[int, int]] | None) -> None:
    assert parse_range(value, size) == expected


def test_parse_date() -> None:
    assert parse_date(MTIME_HTTP) == MTIME
    assert parse_date("Tuesday, 14-Nov-23 22:13:20 GMT") == MTIME
    assert parse_date("Tue Nov 14 22:13:20 2023") == MTIME
    assert parse_date("") is None
    assert parse_date("Tue, 99 Nov 2023 22:13:20 GMT") is None


def test_accepted_codings() -> None:
    assert accepted_codings("gzip;q=0.8, BR , *;q=0.1, x;q=1.5, y;q=z") == {
        "gzip": 0.8,
        "br": 1.0,
        "*": 0.1,
        "x": 0.0,
        "y": 0.0,
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.css", "text/css; charset=utf-8"),
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.mjs", "text/javascript; charset=utf-8"),
        ("a.html", "text/html; charset=utf-8"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.json", "application/json; charset=utf-8"),
        ("a.svg", "image/svg+xml; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.woff2", "font/woff2"),
        ("a.webp", "image/webp"),
        ("a.wasm", "application/wasm"),
        ("a.gz", "application/gzip"),
        ("a.tar.gz", "application/gzip"),
        ("a.css.br", "application/octet-stream"),
        ("noext", "application/octet-stream"),
        ("a.unknownext", "application/octet-stream"),
    ],
)
def test_content_type(name: str, expected: str) -> None:
    assert content_type(name) == expected


def test_parse_mount(tmp_path: Path) -> None:
    real = os.fsencode(os.path.realpath(tmp_path))
    m = parse_mount(f"/static={tmp_path}", 60)
    assert (m.prefix, m.root, m.cache_control) == ("/static/", real, "public, max-age=60")
    assert parse_mount(f"/s/={tmp_path}:0", 60).cache_control == "public, max-age=0"
    assert parse_mount(f"/s/={tmp_path}:immutable", 60).cache_control == (
        f"public, max-age={IMMUTABLE_MAX_AGE}, immutable"
    )
    assert parse_mount(f"/={tmp_path}", 60).prefix == "/"
    colon = tmp_path / "a:b"
    colon.mkdir()
    assert parse_mount(f"/s/={colon}", 60).root == os.fsencode(os.path.realpath(colon))
    assert parse_mount(f"/s/={colon}:5", 60).cache_control == "public, max-age=5"


@pytest.mark.parametrize(
    "spec",
    ["static=/tmp", "/static/", "/static/=", "/a/../b/={d}", "/a//b/={d}", "/a%2f/={d}"],
)
def test_bad_mounts(tmp_path: Path, spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_mount(spec.format(d=tmp_path), 60)
    assert validate_mounts([spec.format(d=tmp_path)]) is not None


def test_a_missing_directory_is_refused_when_the_mount_is_made(tmp_path: Path) -> None:
    spec = f"/s/={tmp_path}/missing"
    assert validate_mounts([spec]) is None  # the syntax is fine; the server checks after --chdir
    with pytest.raises(ConfigError, match="is not a directory"):
        parse_mount(spec, 60)


def test_mounted_twice(tmp_path: Path) -> None:
    assert (
        validate_mounts([f"/s/={tmp_path}", f"/s={tmp_path}"])
        == f"static mount '/s={tmp_path}': /s/ is mounted twice"
    )
    assert validate_mounts([f"/s/={tmp_path}", f"/t/={tmp_path}"]) is None


def test_settings(tmp_path: Path) -> None:
    from rapidwsgi.config import Config

    config = Config.load(
        ["--static", f"/static/={tmp_path}", "--static", f"/media/={tmp_path}:0", "--static-index", "x:app"],
        {"RAPIDWSGI_STATIC_MAX_AGE": "300", "RAPIDWSGI_STATIC_CACHE_TTL": "0.5"},
    )
    assert config.static == [f"/static/={tmp_path}", f"/media/={tmp_path}:0"]
    assert (config.static_index, config.static_max_age, config.static_cache_ttl) == (True, 300, 0.5)
    assert (config.static_follow_symlinks, config.static_dotfiles) == (False, False)
    sf = StaticFiles.from_config(config)
    assert sf is not None
    assert [(m.prefix, m.cache_control) for m in sf.mounts] == [
        ("/static/", "public, max-age=300"),
        ("/media/", "public, max-age=0"),
    ]
    toml = tmp_path / "c.toml"
    toml.write_text(f'static = ["/assets/={tmp_path}:immutable"]\nstatic_dotfiles = true\n')
    config = Config.load(["--config", str(toml), "x:app"], {})
    assert (config.static, config.static_dotfiles) == ([f"/assets/={tmp_path}:immutable"], True)
    missing = Config.load(["--static", f"/s/={tmp_path}/nope", "x:app"], {})  # checked after --chdir
    with pytest.raises(ConfigError, match="is not a directory"):
        StaticFiles.from_config(missing)
    with pytest.raises(ConfigError, match="expected URL_PREFIX=DIRECTORY"):
        Config.load(["--static", "static", "x:app"], {})
    assert StaticFiles.from_config(Config.load(["x:app"], {})) is None


def test_not_a_regular_file_is_never_opened(tree: Path) -> None:
    # The FIFO: a blocking open would stall the loop; it is a 404 from its stat.
    assert stat.S_ISFIFO(os.stat(tree / "fifo").st_mode)
    assert call(make(tree), "/static/fifo").code == 404


@pytest.fixture(autouse=True)
def _no_leaked_fds() -> Iterator[None]:
    before = set(os.listdir("/proc/self/fd"))
    yield
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not leaked, f"file descriptors left open: {leaked}"


# ---------------------------------------------------------------------- property: never outside


_PIECES = ["..", ".", "", "%2e", "%2E%2e", "%2f", "%5c", "\\", "%00", "hello.txt", "sub", "index.html"]
_PIECES += ["link_out", "dir_out", "secret.txt", ".secret", "outside", "root", "%252e%252e", "%", "%zz"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_PIECES), min_size=0, max_size=6), st.booleans(), st.booleans())
def test_no_path_serves_a_file_outside_the_mount(
    tree: Path, pieces: list[str], index: bool, dots: bool
) -> None:
    inside = {
        p.read_bytes() for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "fifo"
    }
    outside = (tree.parent / "outside" / "secret.txt").read_bytes()
    sf = make(tree, index=index, dotfiles=dots)
    path = "/static/" + "/".join(pieces)
    try:
        reply = call(sf, path)
    except ValueError:  # not a valid percent-encoding for unquote_to_bytes: nothing to test
        return
    assert reply.code in (200, 301, 404), (path, reply.code)
    if reply.code == 200:
        assert reply.body != outside
        assert reply.body in inside, path
        decoded = unquote_to_bytes(path).decode("latin-1")
        assert "/../" not in decoded + "/" and "\x00" not in decoded
