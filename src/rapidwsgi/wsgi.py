"""PEP 3333 without I/O: environ building, response-head validation, input streams.

Contract:

* The environ is built here, and only here, in four stages, each starting from the
  dict the one before made (so each fact is computed once, where it is known):

  1. per process and listener: :func:`process_environ` (the ``wsgi.*`` constants,
     SERVER_SOFTWARE, SCRIPT_NAME, ``wsgi.errors``, ``wsgi.file_wrapper``) and
     :func:`environ_template` (``wsgi.url_scheme``/HTTPS of a TLS listener, and the
     commonest value of every per-connection and per-request key);
  2. per connection: :func:`connection_environ` (SERVER_NAME/PORT, REMOTE_ADDR/PORT),
     :func:`set_client` (the client a PROXY protocol header names);
  3. per request: :func:`build_environ` (method, path, query, header fields, CGI
     variables of a gateway, ``wsgi.input``);
  4. forwarding: :func:`forward_environ` (a trusted proxy's ``Forwarded`` /
     ``X-Forwarded-*`` / ``X-Real-IP``, as ``forwarded.ForwardingPolicy`` says).

  :func:`request_environ` is stages 3 and 4 for a connection's request. The C path
  (``_cfast.c``) does stage 3 itself for the requests it serves, from the same stage-2
  dict, and calls back into stage 4; tests/test_cpath.py holds the two to identical
  environs.
* :func:`build_response` validates what an application passed to ``start_response``
  (status line, header names and values as native strings, no CR/LF, no hop-by-hop
  headers) and serialises it once. It is the one response writer every front-end uses;
  framing headers are left to the protocol.
* :class:`StreamInput` is the ``wsgi.input`` fed by the event loop and read by an
  application thread; complete bodies use :class:`io.BytesIO`.

Nothing here touches sockets or the event loop; thread hand-off is done through the
callbacks a connection passes in.
"""

from __future__ import annotations

import io
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import IO, Any, Final
from urllib.parse import unquote_to_bytes

from ._bounded import remember
from .errors import AppError, ClientDisconnected
from .events import Request, Response
from .forwarded import ForwardingPolicy, TrustedPeers, is_address, is_port, node, parse_forwarded, split_items

__all__ = [
    "EMPTY_INPUT",
    "FileWrapper",
    "StreamInput",
    "build_environ",
    "build_response",
    "connection_environ",
    "environ_template",
    "error_response",
    "forward_environ",
    "process_environ",
    "request_environ",
    "set_client",
]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# ------------------------------------------------------- environ, stage 1: listener


def process_environ(*, errors: object, multithread: bool, script_name: str, software: str) -> Environ:
    """The keys that are the same for every request of the process (PEP 3333
    §"environ Variables"): ``wsgi.*`` constants, SERVER_SOFTWARE, SCRIPT_NAME
    (``--root-path``, without a trailing slash). ``wsgi.multiprocess`` is False: a
    worker's requests are not shared with other processes' state."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": errors,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": software,
        "SCRIPT_NAME": script_name.rstrip("/"),
    }


def environ_template(base: Environ, tls: bool = False) -> Environ:
    """What each connection of a listener copies its environ from: ``base``
    (:func:`process_environ`), ``wsgi.url_scheme`` "https" and ``HTTPS`` "on" for a TLS
    listener, and every key the later stages set, with its commonest value (no peer
    yet; GET, no query, HTTP/1.1, no body). Every request overwrites the request keys
    (:func:`build_environ`; the C path skips writing a value that is already right), so
    the keys are in the table from the start and a copy never grows it for them."""
    template = {
        **base,
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
    if tls:
        template["wsgi.url_scheme"] = "https"
        template["HTTPS"] = "on"
    return template


# ----------------------------------------------------- environ, stage 2: connection


def connection_environ(template: Environ, sockname: object, peername: object) -> Environ:
    """A connection's environ: a copy of its listener's :func:`environ_template` with
    SERVER_NAME/PORT (the local address the client reached) and REMOTE_ADDR/PORT (the
    peer), from the transport's ``sockname`` and ``peername``. A unix socket has no
    port: SERVER_NAME "localhost", SERVER_PORT "0" (HTTP_HOST is what URL building
    uses anyway), REMOTE_ADDR and REMOTE_PORT empty."""
    env = template.copy()
    if isinstance(sockname, tuple):
        env["SERVER_NAME"] = str(sockname[0])
        env["SERVER_PORT"] = str(sockname[1])
    else:
        env["SERVER_NAME"] = "localhost"
        env["SERVER_PORT"] = "0"
    if isinstance(peername, tuple):
        env["REMOTE_ADDR"] = str(peername[0])
        env["REMOTE_PORT"] = str(peername[1])
    return env


def set_client(env: Environ, address: str, port: int) -> None:
    """The client a trusted peer's PROXY protocol header names replaces the peer in a
    connection's environ (in place: the C path holds the same dict)."""
    env["REMOTE_ADDR"] = address
    env["REMOTE_PORT"] = str(port)


# -------------------------------------------------------- environ, stage 3: request

# Request header names already converted to environ keys; "" marks a name that is
# dropped. Names containing "_" are dropped so that "X-Forwarded_For" cannot pose as
# "X-Forwarded-For" once both become HTTP_X_FORWARDED_FOR (the waitress rule).
_SPECIAL_KEYS: Final[dict[bytes, str]] = {
    b"content-type": "CONTENT_TYPE",
    b"content-length": "",  # set from the parsed framing, see build_environ
}
#: Environ keys by field name (bounded: _bounded.remember), the special ones from the start.
_ENVIRON_KEYS: Final[dict[bytes, str]] = dict(_SPECIAL_KEYS)
_MAX_CACHED_KEYS: Final = 512


def _environ_key(name: bytes) -> str:
    key = _ENVIRON_KEYS.get(name)
    if key is None:
        key = _SPECIAL_KEYS.get(name)  # (when a full cache was emptied)
        if key is None:
            key = "" if name.find(b"_") >= 0 else "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        remember(_ENVIRON_KEYS, name, key, _MAX_CACHED_KEYS)
    return key


# Decoded request targets (PATH_INFO, QUERY_STRING, RAW_URI) by raw target: popular
# URLs repeat, and decoding is pure. Bounded (_bounded.remember).
_targets: Final[dict[bytes, tuple[str, str, str]]] = {}
_MAX_CACHED_TARGETS: Final = 1024
_methods: Final[dict[bytes, str]] = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")
}


def _decode_target(request: Request) -> tuple[str, str, str]:
    path = request.path
    if path.find(b"%") >= 0:  # not `in`: see _semantics.py on bytes.__contains__
        path = unquote_to_bytes(path)
    decoded = (path.decode("latin-1"), request.query.decode("latin-1"), request.target.decode("latin-1"))
    if len(request.target) <= 256:  # (long, one-off targets are not worth keeping)
        remember(_targets, request.target, decoded, _MAX_CACHED_TARGETS)
    return decoded


def build_environ(base: Environ, request: Request, wsgi_input: object) -> Environ:
    """A fresh environ for ``request`` (PEP 3333 §"environ Variables").

    ``base`` holds the per-connection keys (SERVER_*, REMOTE_*, wsgi.* constants,
    SCRIPT_NAME). PATH_INFO is percent-decoded and then decoded as latin-1 so that
    the original bytes survive (PEP 3333 "bytes-as-unicode"); QUERY_STRING and
    RAW_URI / REQUEST_URI are the raw bytes as latin-1.
    """
    environ = base.copy()
    decoded = _targets.get(request.target)
    if decoded is None:
        decoded = _decode_target(request)
    path_info, query, target = decoded
    script_name: str = environ["SCRIPT_NAME"]  # --root-path
    extra = request.extra
    if extra:
        # A gateway's CGI variables (uwsgi, FastCGI): REMOTE_ADDR, SERVER_NAME, ... win
        # over the computed ones. Its SCRIPT_NAME (only a mount point above the path,
        # see protocols/cgi.py) applies unless --root-path says otherwise.
        environ.update(extra)
        if script_name:
            environ["SCRIPT_NAME"] = script_name
        else:
            script_name = environ["SCRIPT_NAME"]
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name) :]
    method = _methods.get(request.method)
    if method is None:
        method = request.method.decode("latin-1")
    environ["REQUEST_METHOD"] = method
    environ["PATH_INFO"] = path_info
    environ["QUERY_STRING"] = query
    environ["RAW_URI"] = target
    environ["REQUEST_URI"] = target
    if not extra or "SERVER_PROTOCOL" not in extra:
        environ["SERVER_PROTOCOL"] = "HTTP/1.1" if request.version == b"1.1" else "HTTP/1.0"
    environ["wsgi.input"] = wsgi_input
    for name, value in request.headers:
        key = _ENVIRON_KEYS.get(name)
        if key is None:
            key = _environ_key(name)
        if not key:
            if name == b"content-length":
                # Set from the parsed framing (never joined from repeats), also when it
                # is 0: a client that sent "Content-Length: 0" said so (PEP 3333 "may
                # be empty or absent" is for a field that was not sent).
                environ["CONTENT_LENGTH"] = str(request.content_length)
            continue
        text = value.decode("latin-1")
        if key in environ:
            # RFC 9110 §5.3: repeated fields combine into one comma-separated list;
            # Cookie uses "; " (RFC 6265 §5.4).
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + text
        else:
            environ[key] = text
    if request.authority is not None:
        # RFC 9112 §3.2.2: the absolute-form target's authority replaces Host.
        environ["HTTP_HOST"] = request.authority.decode("latin-1")
    return environ


def request_environ(
    base: Environ, request: Request, wsgi_input: object, forwarding: ForwardingPolicy | None
) -> Environ:
    """Stages 3 and 4: ``request``'s environ from its connection's ``base``, rewritten
    by ``forwarding`` (None: the peer is not trusted to forward, or speaks a gateway
    protocol whose CGI variables are authoritative) when it carries forwarding fields."""
    environ = build_environ(base, request, wsgi_input)
    if forwarding is not None and request.forwarded:
        forward_environ(environ, forwarding)
    return environ


# ----------------------------------------------------- environ, stage 4: forwarding


def forward_environ(environ: Environ, policy: ForwardingPolicy) -> None:
    """Rewrite the environ of a request from a trusted peer (only: the caller checks
    the peer) from the forwarding fields ``policy`` believes; with
    ``--clear-untrusted-proxy-headers`` the others are removed first. The rules (which
    field wins, the right-most untrusted hop) are ``ForwardingPolicy``'s docstring."""
    for key in policy.triggers:
        if key in environ:
            break
    else:
        return  # the common case: a direct client on a trusted address sends none
    for key in policy.clear:
        environ.pop(key, None)
    if policy.use_forwarded:
        forwarded = environ.get("HTTP_FORWARDED")
        if forwarded:
            _apply_rfc7239(environ, forwarded, policy.trusted)
            return
    if policy.use_for and environ.get("HTTP_X_FORWARDED_FOR"):
        addresses = split_items(environ["HTTP_X_FORWARDED_FOR"])
        client_address = addresses[0] if addresses else ""
        for address in reversed(addresses):
            client_address = address
            if not policy.trusted.listed(address):
                break
        if client_address:
            environ["REMOTE_ADDR"] = client_address
            environ["REMOTE_PORT"] = ""
    elif policy.use_real_ip:
        real_ip = (environ.get("HTTP_X_REAL_IP") or "").strip()
        if real_ip and is_address(real_ip):
            environ["REMOTE_ADDR"] = real_ip
            environ["REMOTE_PORT"] = ""
    if policy.use_proto:
        protos = split_items(environ.get("HTTP_X_FORWARDED_PROTO") or "")
        if protos and protos[-1].lower() in ("http", "https"):
            environ["wsgi.url_scheme"] = protos[-1].lower()
    if policy.use_host:
        hosts = split_items(environ.get("HTTP_X_FORWARDED_HOST") or "")
        if hosts:
            environ["HTTP_HOST"] = hosts[-1]
    if policy.use_port:
        ports = split_items(environ.get("HTTP_X_FORWARDED_PORT") or "")
        if ports and is_port(ports[-1]):
            environ["SERVER_PORT"] = ports[-1]


def _apply_rfc7239(environ: Environ, value: str, trusted: TrustedPeers) -> None:
    # RFC 7239 §5.2: "for" of the right-most element not itself a trusted proxy;
    # "proto"/"host" of the nearest (last) element, the one our peer wrote.
    elements = parse_forwarded(value)
    if not elements:
        return
    client = elements[0]
    for element in reversed(elements):
        address, _ = node(element.get("for", ""))
        client = element
        if not trusted.listed(address):
            break
    if "for" in client:
        address, port = node(client["for"])
        if address and not address.startswith("_") and address != "unknown":
            environ["REMOTE_ADDR"] = address
            environ["REMOTE_PORT"] = port
    last = elements[-1]
    proto = last.get("proto", "").lower()
    if proto in ("http", "https"):
        environ["wsgi.url_scheme"] = proto
    if last.get("host"):
        environ["HTTP_HOST"] = last["host"]


class _EmptyInput:
    """``wsgi.input`` for requests without a body: always at end of stream."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


EMPTY_INPUT: Final = _EmptyInput()


class Released:
    """``with Released(gate):`` a lock the calling thread holds (or None: nothing to do)
    is let go for the block and taken again after it: an inline worker's helper thread
    waiting for the loop must not keep the loop out of application code."""

    __slots__ = ("_gate",)

    def __init__(self, gate: Any) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        if self._gate is not None:
            self._gate.release()

    def __exit__(self, *exc: object) -> None:
        if self._gate is not None:
            self._gate.acquire()


class StreamInput:
    """``wsgi.input`` that the event loop feeds while an application thread reads.

    Loop-thread side: :meth:`feed`, :meth:`feed_eof`, :meth:`feed_error`, :meth:`discard`.
    Application-thread side: the file-like reading API (``read``, ``readline``,
    ``readlines``, iteration). ``on_wanted`` is called (from the reading thread, so it
    must be thread-safe, e.g. ``loop.call_soon_threadsafe``) the first time the
    application reads (the moment to send ``100 Continue``) and whenever the buffer
    drains below half of ``high_water`` (the moment to resume reading the socket).
    """

    def __init__(self, on_wanted: Callable[[], None], high_water: int = 256 * 1024, gate: Any = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        #: A lock the reading thread holds while it runs application code, released
        #: while a read may wait for the loop (see ``connection.ServerContext.gate``).
        self._gate = gate
        self._buf = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._on_wanted = on_wanted
        self._high_water = high_water
        self._started = False
        self._discarding = False

    # -- loop side

    def feed(self, data: bytes) -> bool:
        """Append body bytes; True means the buffer is full and reading should pause."""
        with self._cond:
            if self._discarding:
                return False
            self._buf += data
            self._cond.notify_all()
            return len(self._buf) >= self._high_water

    def feed_eof(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def feed_error(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def discard(self) -> None:
        """Forget buffered bytes and ignore further ones (the response is done)."""
        with self._cond:
            self._discarding = True
            self._buf.clear()
            self._error = ClientDisconnected("request finished")
            self._cond.notify_all()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    # -- application side

    def _wait(self) -> bool:
        """Block until some bytes are buffered or the body ended; False at the end."""
        if not self._started:
            self._started = True
            self._on_wanted()
        while not self._buf:
            if self._error is not None:
                raise self._error
            if self._eof:
                return False
            self._cond.wait()
        return True

    def _take(self, n: int) -> bytes:
        buf = self._buf
        half = self._high_water // 2
        was_full = len(buf) >= half
        data = bytes(buf[:n])
        del buf[:n]
        if was_full and len(buf) < half:
            self._on_wanted()
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read ``size`` bytes (all, if negative or None), fewer only at end of body."""
        with Released(self._gate):
            return self._read(size)

    def _read(self, size: int | None) -> bytes:
        limit = sys.maxsize if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        with self._cond:
            while got < limit and self._wait():
                part = self._take(min(limit - got, len(self._buf)))
                parts.append(part)
                got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        with Released(self._gate):
            return self._readline(size)

    def _readline(self, size: int | None) -> bytes:
        limit = sys.maxsize if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        with self._cond:
            while got < limit and self._wait():
                buf = self._buf
                i = buf.find(b"\n", 0, limit - got)
                if i >= 0:
                    parts.append(self._take(i + 1))
                    break
                part = self._take(min(limit - got, len(buf)))
                parts.append(part)
                got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """``wsgi.file_wrapper`` (PEP 3333 §"Optional Platform-Specific File Handling").

    Iterating reads ``blksize`` blocks; the server recognises an instance wrapping a
    regular file and sends it with ``sendfile(2)`` instead of iterating.
    """

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


# ---------------------------------------------------------------------- responses

# PEP 3333 §"The start_response() Callable": status is "NNN reason"; headers are
# (name, value) native strings. The block pattern validates every serialised line at
# once: names are tokens (RFC 9110 §5.1) and values hold no NUL or other control
# characters and nothing outside latin-1. A value containing CRLF could still pass as
# *two* valid lines, so the serialiser also requires exactly one CR and one LF per
# header: nothing an app sends can add a line to the head.
_STATUS: Final = re.compile(r"([1-9][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)")
_HEADER_BLOCK: Final = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\t\x20-\x7e\x80-\xff]*\r\n)*")
# RFC 9110 §7.6.1 connection options and the fields PEP 3333 calls hop-by-hop.
_HOP_BY_HOP: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)
_SPECIAL_OUT: Final = _HOP_BY_HOP | {"content-length", "date", "server"}

#: Parsed status lines (bounded: _bounded.remember; _cfast.c reads it too).
_status_cache: Final[dict[str, tuple[int, bytes]]] = {}
_MAX_CACHED_STATUSES: Final = 256


def _parse_status(status: object) -> tuple[int, bytes]:
    if type(status) is not str:
        raise AppError(f"status must be a str, not {type(status).__name__}")
    cached = _status_cache.get(status)
    if cached is not None:
        return cached
    m = _STATUS.fullmatch(status)
    if m is None:
        raise AppError(f"invalid status line {status!r} (expected e.g. '200 OK')")
    code = int(m.group(1))
    if code < 200:
        raise AppError(f"informational status {status!r} cannot be sent by a WSGI app")
    parsed = (code, status.encode("latin-1"))
    remember(_status_cache, status, parsed, _MAX_CACHED_STATUSES)
    return parsed


# Header lists already validated and serialised, keyed by their content (applications
# send the same few header sets over and over). Bounded (_bounded.remember); _cfast.c
# reads it too.
_headers_cache: Final[dict[tuple[Any, ...], tuple[bytes, int | None, bool, int]]] = {}
_MAX_CACHED_HEADERS: Final = 512

# Indexes into Clock.date_server: which of our Date/Server lines to add.
_ADD_BOTH: Final = 0
_ADD_DATE: Final = 1
_ADD_SERVER: Final = 2
_ADD_NONE: Final = 3


def build_response(
    status: object, headers: object, date_server: tuple[bytes, bytes, bytes, bytes]
) -> Response:
    """Validate and serialise an application's ``start_response`` arguments.

    ``date_server`` is ``(date_and_server, date_only, server_only, b"")``: the cached
    ``Date``/``Server`` lines, of which those the application did not set are added.
    Raises :class:`AppError` on any PEP 3333 or RFC 9110 violation.
    """
    code, status_line = _parse_status(status)
    block, content_length, close, add = header_parts(headers)
    return Response(code, status_line, block + date_server[add], content_length, close)


def header_parts(headers: object) -> tuple[bytes, int | None, bool, int]:
    """Validate an application's header list (cached by content): ``(block,
    content_length, close, date_server index)``; raises :class:`AppError`.

    The C request path (``_cfast.c``) looks up the same cache and calls this on a miss.
    """
    if type(headers) is not list:
        raise AppError(f"response headers must be a list, not {type(headers).__name__}")
    try:
        key: tuple[Any, ...] | None = tuple(headers)
        cached = _headers_cache.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable item: _serialise_headers reports it
        key = cached = None
    if cached is None:
        cached = _serialise_headers(headers)
        if key is not None:
            remember(_headers_cache, key, cached, _MAX_CACHED_HEADERS)
    return cached


def _serialise_headers(headers: list[Any]) -> tuple[bytes, int | None, bool, int]:
    """Validate an application's header list; return (block, length, close, Date/Server mode)."""
    content_length: int | None = None
    close = False
    has_date = has_server = False
    parts: list[str] = []
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise AppError(f"response header {item!r} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise AppError(f"response header {item!r} must be a pair of str")
        lname = name.lower()
        if lname in _SPECIAL_OUT:
            if lname == "content-length":
                text = value.strip()
                if not text.isdigit() or not text.isascii():
                    raise AppError(f"invalid Content-Length {value!r}")
                if content_length is not None and content_length != int(text):
                    raise AppError("conflicting Content-Length headers")
                content_length = int(text)
                continue
            if lname == "date":
                has_date = True
            elif lname == "server":
                has_server = True
            elif lname == "connection" and value.strip().lower() in ("close", "keep-alive"):
                # The one hop-by-hop field an app may use: asking to close. The
                # protocol writes the field itself (and "keep-alive" is its decision).
                close = close or value.strip().lower() == "close"
                continue
            else:
                raise AppError(f"hop-by-hop header {name!r} cannot be set by a WSGI app")
        parts.append(f"{name}: {value}\r\n")
    block = "".join(parts)
    n = len(parts)
    if block.count("\n") != n or block.count("\r") != n or _HEADER_BLOCK.fullmatch(block) is None:
        raise AppError(_diagnose_headers(headers))
    if has_date:
        add = _ADD_NONE if has_server else _ADD_SERVER
    else:
        add = _ADD_DATE if has_server else _ADD_BOTH
    return block.encode("latin-1"), content_length, close, add


def _diagnose_headers(headers: list[tuple[str, str]]) -> str:
    for name, value in headers:
        line = f"{name}: {value}\r\n"
        if line.count("\n") != 1 or line.count("\r") != 1:
            return f"CR or LF in response header {name!r}: {value!r}"
        if _HEADER_BLOCK.fullmatch(line) is None:
            return f"invalid response header {name!r}: {value!r} (control or non-latin-1 characters)"
    return "invalid response headers"


def error_response(
    status: int, date_server: tuple[bytes, bytes, bytes, bytes], close: bool = True, extra: bytes = b""
) -> tuple[Response, bytes]:
    """A minimal plain-text response the server itself sends (4xx/5xx, the health
    path's 200); ``extra``: more header lines, each ending in CRLF."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = f"{status} {phrase}\n".encode("latin-1")
    head = b"Content-Type: text/plain; charset=utf-8\r\n" + extra + date_server[0]
    return Response(status, f"{status} {phrase}".encode("latin-1"), head, len(body), close), body


def buffered_input(chunks: list[bytes]) -> object:
    """``wsgi.input`` for a body that was received completely."""
    if not chunks:
        return EMPTY_INPUT
    return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))
