"""The C path's static shortcut (``StaticFiles.quick`` written by ``_cfast.c``) against
the Python path (``StaticFiles.respond`` through the exchange and the writer).

Every request below goes through both paths (``tests/cpath_harness.py``), whole and
split at every byte boundary, and must produce identical bytes, transport calls and
application calls (the application must see none of the mounted paths). Without the C
extension both runs take the Python path and the test checks determinism only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cpath_harness import C_PATH_AVAILABLE, TRUSTED, Setup, differential, echo_app, run_connection
from tests.test_cpath import check_all_splits

MTIME = 1_600_000_000


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("static-cpath")
    files = {
        "a.txt": b"alpha\n",
        "style.css": b"p { margin: 0 }\n",
        "style.css.gz": b"gz",
        "big.bin": bytes(range(256)) * 1100,  # 281600 bytes: beyond SMALL_FILE, sendfile
        "sub/index.html": b"<p>i</p>\n",
        ".hidden": b"no\n",
    }
    for name, data in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (MTIME, MTIME))
    return base


def etag(root: Path, name: str) -> str:
    st = (root / name).stat()
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def req(target: str, *fields: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: t", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def cases(root: Path) -> list[tuple[str, bytes]]:
    tag = etag(root, "a.txt")
    return [
        ("200", req("/static/a.txt")),
        ("head", req("/static/a.txt", method="HEAD")),
        ("304 exact tag", req("/static/a.txt", f"If-None-Match: {tag}")),
        ("304 weak tag", req("/static/a.txt", f"If-None-Match: W/{tag}")),
        ("304 and a range", req("/static/a.txt", f"If-None-Match: {tag}", "Range: bytes=0-1")),
        ("200 other tag", req("/static/a.txt", 'If-None-Match: "x"')),
        ("200 stale tags", req("/static/a.txt", 'If-None-Match: "6-0", W/"7-1"')),
        ("304 in a list", req("/static/a.txt", f'If-None-Match: "x", {tag}')),
        ("304 star", req("/static/a.txt", "If-None-Match: *")),
        ("206 stale tag", req("/static/a.txt", 'If-None-Match: "x"', "Range: bytes=1-2")),
        (
            "200 stale tag and a date",
            req("/static/a.txt", 'If-None-Match: "x"', "If-Modified-Since: Sun, 13 Sep 2020 12:26:40 GMT"),
        ),
        ("304 by date", req("/static/a.txt", "If-Modified-Since: Sun, 13 Sep 2020 12:26:40 GMT")),
        ("412", req("/static/a.txt", 'If-Match: "x"', f"If-None-Match: {tag}")),
        ("206", req("/static/a.txt", "Range: bytes=1-3")),
        ("416", req("/static/a.txt", "Range: bytes=100-")),
        ("variant", req("/static/style.css", "Accept-Encoding: gzip")),
        ("identity of a file with a variant", req("/static/style.css")),
        ("404", req("/static/nope")),
        ("404 dotfile", req("/static/.hidden")),
        ("404 traversal", req("/static/%2e%2e/a.txt")),
        ("404 encoded slash", req("/static/sub%2findex.html")),
        ("301", req("/static/sub?q=1")),
        ("index", req("/static/sub/")),
        ("405", req("/static/a.txt", method="DELETE")),
        ("options", req("/static/a.txt", method="OPTIONS")),
        ("sendfile", req("/static/big.bin")),
        ("sendfile range", req("/static/big.bin", "Range: bytes=280000-")),
        ("http/1.0", req("/static/a.txt", version="1.0")),
        ("http/1.0 keep-alive", req("/static/a.txt", "Connection: keep-alive", version="1.0")),
        ("close", req("/static/a.txt", "Connection: close")),
        ("the bare mount", req("/static")),
        ("outside the mount", req("/staticx/a.txt")),
    ]


def test_static_requests_identical_on_both_paths(root: Path) -> None:
    setup = Setup(static_root=str(root))
    for name, raw in cases(root):
        # Twice on one connection: the first fills the cache, the second is the C
        # shortcut's (a plain 200 and an exact-tag 304 are answered in C).
        run = differential([raw + raw], echo_app, setup, what=name)
        assert not run.exceptions, (name, run.exceptions)
        assert run.out.startswith(b"HTTP/1.1 "), name
        # Both answered in full (one where the first response closes the connection).
        assert run.out.count(b"HTTP/1.1 ") == (1 if name in ("close", "http/1.0") else 2), name
        if name == "sendfile":
            assert run.out.count(bytes(range(256)) * 1100) == 2
        if name != "outside the mount":
            assert run.app_log == [], (name, run.app_log)  # the application saw nothing


@pytest.mark.parametrize("name", ["200", "304 exact tag", "404", "206", "http/1.0 keep-alive"])
def test_static_requests_split_at_every_boundary(root: Path, name: str) -> None:
    raw = dict(cases(root))[name]
    check_all_splits(raw + raw, echo_app, Setup(static_root=str(root)), f"static {name}", bytewise=False)


def test_pipelined_static_and_application_requests(root: Path) -> None:
    tag = etag(root, "a.txt")
    raw = (
        req("/static/a.txt")
        + req("/hello")
        + req("/static/a.txt", f"If-None-Match: {tag}")
        + req("/static/big.bin", "Range: bytes=0-9")
        + req("/static/a.txt")
        + req("/bye")
    )
    run = check_all_splits(raw, echo_app, Setup(static_root=str(root)), "static pipelined", bytewise=False)
    assert [log[0][1]["PATH_INFO"][-1] for log in run.app_log] == ["/hello", "/bye"]  # type: ignore[index]
    assert run.out.count(b"HTTP/1.1 200 OK") == 4
    assert run.out.count(b"HTTP/1.1 304 Not Modified") == 1
    assert run.out.count(b"HTTP/1.1 206 Partial Content") == 1


@pytest.mark.skipif(not C_PATH_AVAILABLE, reason="the C extension is not built")
def test_the_c_path_answers_the_cached_file_itself(root: Path) -> None:
    # Guards against a vacuous comparison: after the first request fills the cache,
    # the C path writes the 200s and the exact-tag 304 itself; the Python path never does.
    raw = req("/static/a.txt")
    cond = req("/static/a.txt", f"If-None-Match: {etag(root, 'a.txt')}")
    setup = Setup(static_root=str(root))
    c_run = run_connection([raw, raw, cond, raw], echo_app, c_path=True, setup=setup)
    py_run = run_connection([raw, raw, cond, raw], echo_app, c_path=False, setup=setup)
    assert (c_run.static_quick, py_run.static_quick) == (3, 0)
    assert c_run.out == py_run.out
    assert c_run.out.count(b"alpha\n") == 3
    # A large file's 304 and a variant's 200 and 304 are C's too; its 200 is sendfile's.
    big = req("/static/big.bin")
    big_cond = req("/static/big.bin", f"If-None-Match: {etag(root, 'big.bin')}")
    gz = req("/static/style.css", "Accept-Encoding: gzip")
    st = (root / "style.css.gz").stat()
    gz_cond = req(
        "/static/style.css",
        "Accept-Encoding: gzip",
        f'If-None-Match: "{st.st_size:x}-{st.st_mtime_ns:x}-gzip"',
    )
    chunks = [big, big_cond, big, gz, gz, gz_cond]
    c_run = run_connection(chunks, echo_app, c_path=True, setup=setup)
    py_run = run_connection(chunks, echo_app, c_path=False, setup=setup)
    assert (c_run.static_quick, py_run.static_quick) == (3, 0)
    assert c_run.out == py_run.out
    assert c_run.out.count(b"304 Not Modified") == 2


def test_without_mounts_nothing_is_claimed() -> None:
    run = differential([req("/static/a.txt")], echo_app, TRUSTED, what="no mounts")
    assert len(run.app_log) == 1


def test_mounts_are_below_the_root_path(root: Path) -> None:
    # --root-path /app: /app/static/a.txt is PATH_INFO /static/a.txt, the mount's.
    setup = Setup(static_root=str(root), root_path="/app")
    run = differential([req("/app/static/a.txt") + req("/static/a.txt")], echo_app, setup, what="root path")
    assert run.out.count(b"alpha\n") == 2
    assert run.app_log == []


@pytest.mark.parametrize(
    ("peer", "mode", "sendfile"),
    [
        (("10.9.8.7", 41000), "auto", True),
        (("127.0.0.1", 50000), "auto", False),
        (None, "auto", False),  # a unix-socket peer
        (("127.0.0.1", 50000), "on", True),
        (("10.9.8.7", 41000), "off", False),
    ],
)
def test_sendfile_or_writes_by_peer(
    root: Path, monkeypatch: pytest.MonkeyPatch, peer: tuple[str, int] | None, mode: str, sendfile: bool
) -> None:
    calls: list[int] = []
    real = os.sendfile

    def spy(*args: int) -> int:
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(os, "sendfile", spy)
    sockname: tuple[str, int] | str = ("127.0.0.1", 8000) if peer is not None else "/run/app.sock"
    setup = Setup(static_root=str(root), peername=peer, sockname=sockname, static_sendfile=mode)
    run = differential([req("/static/big.bin") * 2], echo_app, setup, what=f"{peer} {mode}")
    assert run.out.count(bytes(range(256)) * 1100) == 2
    assert bool(calls) is sendfile
