"""Error log set-up, the coarse clock with its cached ``Date`` header, and access logs.

Contract: :class:`Clock` is refreshed once per second by the server's tick (the only
place that reads the wall clock on the hot path), so every response in that second
shares one pre-encoded ``Date:`` line (RFC 9110 §6.6.1 allows second resolution).
:class:`AccessLog` compiles a gunicorn-style format once; rendering a line is a join
of precomputed pieces, and every value taken from the request is escaped so that
control bytes cannot forge log lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Final, TextIO

ERROR_LOGGER: Final = "rapidwsgi.error"
LOG_FORMAT: Final = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
LOG_DATEFMT: Final = "%Y-%m-%d %H:%M:%S %z"

error_log: Final = logging.getLogger(ERROR_LOGGER)


class ErrorStream:
    """``wsgi.errors``: a text stream that follows the error log across reopenings."""

    def __init__(self) -> None:
        self.stream: TextIO = sys.stderr

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def writelines(self, lines: list[str]) -> None:
        self.stream.writelines(lines)

    def flush(self) -> None:
        self.stream.flush()


errors_stream: Final = ErrorStream()
_error_target = "-"


def _open_error_stream(target: str) -> TextIO:
    if target in ("-", ""):
        return sys.stderr
    return open(target, "a", buffering=1, encoding="utf-8")


class JSONFormatter(logging.Formatter):
    """``--error-log-format json``: one JSON object per record and line: ``time`` (ISO
    8601, milliseconds, UTC offset), ``level``, ``pid``, ``message`` and, with a
    traceback, ``exc_info``. Written by the JSON encoder, with every non-ASCII character
    escaped: no message (a client's bytes in a "Bad request" line, a traceback) can
    break the line or the object."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":"))


def iso_time(seconds: float) -> str:
    """Local time, ISO 8601 with milliseconds and the UTC offset."""
    import datetime  # the JSON error log only: not imported by a master without it

    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="milliseconds")


def setup_error_log(level: str, target: str = "-", fmt: str = "text") -> ErrorStream:
    """Configure the error logger (``fmt``: ``text`` or ``json``); return the stream
    for ``wsgi.errors``."""
    global _error_target
    _error_target = target
    stream = _open_error_stream(target)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    error_log.handlers[:] = [handler]
    error_log.setLevel(level.upper())
    error_log.propagate = False
    errors_stream.stream = stream
    return errors_stream


def reopen_error_log() -> None:
    """Reopen the error log file (log rotation, SIGUSR1); stderr is left alone."""
    if _error_target in ("-", ""):
        return
    stream = _open_error_stream(_error_target)
    old = errors_stream.stream
    for handler in error_log.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    errors_stream.stream = stream
    if old is not sys.stderr:
        old.close()


class Clock:
    """Coarse monotonic time plus the per-second header and log timestamps."""

    def __init__(self, server: str | None = "rapidwsgi", date: bool = True) -> None:
        self._server = f"Server: {server}\r\n".encode("latin-1") if server else b""
        self._date_enabled = date
        self.now: float = 0.0
        self.wall: float = 0.0
        #: (Date + Server, Date only, Server only, nothing), see ``wsgi.build_response``.
        self.date_server: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")
        self.log_time: str = ""
        self.update()

    def update(self) -> None:
        self.now = time.monotonic()
        wall = time.time()
        if int(wall) != int(self.wall) or not self.log_time:
            # Imported here, at most once a second, not at the top: only the workers keep
            # a Clock, and email.utils costs the master about 1 MiB.
            from email.utils import formatdate

            date = (
                b"Date: " + formatdate(wall, usegmt=True).encode("ascii") + b"\r\n"
                if self._date_enabled
                else b""
            )
            self.date_server = (date + self._server, date, self._server, b"")
            self.log_time = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(wall))
        self.wall = wall


# ---------------------------------------------------------------------- access log

COMMON: Final = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s'
COMBINED: Final = COMMON + ' "%(f)s" "%(a)s"'
NAMED_FORMATS: Final = {"common": COMMON, "combined": COMBINED}

# Control bytes (C0, DEL and C1: request bytes are decoded as latin-1, so U+0080-U+009F
# are raw bytes 0x80-0x9F, which terminals and line splitters treat as controls), the
# quote and the backslash are escaped as in Apache's mod_log_config.
_ESCAPES: Final = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    0x22: '\\"',
    0x5C: "\\\\",
}


def escape(value: str) -> str:
    return value.translate(_ESCAPES)


class AccessRecord:
    """What the connection knows about one finished exchange."""

    __slots__ = ("duration", "environ", "response_headers", "sent", "status")

    def __init__(
        self,
        environ: Mapping[str, Any],
        status: int,
        sent: int,
        duration: float,
        response_headers: bytes,
    ) -> None:
        self.environ = environ
        self.status = status
        self.sent = sent
        self.duration = duration
        self.response_headers = response_headers


def _env(key: str, default: str = "-") -> Callable[[AccessRecord], str]:
    return lambda r: escape(str(r.environ.get(key) or default))


def _request_line(r: AccessRecord) -> str:
    e = r.environ
    return escape(f"{e.get('REQUEST_METHOD', '-')} {e.get('RAW_URI', '-')} {e.get('SERVER_PROTOCOL', '-')}")


def _response_header(name: str) -> Callable[[AccessRecord], str]:
    pattern = re.compile(rb"(?im)^" + re.escape(name.encode("latin-1")) + rb":[ \t]*(.*?)\r$")

    def get(r: AccessRecord) -> str:
        m = pattern.search(r.response_headers)
        return escape(m.group(1).decode("latin-1")) if m else "-"

    return get


_ATOMS: Final[dict[str, Callable[[AccessRecord], str]]] = {
    "h": _env("REMOTE_ADDR"),
    "l": lambda r: "-",
    "u": _env("REMOTE_USER"),
    "r": _request_line,
    "m": _env("REQUEST_METHOD"),
    "U": _env("PATH_INFO"),
    "q": _env("QUERY_STRING", ""),
    "H": _env("SERVER_PROTOCOL"),
    "s": lambda r: str(r.status),
    "B": lambda r: str(r.sent),
    "b": lambda r: str(r.sent) if r.sent else "-",
    "f": _env("HTTP_REFERER"),
    "a": _env("HTTP_USER_AGENT"),
    "T": lambda r: str(int(r.duration)),
    "M": lambda r: str(int(r.duration * 1000)),
    "D": lambda r: str(int(r.duration * 1_000_000)),
    "L": lambda r: f"{r.duration:.6f}",
    "p": lambda r: f"<{os.getpid()}>",
}
_ATOM_RE: Final = re.compile(r"%\((\{[^}]*\}[ieo]|[a-zA-Z])\)s")


#: The environ key of the default request id header (``X-Request-ID``).
REQUEST_ID_KEY: Final = "HTTP_X_REQUEST_ID"


def _text(value: object) -> str | None:
    """A WSGI string (the request's bytes as latin-1) as the text it was sent as: UTF-8,
    with each byte that is not valid UTF-8 kept as a ``\\xNN`` escape. None stays None."""
    if value is None:
        return None
    text = str(value)
    try:
        return text.encode("latin-1").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # not a WSGI string (set by the application): as it is
        return text


def json_format(request_id_key: str = REQUEST_ID_KEY) -> Callable[[AccessRecord], str]:
    """``--access-logformat json``: one object per line, written by the JSON encoder
    (docs/observability.md lists the fields). Every value taken from the request goes
    through :func:`_text` and the encoder escapes quotes, backslashes, control and
    non-ASCII characters: no header can end the line or the object."""
    encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode

    def render(r: AccessRecord) -> str:
        e = r.environ
        doc = {
            "time": iso_time(time.time()),
            "pid": os.getpid(),
            "remote_addr": _text(e.get("REMOTE_ADDR")),
            "method": _text(e.get("REQUEST_METHOD")),
            "path": _text(e.get("PATH_INFO")),
            "query": _text(e.get("QUERY_STRING", "")),
            "protocol": _text(e.get("SERVER_PROTOCOL")),
            "status": r.status,
            "bytes": r.sent,
            "duration": round(r.duration, 6),
            "user_agent": _text(e.get("HTTP_USER_AGENT")),
            "referer": _text(e.get("HTTP_REFERER")),
            "request_id": _text(e.get(request_id_key)),
        }
        return encode(doc) + "\n"

    return render


#: A request id taken from a trusted peer: 1-200 visible ASCII characters.
_SANE_ID: Final = re.compile(r"[\x21-\x7e]{1,200}")


class RequestIds:
    """``--request-id-header`` (and the JSON access log's ``request_id``): the id of each
    request, in the environ under ``key`` (``HTTP_X_REQUEST_ID`` for ``X-Request-ID``).

    A trusted peer's value (a proxy that set it, see ``--forwarded-allow-ips``) is kept
    when it is sane; any other value is replaced by 32 random hex digits, so a client
    can neither forge another request's id nor smuggle bytes into logs through it.
    ``response_name`` is the header added to responses (None: not added)."""

    def __init__(self, header: str | None) -> None:
        name = header or "X-Request-ID"
        self.key = "HTTP_" + name.upper().replace("-", "_")
        self.response_name = name.encode("latin-1") if header else None
        self._marker = b"\r\n" + name.lower().encode("latin-1") + b":"

    def assign(self, environ: dict[str, Any], trusted: bool) -> str:
        value = environ.get(self.key)
        if not (trusted and isinstance(value, str) and _SANE_ID.fullmatch(value)):
            value = os.urandom(16).hex()
            environ[self.key] = value
        return value

    def add_to(self, headers: bytes, request_id: str) -> bytes:
        """``headers`` (a response's field block) with the id, unless the application
        set that field itself."""
        if self.response_name is None or (b"\r\n" + headers.lower()).find(self._marker) >= 0:
            return headers
        return headers + self.response_name + b": " + request_id.encode("latin-1") + b"\r\n"


def compile_format(
    fmt: str, clock: Clock, request_id_key: str = REQUEST_ID_KEY
) -> Callable[[AccessRecord], str]:
    """Compile a gunicorn-compatible format (``%(h)s``, ``%({header}i)s``, ...), or
    ``json`` (:func:`json_format`)."""
    if fmt == "json":
        return json_format(request_id_key)
    fmt = NAMED_FORMATS.get(fmt, fmt)
    pieces: list[Callable[[AccessRecord], str] | str] = []
    last = 0
    for m in _ATOM_RE.finditer(fmt):
        if m.start() > last:
            pieces.append(fmt[last : m.start()].replace("%%", "%"))
        atom = m.group(1)
        if atom == "t":
            pieces.append(lambda r: clock.log_time)
        elif atom.startswith("{"):
            name, kind = atom[1:-2], atom[-1]
            if kind == "i":
                pieces.append(_env("HTTP_" + name.upper().replace("-", "_")))
            elif kind == "e":
                pieces.append(_env(name))
            else:
                pieces.append(_response_header(name))
        elif atom in _ATOMS:
            pieces.append(_ATOMS[atom])
        else:
            raise ValueError(f"unknown access log atom %({atom})s")
        last = m.end()
    if last < len(fmt):
        pieces.append(fmt[last:].replace("%%", "%"))

    def render(record: AccessRecord) -> str:
        return "".join([p if isinstance(p, str) else p(record) for p in pieces]) + "\n"

    return render


class AccessLog:
    """Writes one line per finished exchange to a file or stdout."""

    def __init__(self, target: str, fmt: str, clock: Clock, request_id_key: str = REQUEST_ID_KEY) -> None:
        self.target = target
        self.render = compile_format(fmt, clock, request_id_key)
        self.stream: IO[str] = self._open()

    def _open(self) -> IO[str]:
        if self.target == "-":
            return sys.stdout
        return open(self.target, "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def log(self, record: AccessRecord) -> None:
        try:
            self.stream.write(self.render(record))
        except Exception:  # a broken log must never break serving
            error_log.exception("access log write failed")

    def flush(self) -> None:
        try:
            self.stream.flush()
        except Exception:
            error_log.exception("access log flush failed")

    def reopen(self) -> None:
        """Reopen the file (log rotation); stdout is left alone."""
        if self.target == "-":
            return
        old = self.stream
        self.stream = self._open()
        old.close()
