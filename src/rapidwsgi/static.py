"""Static files served by the server itself (``--static URL_PREFIX=DIRECTORY``).

A request whose path falls under a mount never reaches the application: the
connection runs :class:`StaticFiles` in its place, on the event-loop thread (also with
``--threads``), through the same exchange and response writer as the application's
responses, so framing, keep-alive, HEAD, the access log and ``sendfile(2)`` are shared.

Rules (each cites the section it implements):

* Methods: GET and HEAD; OPTIONS answers 204 with ``Allow``; anything else 405 with
  ``Allow`` (RFC 9110 §15.5.6). Range is honoured for GET only (RFC 9110 §14.2).
* Paths are resolved segment by segment from the percent-decoded path: an empty,
  ``.`` or ``..`` segment, a NUL, a backslash, an encoded ``/`` (``%2F``) or a dotfile
  (unless ``--static-dotfiles``) is a 404, never a 403 (what is hidden does not exist).
  A symlink whose target leaves the mount is a 404 unless ``--static-follow-symlinks``.
  Only regular files are served; a directory is ``index.html`` with
  ``--static-index`` (a path without its trailing slash is redirected there, 301),
  otherwise a 404; never a listing.
* Validators (RFC 9110 §8.8): a strong ``ETag`` from size and mtime (each
  precompressed variant has its own), ``Last-Modified`` from the mtime (never later than
  now, §8.8.2.1).
* Preconditions in the order of RFC 9110 §13.2.2: If-Match (strong) / else
  If-Unmodified-Since → 412; If-None-Match (weak) / else If-Modified-Since → 304.
* Ranges (RFC 9110 §14): one satisfiable range → 206 with ``Content-Range``; none →
  416 with ``Content-Range: bytes */SIZE``; several that do not coalesce into one →
  200 with the whole file (a server may ignore Range, §14.2); an invalid Range header
  is ignored. ``If-Range`` (§13.1.5) with a strong ETag or the exact Last-Modified
  date keeps the range, anything else gets the whole file.
* Precompressed variants (``FILE.br``, ``FILE.gz`` beside ``FILE``) are chosen by
  ``Accept-Encoding`` q-values (RFC 9110 §12.5.3; br before gzip on a tie) for
  requests without a Range (a range of a compressed variant is rarely what a client
  can use); every response for a file that has a variant says ``Vary: Accept-Encoding``.
* The stat cache: what a path resolved to (a file with its headers, and its bytes when
  small; a miss; a redirect) is kept for ``--static-cache-ttl`` seconds, so a hot small
  file costs no system call; after that the path is resolved and stat'ed again, so a
  changed file is picked up (its ETag changes with it). Large files are opened per
  request and checked with ``fstat`` against the cached entry.
"""

from __future__ import annotations

import datetime
import email.utils
import errno
import mimetypes
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, cast

from .errors import ConfigError
from .events import Response
from .wsgi import Environ, FileWrapper

#: Files up to this size are kept in memory (and sent with the head in one write).
SMALL_FILE: Final = 256 * 1024
#: At most this many paths are cached (oldest first out), and at most CACHE_BYTES of
#: small files' contents.
CACHE_ENTRIES: Final = 4096
CACHE_BYTES: Final = 64 * 1024 * 1024
#: Reads for a file sent without sendfile (TLS): block size.
READ_BLOCK: Final = 256 * 1024
#: A Range header with more parts than this is ignored (RFC 9110 §14.2 lets a server
#: ignore a Range it finds too complex; many tiny ranges are a known amplification).
MAX_RANGES: Final = 64
#: ``:immutable``: a year, the longest max-age RFC 9111 §5.2.2.1 suggests relying on.
IMMUTABLE_MAX_AGE: Final = 31536000

#: Every open of a served file: O_NONBLOCK, so a path swapped for a FIFO since its stat
#: cannot block the loop.
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC

ALLOW: Final = "GET, HEAD, OPTIONS"
_ALLOW_LINE: Final = b"Allow: GET, HEAD, OPTIONS\r\n"
#: Request fields that make a response other than the plain 200.
_CONDITIONAL: Final = frozenset(
    (
        "HTTP_IF_MATCH",
        "HTTP_IF_NONE_MATCH",
        "HTTP_IF_MODIFIED_SINCE",
        "HTTP_IF_UNMODIFIED_SINCE",
        "HTTP_RANGE",
    )
)
#: RFC 9110 §15's reason phrases (Python 3.11's HTTPStatus still says "Requested
#: Range Not Satisfiable", RFC 7233's name).
_STATUS_LINES: Final = {
    301: b"301 Moved Permanently",
    404: b"404 Not Found",
    405: b"405 Method Not Allowed",
    412: b"412 Precondition Failed",
    416: b"416 Range Not Satisfiable",
    503: b"503 Service Unavailable",
}

# The types of the web's file formats; the standard library's table (not the system's
# /etc/mime.types, so every machine answers alike) with what it lacks or has dated.
_TYPES: Final = mimetypes.MimeTypes()
for _ext, _type in {
    ".js": "text/javascript",  # RFC 9239
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".md": "text/markdown",
}.items():
    _TYPES.add_type(_type, _ext)
#: Types that are text without a text/ prefix: served with charset=utf-8 too.
_TEXTUAL: Final = frozenset(
    ("application/json", "application/manifest+json", "application/xml", "image/svg+xml", "text/javascript")
)
#: Variant suffixes by content-coding, in preference order on a q-value tie.
_CODINGS: Final = (("br", b".br"), ("gzip", b".gz"))


def content_type(name: str) -> str:
    """The Content-Type for a file name (``charset=utf-8`` for text)."""
    kind, encoding = _TYPES.guess_type(name, strict=False)
    if encoding is not None:
        # FILE.gz asked for by its own name: the compressed bytes themselves.
        return "application/gzip" if encoding == "gzip" else "application/octet-stream"
    if kind is None:
        return "application/octet-stream"
    if kind.startswith("text/") or kind in _TEXTUAL:
        return kind + "; charset=utf-8"
    return kind


# ---------------------------------------------------------------------- mounts


@dataclass(frozen=True)
class Mount:
    """One ``--static`` mount: URL prefix (ending in ``/``) → directory."""

    prefix: str
    root: bytes
    cache_control: str

    @property
    def bare(self) -> str:
        """The prefix without its trailing slash (the mount's directory itself)."""
        return self.prefix[:-1]


def parse_mount(spec: str, default_max_age: int, *, check_dir: bool = True) -> Mount:
    """``URL_PREFIX=DIRECTORY[:MAX_AGE][:immutable]`` → :class:`Mount`.

    Raises :class:`ConfigError` for a malformed spec or (``check_dir``) a directory
    that is missing. A relative DIRECTORY is relative to the working directory (after
    ``--chdir``: the server checks the mounts once it has changed directory)."""
    prefix, sep, rest = spec.partition("=")
    if not sep or not prefix.startswith("/") or not rest:
        raise ConfigError(f"static mount {spec!r}: expected URL_PREFIX=DIRECTORY[:MAX_AGE][:immutable]")
    max_age = default_max_age
    immutable = False
    directory = rest
    for _ in range(2):
        head, colon, tail = directory.rpartition(":")
        if not colon or not head:
            break
        if tail == "immutable":
            immutable = True
        elif tail.isdigit():
            max_age = int(tail)
        else:
            break
        directory = head
    if immutable and max_age == default_max_age:
        max_age = IMMUTABLE_MAX_AGE
    if any(seg in (".", "..") for seg in prefix.split("/")) or "//" in prefix or "%" in prefix:
        raise ConfigError(f"static mount {spec!r}: the URL prefix must be a plain path")
    if not prefix.endswith("/"):
        prefix += "/"
    if check_dir and not os.path.isdir(directory):
        raise ConfigError(f"static mount {spec!r}: {directory!r} is not a directory")
    root = os.fsencode(os.path.realpath(directory))
    cache_control = f"public, max-age={max_age}" + (", immutable" if immutable else "")
    return Mount(prefix, root, cache_control)


def validate_mounts(specs: list[str]) -> str | None:
    """Config validation of ``--static`` (the syntax; the directories are checked after
    ``--chdir``, by :meth:`StaticFiles.from_config`): an error message or None."""
    seen: set[str] = set()
    for spec in specs:
        try:
            mount = parse_mount(spec, 0, check_dir=False)
        except ConfigError as exc:
            return str(exc)
        if mount.prefix in seen:
            return f"static mount {spec!r}: {mount.prefix} is mounted twice"
        seen.add(mount.prefix)
    return None


# ---------------------------------------------------------------------- cache entries


class Rep:
    """One representation of a file: the file itself or a precompressed variant."""

    __slots__ = (
        "body",
        "encoding",
        "entity",
        "etag",
        "ino",
        "last_modified",
        "mtime",
        "mtime_ns",
        "path",
        "quick",
        "quick304",
        "quick_body",
        "size",
        "validators",
    )

    def __init__(self, path: bytes, st: os.stat_result, encoding: str | None, now: float) -> None:
        self.path = path
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.ino = (st.st_dev, st.st_ino)
        #: Whole seconds (HTTP dates have no more), never in the future (§8.8.2.1).
        self.mtime = min(int(st.st_mtime), int(now))
        self.encoding = encoding
        suffix = "" if encoding is None else "-" + encoding
        self.etag = f'"{self.size:x}-{self.mtime_ns:x}{suffix}"'
        self.last_modified = email.utils.formatdate(self.mtime, usegmt=True)
        self.body: bytes | None = None
        #: Serialised header lines (set by File): a 304's, and a 200's / 206's before
        #: Content-Range (framing, Date and Server are added by the writer).
        self.validators = b""
        self.entity = b""
        #: The same in the shapes StaticFiles.quick gives the C path (set by File):
        #: a 200's (None unless the body is cached) and a 304's.
        self.quick: tuple[bytes, int | None, bool, int] | None = None
        self.quick304: tuple[bytes, int | None, bool, int] = (b"", None, False, 0)
        self.quick_body: list[bytes] = []

    def same_file(self, st: os.stat_result) -> bool:
        return (
            (st.st_dev, st.st_ino) == self.ino and st.st_size == self.size and st.st_mtime_ns == self.mtime_ns
        )


class File:
    """A path that resolved to a regular file (with its variants)."""

    __slots__ = (
        "cache_control",
        "checked",
        "identity",
        "type",
        "variants",
        "vary",
    )

    def __init__(
        self, identity: Rep, variants: list[Rep], ctype: str, cache_control: str, checked: float
    ) -> None:
        self.identity = identity
        self.variants = variants
        self.type = ctype
        self.cache_control = cache_control
        self.vary = bool(variants)
        self.checked = checked
        vary = "Vary: Accept-Encoding\r\n" if self.vary else ""
        for rep in (identity, *variants):
            validators = f"ETag: {rep.etag}\r\nLast-Modified: {rep.last_modified}\r\n"
            validators += f"Cache-Control: {cache_control}\r\n"
            coding = "" if rep.encoding is None else f"Content-Encoding: {rep.encoding}\r\n"
            rep.validators = (validators + vary).encode("latin-1")
            entity = f"{validators}{vary}Content-Type: {ctype}\r\n{coding}Accept-Ranges: bytes\r\n"
            rep.entity = entity.encode("latin-1")
            rep.quick304 = (rep.validators, None, False, 0)
            if rep.body is not None:
                rep.quick = (rep.entity, rep.size, False, 0)
                rep.quick_body = [rep.body]


class Redirect:
    """A directory asked for without its trailing slash (``--static-index``)."""

    __slots__ = ("checked",)

    def __init__(self, checked: float) -> None:
        self.checked = checked


class Missing:
    """A path that resolves to nothing servable (a 404)."""

    __slots__ = ("checked",)

    def __init__(self, checked: float) -> None:
        self.checked = checked


Entry = File | Redirect | Missing


# ---------------------------------------------------------------------- header parsing


def parse_etags(value: str) -> list[tuple[bool, str]] | None:
    """An If-Match / If-None-Match list: ``[(weak, opaque), ...]``, or None for ``*``.

    Unparseable members are skipped (they match nothing)."""
    value = value.strip()
    if value == "*":
        return None
    tags: list[tuple[bool, str]] = []
    for member in value.split(","):
        tag = member.strip()
        weak = tag.startswith("W/")
        if weak:
            tag = tag[2:]
        if len(tag) >= 2 and tag[0] == '"' and tag[-1] == '"' and '"' not in tag[1:-1]:
            tags.append((weak, tag))
    return tags


def parse_date(value: str) -> int | None:
    """An HTTP-date (RFC 9110 §5.6.7: IMF-fixdate, rfc850 or asctime) → epoch seconds."""
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    try:
        # datetime() refuses what parsedate_tz lets through (a 31st of November).
        moment = datetime.datetime(*parsed[:6], tzinfo=datetime.timezone.utc)
    except (OverflowError, ValueError):
        return None
    return int(moment.timestamp()) - (parsed[9] or 0)


def parse_range(value: str, size: int) -> list[tuple[int, int]] | None:
    """A Range header → satisfiable ``[(first, last), ...]`` (inclusive, sorted,
    coalesced); ``[]`` when none is satisfiable (416); None when the header is
    invalid or not in bytes, which means: ignore it (RFC 9110 §14.2)."""
    unit, eq, specs = value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = specs.split(",")
    if len(parts) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    valid = False
    for member in parts:
        part = member.strip(" \t")
        if not part:
            continue  # RFC 9110 §5.6.1: empty list elements are ignored
        first_s, dash, last_s = part.partition("-")
        if not dash or not (first_s.isdigit() or first_s == "") or not (last_s.isdigit() or last_s == ""):
            return None
        if not first_s.isascii() or not last_s.isascii():
            return None
        if first_s == "":
            if last_s == "":
                return None
            valid = True
            suffix = int(last_s)
            if suffix > 0 and size == 0:
                # RFC 9110 §14.1.1: satisfiable, but no byte range can say so: the
                # whole (empty) representation, a 200.
                return None
            if suffix > 0:
                ranges.append((max(size - suffix, 0), size - 1))
            continue
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
        if last_s and last < first:
            return None
        valid = True
        if first < size:
            ranges.append((first, min(last, size - 1)))
    if not valid:
        return None
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def accepted_codings(value: str) -> dict[str, float]:
    """Accept-Encoding → ``{coding: q}`` (RFC 9110 §12.5.3; lower-cased)."""
    codings: dict[str, float] = {}
    for part in value.split(","):
        name, _, params = part.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        if name == "x-gzip":  # RFC 9110 §8.4.1.3: the same as gzip
            name = "gzip"
            q = max(q, codings.get(name, 0.0))
        codings[name] = q
    return codings


def _weak_match(tag: str, tags: list[tuple[bool, str]] | None) -> bool:
    return tags is None or any(t == tag for _, t in tags)


def _strong_match(tag: str, tags: list[tuple[bool, str]] | None) -> bool:
    return tags is None or any(not weak and t == tag for weak, t in tags)


# ---------------------------------------------------------------------- the responder


class _Slice:
    """A byte range of an open file, read-only: what ``FileWrapper`` wraps for a 206.

    ``fileno``/``tell`` let the exchange send it with sendfile (from ``tell()``, for
    the response's Content-Length); ``read`` never goes past the range (TLS)."""

    def __init__(self, fp: IO[bytes], length: int) -> None:
        self._fp = fp
        self._left = length

    def fileno(self) -> int:
        return self._fp.fileno()

    def tell(self) -> int:
        return self._fp.tell()

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._fp.read(self._left if size < 0 else min(size, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._fp.close()


Body = list[bytes] | FileWrapper
#: (code, status line), (header block, Content-Length, close, Date/Server index), body.
QuickReply = tuple[tuple[int, bytes], tuple[bytes, int | None, bool, int], list[bytes]]
_ST200: Final = (200, b"200 OK")
_ST304: Final = (304, b"304 Not Modified")
_EMPTY_BODY: Final[list[bytes]] = []
Reply = tuple[Response, Body]
DateServer = tuple[bytes, bytes, bytes, bytes]


class StaticFiles:
    """The responder the server runs for requests under a mount (see the module
    docstring for the rules). One per worker process; used from the loop thread only,
    so its cache needs no lock.

    :meth:`respond` gives the response head (a :class:`~rapidwsgi.events.Response`, as
    the shared response writer would have built it from ``start_response``) and the
    body (a list of bytes, or a ``FileWrapper`` the exchange sends with sendfile):
    server-made headers need no validation, and keeping them out of the application's
    header cache keeps a site with many files from evicting the application's entries.
    """

    def __init__(
        self,
        mounts: Sequence[Mount],
        *,
        index: bool = False,
        follow_symlinks: bool = False,
        dotfiles: bool = False,
        cache_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        cache_entries: int = CACHE_ENTRIES,
        cache_bytes: int = CACHE_BYTES,
        sendfile: str = "auto",
    ) -> None:
        # Longest prefix first, so /static/admin/ wins over /static/.
        self.mounts = sorted(mounts, key=lambda m: len(m.prefix), reverse=True)
        self.index = index
        self.follow_symlinks = follow_symlinks
        self.dotfiles = dotfiles
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._wall = wall
        self._cache: dict[str, Entry] = {}
        self._cached_bytes = 0
        self._max_entries = cache_entries
        self._max_bytes = cache_bytes
        self.sendfile = sendfile
        #: Answers :meth:`quick` gave (the C path wrote them without the Python writer).
        self.quick_served = 0
        #: What ``claims`` compares PATH_INFO with (the C path does the same: _cfast.c).
        self.prefixes = tuple(m.prefix for m in self.mounts)
        self.bares = tuple(m.bare for m in self.mounts)

    @classmethod
    def from_config(cls, config: Any) -> StaticFiles | None:
        """The responder for a :class:`~rapidwsgi.config.Config`, or None without mounts."""
        if not config.static:
            return None
        mounts = [parse_mount(spec, config.static_max_age) for spec in config.static]
        return cls(
            mounts,
            index=config.static_index,
            follow_symlinks=config.static_follow_symlinks,
            dotfiles=config.static_dotfiles,
            cache_ttl=config.static_cache_ttl,
            sendfile=config.static_sendfile,
        )

    def sendfile_to(self, same_host: bool) -> bool:
        """Whether a large file goes out with sendfile(2) to this peer (``--static-sendfile``).

        ``auto``: yes, except to a peer on this host (loopback, a unix socket: a front-end
        or a local client). There no network card takes the pages, the receiver copies
        them out of the page cache page by page, and plain writes of 256 KiB blocks
        measured 1.33x the throughput of sendfile for a 10 MiB file (docs/static.md)."""
        return self.sendfile == "on" or (self.sendfile == "auto" and not same_host)

    def claims(self, environ: Environ) -> bool:
        """Whether the request is under a mount (then the application never sees it)."""
        path: str = environ["PATH_INFO"]
        return path.startswith(self.prefixes) or path in self.bares

    # ------------------------------------------------------------ responding

    def quick(self, environ: Environ) -> QuickReply | None:
        """The C request path's shortcut (``_cfast.c``): for a fresh cached file, a plain
        GET/HEAD's 200 (of a small file, from memory) or an exact If-None-Match's 304
        (of any file), after choosing the precompressed variant, in the shapes
        ``wsgi.header_parts`` gives the C writer; None for everything else (then
        :meth:`respond` decides). tests/test_static_cpath.py holds the two to identical
        bytes."""
        method: str = environ["REQUEST_METHOD"]
        if method != "GET" and method != "HEAD":  # noqa: PLR1714 - faster than a tuple here
            return None
        entry = self._cache.get(environ["PATH_INFO"])
        if type(entry) is not File:
            return None
        if self._clock() - entry.checked >= self.cache_ttl or "%" in environ.get("RAW_URI", ""):
            return None
        rep = entry.identity
        if entry.vary:
            if "HTTP_RANGE" in environ:
                return None
            rep = self._negotiate(entry, environ.get("HTTP_ACCEPT_ENCODING"))
        if not _CONDITIONAL.isdisjoint(environ):
            # §13.2.2: without If-Match / If-Unmodified-Since, If-None-Match decides
            # (If-Modified-Since is then ignored): the exact tag is a 304 whatever Range
            # says; a list that cannot hold the tag (a revalidation after a change) is
            # the 200, unless a Range asks for less. The rest: respond() parses.
            inm = environ.get("HTTP_IF_NONE_MATCH")
            if inm is None or "HTTP_IF_MATCH" in environ or "HTTP_IF_UNMODIFIED_SINCE" in environ:
                return None
            if inm == rep.etag:
                self.quick_served += 1
                return _ST304, rep.quick304, _EMPTY_BODY
            if "HTTP_RANGE" in environ or "*" in inm or rep.etag[1:-1] in inm:
                return None
        parts = rep.quick
        if parts is None:
            return None
        self.quick_served += 1
        return _ST200, parts, rep.quick_body

    def respond(self, environ: Environ, date_server: DateServer) -> Reply:
        """The response to a claimed request (``date_server`` as in wsgi.build_response)."""
        method: str = environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD"):
            if method == "OPTIONS":
                return Response(204, b"204 No Content", _ALLOW_LINE + date_server[0], 0), []
            return _plain(405, date_server, _ALLOW_LINE)
        path: str = environ["PATH_INFO"]
        raw_uri: str = environ.get("RAW_URI", "")
        entry = self.lookup(path, raw_uri)
        if type(entry) is File:
            identity = entry.identity
            if not entry.vary and identity.body is not None and _CONDITIONAL.isdisjoint(environ):
                # The common request: a cached small file, nothing to negotiate.
                body = identity.body if method == "GET" else b""
                return Response(200, b"200 OK", identity.entity + date_server[0], identity.size), [body]
            reply = self._serve(entry, environ, date_server, method == "GET")
            if reply is None:
                # The file changed since it was cached: resolve it again, once.
                self.forget(path)
                entry = self.lookup(path, raw_uri)
                if type(entry) is File:
                    reply = self._serve(entry, environ, date_server, method == "GET")
            if reply is not None:
                return reply
            if type(entry) is File:
                # Still changing under us: let the client retry.
                return _plain(503, date_server, b"Retry-After: 1\r\n")
        if type(entry) is Redirect:
            raw_path, q, query = (raw_uri or path).partition("?")
            location = raw_path + "/" + (q + query if query else "")
            return _plain(301, date_server, b"Location: " + _header_safe(location) + b"\r\n")
        return _plain(404, date_server)

    def lookup(self, path: str, raw_uri: str = "") -> Entry:
        """What ``path`` (a PATH_INFO) resolves to, from the cache while it is fresh."""
        if "%" in raw_uri:
            # An encoded slash would make two paths of one (RFC 3986 §2.2): refused.
            raw_path = raw_uri.partition("?")[0].lower()
            if "%2f" in raw_path or "%5c" in raw_path:
                return Missing(0.0)
        now = self._clock()
        entry = self._cache.get(path)
        if entry is not None and now - entry.checked < self.cache_ttl:
            return entry
        mount = self._mount_of(path)
        if mount is None:
            return Missing(now)
        fresh = self._resolve(mount, path, now, entry)
        self._store(path, fresh, entry)
        return fresh

    def forget(self, path: str) -> None:
        """Drop what is cached for ``path`` (it is resolved again on next use)."""
        entry = self._cache.pop(path, None)
        if type(entry) is File:
            self._cached_bytes -= _body_size(entry)

    def _mount_of(self, path: str) -> Mount | None:
        for mount in self.mounts:
            if path.startswith(mount.prefix) or path == mount.bare:
                return mount
        return None

    def _store(self, key: str, fresh: Entry, old: Entry | None) -> None:
        cache = self._cache
        if old is not None:
            del cache[key]
            if type(old) is File:
                self._cached_bytes -= _body_size(old)
        while len(cache) >= self._max_entries:
            evicted = cache.pop(next(iter(cache)))
            if type(evicted) is File:
                self._cached_bytes -= _body_size(evicted)
        if type(fresh) is File:
            size = _body_size(fresh)
            if self._cached_bytes + size > self._max_bytes:
                for rep in (fresh.identity, *fresh.variants):
                    rep.body = rep.quick = None
                    rep.quick_body = []
            else:
                self._cached_bytes += size
        cache[key] = fresh

    # ------------------------------------------------------------ resolution

    def _resolve(self, mount: Mount, path: str, now: float, old: Entry | None) -> Entry:
        rel = path[len(mount.prefix) :] if path != mount.bare else ""
        directory_asked = path == mount.bare or rel == "" or rel.endswith("/")
        segments = rel.split("/")
        if directory_asked and segments and segments[-1] == "":
            segments.pop()
        for seg in segments:
            if not seg or seg in (".", "..") or "\x00" in seg or "\\" in seg:
                return Missing(now)
            if seg[0] == "." and not self.dotfiles:
                return Missing(now)
        try:
            # PATH_INFO is bytes-as-latin-1 (PEP 3333): the file name's own bytes.
            parts = [seg.encode("latin-1") for seg in segments]
        except UnicodeEncodeError:
            return Missing(now)
        target = os.path.join(mount.root, *parts) if parts else mount.root
        st = self._stat(mount, target)
        if st is None:
            return Missing(now)
        if stat.S_ISDIR(st.st_mode):
            if not self.index:
                return Missing(now)
            index = os.path.join(target, b"index.html")
            ist = self._stat(mount, index)
            if ist is None or not stat.S_ISREG(ist.st_mode):
                return Missing(now)
            if path == mount.bare or not directory_asked:
                return Redirect(now)
            target, st = index, ist
        elif directory_asked or not stat.S_ISREG(st.st_mode):
            return Missing(now)
        wall = self._wall()
        identity = Rep(target, st, None, wall)
        variants: list[Rep] = []
        for coding, suffix in _CODINGS:
            vst = self._stat(mount, target + suffix)
            if vst is not None and stat.S_ISREG(vst.st_mode):
                variants.append(Rep(target + suffix, vst, coding, wall))
        old_reps: dict[bytes, Rep] = {}
        if type(old) is File:
            old_reps = {rep.path: rep for rep in (old.identity, *old.variants)}
        for rep in (identity, *variants):
            previous = old_reps.get(rep.path)
            if (
                previous is not None
                and previous.body is not None
                and (previous.ino, previous.size, previous.mtime_ns) == (rep.ino, rep.size, rep.mtime_ns)
            ):
                rep.body = previous.body
                continue
            if rep.size <= SMALL_FILE:
                rep.body = _read_small(rep)
        # A file the server may not read (EACCES) is hidden like the others: a 404 for
        # GET and HEAD alike (a variant it may not read is not offered).
        if identity.body is None and not _readable(identity.path):
            return Missing(now)
        variants = [rep for rep in variants if rep.body is not None or _readable(rep.path)]
        return File(identity, variants, content_type(os.fsdecode(target)), mount.cache_control, now)

    def _stat(self, mount: Mount, path: bytes) -> os.stat_result | None:
        """stat() of a path inside ``mount``, or None if it is missing or (without
        --static-follow-symlinks) resolves to somewhere outside the mount."""
        try:
            if not self.follow_symlinks:
                real = os.path.realpath(path)
                root = mount.root
                if real != root and not real.startswith(root.rstrip(b"/") + b"/"):
                    return None
                path = real
            return os.stat(path)
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------ one response

    def _serve(self, entry: File, environ: Environ, date_server: DateServer, get: bool) -> Reply | None:
        """The response for a file; None if it changed since it was cached."""
        get_header = environ.get
        range_value: str | None = get_header("HTTP_RANGE") if get else None
        rep = entry.identity
        if entry.vary and range_value is None:
            rep = self._negotiate(entry, get_header("HTTP_ACCEPT_ENCODING"))
        # RFC 9110 §13.2.2, steps 1-4.
        if_match = get_header("HTTP_IF_MATCH")
        if if_match is not None:
            if not _strong_match(rep.etag, parse_etags(if_match)):
                return _plain(412, date_server)
        else:
            ius = get_header("HTTP_IF_UNMODIFIED_SINCE")
            if ius is not None:
                date = parse_date(ius)
                if date is not None and rep.mtime > date:
                    return _plain(412, date_server)
        inm = get_header("HTTP_IF_NONE_MATCH")
        if inm is not None:
            if _weak_match(rep.etag, parse_etags(inm)):
                return Response(304, b"304 Not Modified", rep.validators + date_server[0]), []
        else:
            ims = get_header("HTTP_IF_MODIFIED_SINCE")
            if ims is not None:
                date = parse_date(ims)
                if date is not None and rep.mtime <= date:
                    return Response(304, b"304 Not Modified", rep.validators + date_server[0]), []
        size = rep.size
        if range_value is not None and self._if_range(rep, get_header("HTTP_IF_RANGE")):
            ranges = parse_range(range_value, size)
            if ranges is not None and len(ranges) == 1:
                first, last = ranges[0]
                length = last - first + 1
                content_range = f"Content-Range: bytes {first}-{last}/{size}\r\n".encode()
                response = Response(
                    206, b"206 Partial Content", rep.entity + content_range + date_server[0], length
                )
                if rep.body is not None:
                    return response, [rep.body[first : last + 1]]
                return self._open(rep, first, length, response, date_server)
            if ranges is not None and not ranges:
                return _plain(416, date_server, f"Content-Range: bytes */{size}\r\n".encode())
        response = Response(200, b"200 OK", rep.entity + date_server[0], size)
        if not get:
            return response, []
        if rep.body is not None:
            return response, [rep.body]
        return self._open(rep, 0, size, response, date_server)

    @staticmethod
    def _if_range(rep: Rep, value: str | None) -> bool:
        """RFC 9110 §13.1.5: keep the Range only if the validator still matches."""
        if value is None:
            return True
        value = value.strip()
        if value.startswith(('"', "W/")):
            return value == rep.etag  # strong comparison: a weak tag never matches
        date = parse_date(value)
        return date is not None and date == rep.mtime

    @staticmethod
    def _negotiate(entry: File, accept: str | None) -> Rep:
        if not accept:
            return entry.identity
        codings = accepted_codings(accept)
        wildcard = codings.get("*", 0.0)
        # RFC 9110 §12.5.3: the q-values rank the codings, identity included when the
        # client lists it; a variant wins a tie with identity (that is what it is for).
        best = entry.identity
        best_q = codings.get("identity", 0.0)
        for rep in entry.variants:
            q = codings.get(rep.encoding or "", wildcard)
            if q > best_q or (q > 0.0 and q == best_q and best is entry.identity):
                best, best_q = rep, q
        return best

    def _open(
        self, rep: Rep, offset: int, length: int, response: Response, date_server: DateServer
    ) -> Reply | None:
        """The file's bytes from ``offset`` as a FileWrapper; None if it changed (or can
        no longer be read: resolving it again says what it is now)."""
        try:
            fd = os.open(rep.path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of descriptors: temporary, and not the file's fault.
                return _plain(503, date_server, b"Retry-After: 1\r\n")
            return None
        fp = os.fdopen(fd, "rb")
        try:
            if not rep.same_file(os.fstat(fd)):
                # Changed since the cached stat: the headers would describe other bytes.
                fp.close()
                return None
            if offset:
                fp.seek(offset)
        except OSError:
            fp.close()
            return None
        body = cast("IO[bytes]", _Slice(fp, length)) if length != rep.size else fp
        return response, FileWrapper(body, READ_BLOCK)


def _readable(path: bytes) -> bool:
    """Whether the server may open the file (False for EACCES and the like; True when
    it is only out of descriptors, which passes)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return True


def _body_size(entry: File) -> int:
    return sum(len(rep.body) for rep in (entry.identity, *entry.variants) if rep.body is not None)


def _read_small(rep: Rep) -> bytes | None:
    try:
        fd = os.open(rep.path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if not rep.same_file(os.fstat(fd)):
            return None
        with os.fdopen(fd, "rb") as fp:
            fd = -1
            data = fp.read(rep.size + 1)
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    return data if len(data) == rep.size else None


def _plain(status: int, date_server: DateServer, extra: bytes = b"") -> Reply:
    """A short text/plain response of the server's own (404, 405, 412, 416, ...)."""
    line = _STATUS_LINES[status]
    body = line + b"\n"
    head = extra + b"Content-Type: text/plain; charset=utf-8\r\n" + date_server[0]
    return Response(status, line, head, len(body)), [body]


def _header_safe(text: str) -> bytes:
    """A header value from request bytes (a Location): control bytes percent-encoded."""
    data = text.encode("latin-1", "replace")
    if any(b < 0x20 or b == 0x7F for b in data):
        data = b"".join(b"%%%02X" % b if b < 0x20 or b == 0x7F else bytes((b,)) for b in data)
    return data
