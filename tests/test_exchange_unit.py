"""``bridge.Exchange`` against a recording fake ``Sink``: every PEP 3333 path, no server.

Each test runs one application call and compares the exact sequence of sink calls
(head with its status, headers, Content-Length and body; body chunks; sendfile; finish;
500; abort) and how often the iterable's ``close()`` ran.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rapidwsgi.bridge import Exchange
from rapidwsgi.errors import AppError
from rapidwsgi.events import Response
from rapidwsgi.log import Clock, error_log
from rapidwsgi.wsgi import FileWrapper

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]

SERVER = b"Server: rapidwsgi\r\n"
TEXT = [("Content-Type", "text/plain")]
TEXT_HEAD = b"Content-Type: text/plain\r\n" + SERVER


def clock() -> Clock:
    """No Date header: the head blocks are exact (only the Server line is added)."""
    return Clock(server="rapidwsgi", date=False)


class FakeSink:
    """Records every call an exchange makes, as tuples (see ``head``)."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.calls: list[tuple[Any, ...]] = []
        #: How many more ``writable()`` answers are True.
        self.room = room
        self.gone = False
        self.wait_answer = True

    @staticmethod
    def head(response: Response, body: bytes, end: bool) -> tuple[Any, ...]:
        return (
            "head",
            response.status,
            response.status_line,
            response.headers,
            response.content_length,
            response.close,
            body,
            end,
        )

    @property
    def disconnected(self) -> bool:
        return self.gone

    def send_head(self, response: Response, body: bytes, end: bool) -> None:
        self.calls.append(self.head(response, body, end))

    def send_body(self, data: bytes) -> None:
        self.calls.append(("body", data))

    def send_file(self, fd: int, offset: int, count: int) -> None:
        self.calls.append(("file", os.fstat(fd).st_ino, offset, count))

    def finish(self) -> None:
        self.calls.append(("finish",))

    def send_error(self, status: int) -> None:
        self.calls.append(("error", status))

    def app_failed(self) -> None:
        self.calls.append(("app_failed",))

    def abort(self) -> None:
        self.calls.append(("abort",))

    def writable(self) -> bool:
        if self.gone or self.room <= 0:
            return False
        self.room -= 1
        return True

    def wait_writable(self) -> bool:
        self.calls.append(("wait",))
        return self.wait_answer and not self.gone


def head(
    status_line: bytes,
    headers: bytes = TEXT_HEAD,
    content_length: int | None = None,
    body: bytes = b"",
    end: bool = False,
    close: bool = False,
) -> tuple[Any, ...]:
    return ("head", int(status_line[:3]), status_line, headers, content_length, close, body, end)


class Body:
    """An iterable response with ``close()``, counting its calls; ``fail_at``: the
    index of the chunk at which iteration raises instead."""

    def __init__(self, chunks: list[bytes], fail_at: int = -1, on_next: Callable[[int], None] | None = None):
        self.chunks = chunks
        self.fail_at = fail_at
        self.on_next = on_next
        self.closed = 0
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        i = self.pulled
        self.pulled += 1
        if self.on_next is not None:
            self.on_next(i)
        if i == self.fail_at:
            raise ValueError(f"boom at {i}")
        if i >= len(self.chunks):
            raise StopIteration
        return self.chunks[i]

    def close(self) -> None:
        self.closed += 1


class Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.records.append((record.levelname, record.getMessage(), repr(exc) if exc is not None else ""))


@pytest.fixture
def logged() -> Iterator[Logged]:
    handler = Logged()
    saved = (error_log.level, error_log.propagate)
    error_log.addHandler(handler)
    error_log.setLevel(logging.DEBUG)
    error_log.propagate = False
    try:
        yield handler
    finally:
        error_log.removeHandler(handler)
        error_log.setLevel(saved[0])
        error_log.propagate = saved[1]


ENVIRON: Environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/t"}


def run(app: App, sink: FakeSink | None = None, **kwargs: Any) -> tuple[Exchange, FakeSink, bool]:
    sink = sink or FakeSink()
    exchange = Exchange(app, dict(ENVIRON), sink, clock(), **kwargs)
    done = exchange.start()
    return exchange, sink, done


def returning(result: Any, status: str = "200 OK", headers: list[tuple[str, str]] | None = None) -> App:
    def app(environ: Environ, start_response: StartResponse) -> Any:
        start_response(status, TEXT if headers is None else headers)
        return result

    return app


# ---------------------------------------------------------------- start_response, iterable


def test_list_body_is_one_head_with_the_body_and_its_length() -> None:
    exchange, sink, done = run(returning([b"Hello, ", b"world"]))
    assert done is True
    assert sink.calls == [head(b"200 OK", content_length=12, body=b"Hello, world", end=True)]
    assert (exchange.head_sent, exchange.sent, exchange.finished) == (True, 12, True)


def test_iterable_head_goes_with_the_first_nonempty_chunk_then_body_then_finish() -> None:
    body = Body([b"", b"ab", b"", b"cde"])
    _, sink, done = run(returning(body))
    assert done is True
    assert sink.calls == [head(b"200 OK", body=b"ab"), ("body", b"cde"), ("finish",)]
    assert body.closed == 1


def test_empty_iterable_sends_the_head_at_the_end_with_length_zero() -> None:
    body = Body([])
    _, sink, _ = run(returning(body))
    assert sink.calls == [head(b"200 OK", content_length=0, end=True)]
    assert body.closed == 1


def test_304_without_length_gets_none() -> None:
    _, sink, _ = run(returning([], status="304 Not Modified", headers=[]))
    assert sink.calls == [head(b"304 Not Modified", headers=SERVER, content_length=None, end=True)]


def test_head_request_stops_generating_after_the_first_chunk() -> None:
    body = Body([b"a", b"b", b"c"])
    _, sink, _ = run(returning(body), head_request=True)
    assert sink.calls == [head(b"200 OK", body=b"a"), ("finish",)]
    assert (body.pulled, body.closed) == (1, 1)


def test_flow_control_pulls_only_while_writable_and_pump_resumes() -> None:
    body = Body([b"1", b"2", b"3", b"4"])
    exchange, sink, done = run(returning(body), FakeSink(room=2))
    assert done is False
    assert sink.calls == [head(b"200 OK", body=b"1"), ("body", b"2")]
    assert body.pulled == 2
    sink.room = 1
    assert exchange.pump() is False
    assert sink.calls[2:] == [("body", b"3")]
    sink.room = 10
    assert exchange.pump() is True
    assert sink.calls[3:] == [("body", b"4"), ("finish",)]
    assert exchange.pump() is True  # finished: nothing more
    assert len(sink.calls) == 5
    assert body.closed == 1


# ---------------------------------------------------------------- write()


def test_write_before_returning_a_list() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"w1")
        write(b"")
        write(b"w2")
        return [b"x", b"", b"y"]

    _, sink, _ = run(app)
    assert sink.calls == [
        head(b"200 OK", body=b"w1"),
        ("body", b"w2"),
        ("body", b"x"),
        ("body", b"y"),
        ("finish",),
    ]


def test_write_then_an_iterable_then_write_from_inside_the_iterable() -> None:
    written: list[Any] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        written.append(write)
        write(b"before")
        return Body([b"it0", b"it1"], on_next=lambda i: written[0](b"during%d" % i) if i < 2 else None)

    _, sink, _ = run(app)
    assert sink.calls == [
        head(b"200 OK", body=b"before"),
        ("body", b"during0"),
        ("body", b"it0"),
        ("body", b"during1"),
        ("body", b"it1"),
        ("finish",),
    ]


def test_write_after_the_response_is_complete_raises_and_sends_nothing(logged: Logged) -> None:
    """A late write() (the list response already went out, framed by its length): refused
    with AppError, nothing reaches the sink and nothing is logged by the server."""
    holder: list[Callable[[bytes], None]] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        holder.append(start_response("200 OK", TEXT))
        return [b"done"]

    _, sink, _ = run(app)
    with pytest.raises(AppError, match=r"^write\(\) called after the response was complete$"):
        holder[0](b"late")
    assert sink.calls == [head(b"200 OK", content_length=4, body=b"done", end=True)]
    assert logged.records == []


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_write_accepts_a_bytearray_and_a_memoryview(kind: Callable[[bytes], Any]) -> None:
    """PEP 3333 asks for bytestrings; a bytes-like object is sent as its bytes (in the
    compiled build too, where a ``bytes`` annotation would raise mypyc's TypeError)."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", TEXT)
        write(kind(b"ab"))
        write(kind(b"cd"))
        return []

    _, sink, _ = run(app)
    assert sink.calls == [head(b"200 OK", body=b"ab"), ("body", b"cd"), ("finish",)]
    assert all(type(call[-1]) is bytes for call in sink.calls[1:2])


def test_write_before_start_response_is_a_500(logged: Logged) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        exchange.write(b"x")
        return []

    exchange = Exchange(app, dict(ENVIRON), FakeSink(), clock())
    sink = exchange.sink
    assert isinstance(sink, FakeSink)
    assert exchange.start() is True
    assert sink.calls == [("app_failed",), ("error", 500)]
    assert logged.records == [
        ("ERROR", "Error handling request GET /t", "AppError('write() called before start_response()')")
    ]


def test_write_of_a_str_is_a_500() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", TEXT)("text")
        return []

    _, sink, _ = run(app)
    assert sink.calls == [("app_failed",), ("error", 500)]


def test_write_to_a_gone_client_aborts_without_a_500() -> None:
    sink = FakeSink()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"a")
        sink.gone = True
        write(b"b")
        return [b"never"]

    _, _, done = run(app, sink)
    assert done is True
    assert sink.calls == [head(b"200 OK", body=b"a"), ("abort",)]


def test_blocking_write_waits_for_the_sink_and_fails_when_it_cannot() -> None:
    sink = FakeSink()
    seen: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"a")
        sink.wait_answer = False
        try:
            write(b"b")
        except Exception as exc:
            seen.append(repr(exc))
            raise
        return []

    run(app, sink, blocking=True)
    assert seen == ["ClientDisconnected('client disconnected')"]
    # The client is gone: an abort, not a 500 and not app_failed.
    assert sink.calls == [head(b"200 OK", body=b"a"), ("wait",), ("body", b"b"), ("wait",), ("abort",)]


# ---------------------------------------------------------------- exc_info


def test_exc_info_before_headers_sent_replaces_the_response() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("inner")
        except ValueError:
            start_response("503 Try Later", [("X-Second", "2")], sys.exc_info())
        return [b"sorry"]

    _, sink, _ = run(app)
    assert sink.calls == [head(b"503 Try Later", b"X-Second: 2\r\n" + SERVER, 5, b"sorry", True)]


def test_exc_info_after_headers_sent_reraises_the_same_exception_and_aborts(logged: Logged) -> None:
    original = ValueError("mid-body")
    seen: list[BaseException] = []
    started: list[StartResponse] = []

    def gen() -> Iterator[bytes]:
        yield b"part"
        try:
            raise original
        except ValueError:
            try:
                started[0]("500 Oops", TEXT, sys.exc_info())
            except ValueError as exc:
                seen.append(exc)
                raise
        yield b"never"

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        started.append(start_response)
        start_response("200 OK", TEXT)
        return gen()

    _, sink, _ = run(app)
    assert seen == [original]
    assert sink.calls == [head(b"200 OK", body=b"part"), ("app_failed",), ("abort",)]
    assert logged.records == [
        ("ERROR", "Error after the response to GET /t started; connection aborted", "ValueError('mid-body')")
    ]


def test_exc_info_after_write_reraises_from_the_app_call() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", TEXT)(b"w")
        try:
            raise KeyError("k")
        except KeyError:
            start_response("500 Oops", TEXT, sys.exc_info())
        return [b"never"]

    _, sink, _ = run(app)
    assert sink.calls == [head(b"200 OK", body=b"w"), ("app_failed",), ("abort",)]


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    errors: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", TEXT)
        try:
            start_response("201 Created", TEXT)
        except AppError as exc:
            errors.append(str(exc))
        return [b"first"]

    _, sink, _ = run(app)
    assert errors == ["start_response() called a second time without exc_info"]
    # The first response stands.
    assert sink.calls == [head(b"200 OK", content_length=5, body=b"first", end=True)]


def test_start_response_twice_raising_out_of_the_app_is_a_500() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", TEXT)
        start_response("201 Created", TEXT)
        return []

    _, sink, _ = run(app)
    assert sink.calls == [("app_failed",), ("error", 500)]


def test_no_start_response_is_a_500() -> None:
    body = Body([b"x"])
    _, sink, _ = run(lambda environ, start_response: body)
    assert sink.calls == [("app_failed",), ("error", 500)]
    assert body.closed == 1


def test_invalid_header_from_start_response_is_a_500() -> None:
    _, sink, _ = run(returning([b"x"], headers=[("X-Bad", "a\r\nInjected: 1")]))
    assert sink.calls == [("app_failed",), ("error", 500)]


# ---------------------------------------------------------------- close() on every exit


def test_close_once_after_normal_completion() -> None:
    body = Body([b"a", b"b"])
    exchange, _, _ = run(returning(body))
    exchange.disconnect()  # finished: nothing more happens
    assert exchange.pump() is True
    assert body.closed == 1


def test_close_once_when_iteration_raises_before_the_head(logged: Logged) -> None:
    body = Body([b"a"], fail_at=0)
    _, sink, _ = run(returning(body))
    assert sink.calls == [("app_failed",), ("error", 500)]
    assert body.closed == 1
    assert logged.records == [("ERROR", "Error handling request GET /t", "ValueError('boom at 0')")]


def test_close_once_when_iteration_raises_mid_body() -> None:
    body = Body([b"a", b"b", b"c"], fail_at=2)
    _, sink, _ = run(returning(body))
    assert sink.calls == [head(b"200 OK", body=b"a"), ("body", b"b"), ("app_failed",), ("abort",)]
    assert body.closed == 1


def test_close_once_when_the_client_goes_during_iteration() -> None:
    sink = FakeSink()

    def gone(i: int) -> None:
        if i == 1:
            sink.gone = True

    body = Body([b"a", b"b", b"c"], on_next=gone)
    _, _, done = run(returning(body), sink)
    assert done is True
    # The chunk pulled as the client went is still handed over; then abort.
    assert sink.calls == [head(b"200 OK", body=b"a"), ("body", b"b"), ("abort",)]
    assert (body.pulled, body.closed) == (2, 1)


def test_close_once_when_the_client_goes_while_paused() -> None:
    body = Body([b"a", b"b"])
    exchange, sink, done = run(returning(body), FakeSink(room=1))
    assert done is False
    exchange.disconnect()
    exchange.disconnect()
    assert sink.calls == [head(b"200 OK", body=b"a"), ("abort",)]
    assert body.closed == 1


def test_close_once_when_the_blocking_sink_gives_up() -> None:
    body = Body([b"a", b"b"])
    sink = FakeSink(room=1)
    sink.wait_answer = False
    exchange = Exchange(returning(body), dict(ENVIRON), sink, clock(), blocking=True)
    exchange.run_blocking()
    assert sink.calls == [head(b"200 OK", body=b"a"), ("wait",), ("abort",)]
    assert body.closed == 1


def test_close_once_when_iter_itself_raises() -> None:
    class Broken:
        closed = 0

        def __iter__(self) -> Iterator[bytes]:
            raise RuntimeError("no iterator")

        def close(self) -> None:
            Broken.closed += 1

    _, sink, _ = run(returning(Broken()))
    assert sink.calls == [("app_failed",), ("error", 500)]
    assert Broken.closed == 1


def test_close_raising_is_logged_not_propagated(logged: Logged) -> None:
    class BadClose(Body):
        def close(self) -> None:
            super().close()
            raise OSError("close failed")

    body = BadClose([b"a"])
    _, sink, _ = run(returning(body))
    assert sink.calls == [head(b"200 OK", body=b"a"), ("finish",)]
    assert body.closed == 1
    assert logged.records == [
        ("ERROR", "Error closing the response iterable of /t", "OSError('close failed')")
    ]


def test_adopted_call_resumes_like_start() -> None:
    """The C path's hand-over: ``adopt`` + ``resume`` continue as ``start`` would."""
    body = Body([b"x", b"y"])
    sink = FakeSink()
    exchange = Exchange(returning(body), dict(ENVIRON), sink, clock())
    exchange.start_response("200 OK", TEXT)
    exchange.adopt(body, None)
    assert exchange.resume() is True
    assert sink.calls == [head(b"200 OK", body=b"x"), ("body", b"y"), ("finish",)]
    assert body.closed == 1
    failed = FakeSink()
    other = Exchange(returning(body), dict(ENVIRON), failed, clock())
    other.adopt(None, ValueError("in the app"))
    assert other.resume() is True
    assert failed.calls == [("app_failed",), ("error", 500)]


# ---------------------------------------------------------------- Content-Length


def test_list_longer_than_content_length_is_truncated_and_logged_once(logged: Logged) -> None:
    _, sink, _ = run(returning([b"abc", b"defgh"], headers=[("Content-Length", "5")]))
    assert sink.calls == [head(b"200 OK", SERVER, 5, b"abcde", True)]
    assert logged.records == [
        ("WARNING", "GET /t: application sent more than its Content-Length; extra bytes dropped", "")
    ]


def test_iterable_longer_than_content_length_is_truncated_and_logged_once(logged: Logged) -> None:
    body = Body([b"abc", b"defg", b"hi"])
    exchange, sink, _ = run(returning(body, headers=[("Content-Length", "5")]))
    assert sink.calls == [head(b"200 OK", SERVER, 5, b"abc"), ("body", b"de"), ("finish",)]
    assert exchange.sent == 5
    assert body.pulled == 4  # iteration runs to its end; the extra bytes are dropped
    assert len(logged.records) == 1


def test_body_shorter_than_content_length_is_left_to_the_sink() -> None:
    """Exchange hands the short body over and finishes; the connection's framing
    refuses it and aborts (tests/test_connection_unit.py::test_short_body_aborts)."""
    _, sink, _ = run(returning(Body([b"abc"]), headers=[("Content-Length", "10")]))
    assert sink.calls == [head(b"200 OK", SERVER, 10, b"abc"), ("finish",)]
    _, listed, _ = run(returning([b"abc"], headers=[("Content-Length", "10")]))
    assert listed.calls == [head(b"200 OK", SERVER, 10, b"abc", True)]


# ---------------------------------------------------------------- wsgi.file_wrapper


class CountingFile(io.FileIO):
    closes = 0

    def close(self) -> None:
        if not self.closed:
            CountingFile.closes += 1
        super().close()


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data.bin"
    path.write_bytes(b"0123456789")
    CountingFile.closes = 0
    yield path


def test_file_wrapper_of_a_regular_file_is_sent_with_sendfile(data_file: Path) -> None:
    f = CountingFile(data_file, "rb")
    f.seek(3)
    _, sink, done = run(returning(FileWrapper(f)))
    assert done is True
    ino = data_file.stat().st_ino
    assert sink.calls == [head(b"200 OK", content_length=7), ("file", ino, 3, 7), ("finish",)]
    assert (f.closed, CountingFile.closes) == (True, 1)


def test_file_wrapper_sendfile_is_bounded_by_content_length(data_file: Path) -> None:
    f = CountingFile(data_file, "rb")
    _, sink, _ = run(returning(FileWrapper(f), headers=[("Content-Length", "4")]))
    ino = data_file.stat().st_ino
    assert sink.calls == [head(b"200 OK", SERVER, 4), ("file", ino, 0, 4), ("finish",)]
    assert CountingFile.closes == 1


def test_file_wrapper_without_sendfile_iterates_blocks(data_file: Path) -> None:
    f = CountingFile(data_file, "rb")
    _, sink, _ = run(returning(FileWrapper(f, 4)), use_sendfile=False)
    assert sink.calls == [head(b"200 OK", body=b"0123"), ("body", b"4567"), ("body", b"89"), ("finish",)]
    assert CountingFile.closes == 1


def test_file_wrapper_of_a_non_file_iterates_and_closes_once() -> None:
    class Reader:
        def __init__(self) -> None:
            self.stream = io.BytesIO(b"abcdef")
            self.closed = 0

        def read(self, n: int) -> bytes:
            return self.stream.read(n)

        def close(self) -> None:
            self.closed += 1

    reader = Reader()
    _, sink, _ = run(returning(FileWrapper(reader, 4)))  # type: ignore[arg-type]
    assert sink.calls == [head(b"200 OK", body=b"abcd"), ("body", b"ef"), ("finish",)]
    assert reader.closed == 1


def test_file_wrapper_of_a_pipe_iterates() -> None:
    r, w = os.pipe()
    os.write(w, b"piped")
    os.close(w)
    f = os.fdopen(r, "rb")
    _, sink, _ = run(returning(FileWrapper(f, 64)))
    assert sink.calls == [head(b"200 OK", body=b"piped"), ("finish",)]
    assert f.closed


def test_file_wrapper_with_an_empty_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    CountingFile.closes = 0
    f = CountingFile(path, "rb")
    _, sink, _ = run(returning(FileWrapper(f)))
    # No sendfile call for zero bytes; the head says 0 and the body ends.
    assert sink.calls == [head(b"200 OK", content_length=0), ("finish",)]
    assert CountingFile.closes == 1
