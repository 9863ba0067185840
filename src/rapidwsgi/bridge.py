"""One WSGI call, driven to completion: the application, its iterable, and ``close()``.

An :class:`Exchange` runs either inline on the event-loop thread or on an application
thread; in both cases it talks to a :class:`Sink` (the connection, or a thread-safe
proxy of it) and never touches a socket. The rules it enforces (PEP 3333):

* headers are sent with the first non-empty body chunk (or at the end, if empty);
* ``start_response(..., exc_info)`` re-raises once headers are sent, replaces the
  pending response before that;
* an error before headers are sent becomes a 500 with a logged traceback; after that
  the connection is aborted, so a truncated body is never presented as complete;
* bytes beyond the declared Content-Length are dropped (and logged); fewer bytes abort;
* the iterable's ``close()`` is always called: on success, error or client disconnect;
* a ``wsgi.file_wrapper`` around a regular file is sent with ``sendfile(2)``.

Flow control: :meth:`Exchange.pump` pulls from the iterable only while the sink is
writable; inline, the connection calls ``pump()`` again when the transport drains;
on a thread, :meth:`Exchange.run_blocking` waits on the sink instead.
"""

from __future__ import annotations

import contextvars
import os
import stat
from collections.abc import Iterator
from typing import Any, Final, Protocol, cast

from .errors import AppError, ClientDisconnected
from .events import Response
from .log import Clock, error_log
from .wsgi import Environ, FileWrapper, WSGIApp, build_response

_DONE: Final[Any] = object()


class Sink(Protocol):
    """Where an exchange sends its response; implemented by the connection."""

    @property
    def disconnected(self) -> bool: ...

    def send_head(self, response: Response, body: bytes, end: bool) -> None: ...

    def send_body(self, data: bytes) -> None: ...

    def send_file(self, fd: int, offset: int, count: int) -> None: ...

    def finish(self) -> None: ...

    def send_error(self, status: int) -> None: ...

    def app_failed(self) -> None:
        """The application raised (counted: metrics.APP_EXCEPTIONS); from any thread."""

    def abort(self) -> None: ...

    def writable(self) -> bool: ...

    def wait_writable(self) -> bool: ...


class Exchange:
    """Runs one application call against a :class:`Sink` (see the module docstring)."""

    def __init__(
        self,
        app: WSGIApp,
        environ: Environ,
        sink: Sink,
        clock: Clock,
        *,
        head_request: bool = False,
        blocking: bool = False,
        use_sendfile: bool = True,
        context: contextvars.Context | None = None,
    ) -> None:
        self.app = app
        self.environ = environ
        self.sink = sink
        self.clock = clock
        self.head_request = head_request
        self.blocking = blocking
        self.use_sendfile = use_sendfile
        #: Every call into the application (app, iteration, close) runs in this
        #: context: one per exchange, so context variables neither leak between
        #: requests nor get lost between the chunks of one response.
        self.context = context if context is not None else contextvars.copy_context()
        self.response: Response | None = None
        self.head_sent = False
        self.sent = 0
        self.finished = False
        self._result: Any = None
        self._iterator: Iterator[bytes] | None = None
        self._warned_overflow = False
        self._adopted: tuple[Any, BaseException | None] | None = None

    # ------------------------------------------------------------ PEP 3333 callables

    # (object, not str/list: what an application passes is validated by build_response,
    # which raises AppError; typed parameters would make the compiled build raise a
    # TypeError of its own first.)
    def start_response(self, status: object, headers: object, exc_info: Any = None) -> Any:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle
        elif self.response is not None:
            raise AppError("start_response() called a second time without exc_info")
        self.response = build_response(status, headers, self.clock.date_server)
        return self.write

    # (data: object for the same reason: a bytearray or memoryview is accepted below,
    # which a ``bytes`` annotation would make the compiled build refuse.)
    def write(self, data: object) -> None:
        """The legacy ``write()`` callable: send now (blocks on a thread until sent).

        Raises AppError before start_response() and once the response is complete (the
        application returned and its iterable ended: nothing more can be framed)."""
        if self.response is None:
            raise AppError("write() called before start_response()")
        if self.finished:
            raise AppError("write() called after the response was complete")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() expects bytes, not {type(data).__name__}")
        if self.sink.disconnected:
            raise ClientDisconnected("client disconnected")
        if data:
            self._emit(bytes(data))
        if self.blocking and not self.sink.wait_writable():
            raise ClientDisconnected("client disconnected")

    # ------------------------------------------------------------ driving

    def run_blocking(self) -> None:
        """Run to completion on an application thread (waits for the sink)."""
        try:
            if self.start():
                return
            while not self.pump():
                if not self.sink.wait_writable() and not self.finished:
                    self._abandon()
                    return
        except BaseException as exc:
            if not self.finished:
                self._fail(exc)

    def start(self) -> bool:
        """Call the application; True when the exchange is already finished."""
        try:
            result = self.app(self.environ, self.start_response)
        except Exception as exc:
            self._fail(exc)
            return True
        return self._started(result)

    def adopt(self, result: Any, exc: BaseException | None) -> None:
        """Take over an application call made elsewhere (the C request path): its
        return value, or the exception it raised; :meth:`resume` then continues."""
        self._adopted = (result, exc)

    def resume(self) -> bool:
        """Continue an adopted call exactly where :meth:`start` would after the call."""
        adopted = self._adopted
        assert adopted is not None
        self._adopted = None
        result, exc = adopted
        if exc is not None:
            self._fail(exc)
            return True
        return self._started(result)

    def _started(self, result: Any) -> bool:
        self._result = result
        try:
            kind = type(result)
            if kind is list or kind is tuple:
                self._send_all(cast("list[bytes] | tuple[bytes, ...]", result))
                return True
            if kind is FileWrapper and self.use_sendfile and self._try_sendfile(cast(FileWrapper, result)):
                return self.pump()
            self._iterator = iter(result)
        except Exception as exc:
            self._fail(exc)
            return True
        return self.pump()

    def pump(self) -> bool:
        """Move body chunks to the sink while it is writable; True when finished."""
        if self.finished:
            return True
        sink = self.sink
        iterator = self._iterator
        assert iterator is not None
        try:
            while sink.writable():
                chunk = next(iterator, _DONE)
                if chunk is _DONE:
                    self._complete()
                    return True
                if chunk:
                    self._emit(chunk)
                    if self.head_request:
                        # The head is all a HEAD response carries: stop generating.
                        self._complete()
                        return True
        except Exception as exc:
            self._fail(exc)
            return True
        if sink.disconnected:
            self._abandon()
            return True
        return False

    def disconnect(self) -> None:
        """The client went away while the exchange was paused: stop and clean up."""
        if not self.finished:
            self._abandon()

    # ------------------------------------------------------------ internals

    def _send_all(self, result: list[bytes] | tuple[bytes, ...]) -> None:
        """The common case: the whole body is known, send it in one write."""
        response = self.response
        if response is None:
            raise AppError("the application returned without calling start_response()")
        if self.head_sent:
            # The app already used write(): its list follows what was written.
            for chunk in result:
                if chunk:
                    self._emit(chunk)
            self._complete()
            return
        body = result[0] if len(result) == 1 else b"".join(result)
        if type(body) is not bytes:
            if not isinstance(body, (bytearray, memoryview)):
                raise AppError(f"response body items must be bytes, not {type(body).__name__}")
            body = bytes(body)
        length = response.content_length
        if length is None:
            if response.status != 304:
                # RFC 9110 §8.6: a 304's Content-Length would describe the 200's
                # content, which only the application knows: none unless it gave one.
                response.content_length = len(body)
        elif len(body) > length:
            body = self._overflow(body, length)
        self.head_sent = True
        self.sent = len(body)
        self.finished = True
        self.sink.send_head(response, body, True)
        self._close()

    def _try_sendfile(self, wrapper: FileWrapper) -> bool:
        """Start a zero-copy send of a regular file; False to fall back to iteration."""
        response = self.response
        if response is None:
            return False
        try:
            fd = wrapper.filelike.fileno()
            st = os.fstat(fd)
            offset = wrapper.filelike.tell()
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        count = max(st.st_size - offset, 0)
        if response.content_length is None:
            response.content_length = count
        else:
            count = min(count, response.content_length)
        self.head_sent = True
        self.sink.send_head(response, b"", False)
        if count:
            self.sink.send_file(fd, offset, count)
            self.sent = count
        self._iterator = iter(())
        return True

    def _emit(self, chunk: bytes) -> None:
        response = self.response
        if response is None:
            raise AppError("the response iterable yielded data before start_response()")
        length = response.content_length
        if length is not None and self.sent + len(chunk) > length:
            chunk = self._overflow(chunk, length - self.sent)
            if not chunk:
                return
        if type(chunk) is not bytes:
            if not isinstance(chunk, (bytearray, memoryview)):
                raise AppError(f"response body items must be bytes, not {type(chunk).__name__}")
            chunk = bytes(chunk)
        self.sent += len(chunk)
        if self.head_sent:
            self.sink.send_body(chunk)
        else:
            self.head_sent = True
            self.sink.send_head(response, chunk, False)

    def _overflow(self, chunk: bytes, room: int) -> bytes:
        if not self._warned_overflow:
            self._warned_overflow = True
            error_log.warning(
                "%s %s: application sent more than its Content-Length; extra bytes dropped",
                self.environ.get("REQUEST_METHOD"),
                self.environ.get("RAW_URI"),
            )
        return chunk[: max(room, 0)]

    def _complete(self) -> None:
        self.finished = True
        try:
            if not self.head_sent:
                response = self.response
                if response is None:
                    raise AppError("the application returned without calling start_response()")
                if response.content_length is None and response.status != 304:  # (see above)
                    response.content_length = 0
                self.head_sent = True
                self.sink.send_head(response, b"", True)
            else:
                self.sink.finish()
        except Exception as exc:
            self.finished = False
            self._fail(exc)
            return
        self._close()

    def _fail(self, exc: BaseException) -> None:
        self.finished = True
        if isinstance(exc, ClientDisconnected) or self.sink.disconnected:
            error_log.debug("client disconnected during %s", self.environ.get("RAW_URI"))
            self.sink.abort()
        elif not self.head_sent:
            self.sink.app_failed()
            error_log.error(
                "Error handling request %s %s",
                self.environ.get("REQUEST_METHOD"),
                self.environ.get("RAW_URI"),
                exc_info=exc,
            )
            self.head_sent = True
            self.sink.send_error(500)
        else:
            self.sink.app_failed()
            error_log.error(
                "Error after the response to %s %s started; connection aborted",
                self.environ.get("REQUEST_METHOD"),
                self.environ.get("RAW_URI"),
                exc_info=exc,
            )
            self.sink.abort()
        self._close()

    def _abandon(self) -> None:
        self.finished = True
        self.sink.abort()
        self._close()

    def _close(self) -> None:
        result = self._result
        self._result = None
        self._iterator = None
        kind = type(result)
        if kind is list or kind is tuple or result is None:
            return  # the common case; a failed getattr would cost an exception
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                error_log.exception("Error closing the response iterable of %s", self.environ.get("RAW_URI"))
