"""Every setting, declared once: the :class:`Config` dataclass *is* the table.

Each field carries its default, help, section, CLI flag, validation and parser in its
metadata (see :func:`setting`). From that one table this module generates the
argparse parser, the ``RAPIDWSGI_*`` environment variables, config-file loading and
the settings reference (``python -m rapidwsgi.config > docs/settings.md``).

Precedence, highest first: command line, environment, config file, default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import runpy
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from . import __version__
from .errors import BindError, ConfigError
from .events import PROTOCOLS
from .forwarded import DEFAULT_HEADERS, PROXY_HEADERS, validate_spec
from .sockets import parse_address

ENV_PREFIX: Final = "RAPIDWSGI_"
#: A server hook (hooks.py).
Hook = Callable[..., object]
_MISSING: Final[Any] = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    section: str,
    flags: Sequence[str] = (),
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    validate: Callable[[Any], str | None] | None = None,
    choices: Sequence[str] | None = None,
    positional: bool = False,
    default_factory: Callable[[], Any] | None = None,
    expects: str | None = None,
) -> Any:
    """Declare one setting (a dataclass field with its metadata).

    ``flags`` defaults to ``--name-with-dashes``; ``parse`` turns a string (CLI, env)
    into the value (``expects`` says what a custom ``parse`` accepts, for its error
    message); ``validate`` returns an error message or None.
    """
    metadata = {
        "help": help,
        "section": section,
        "flags": tuple(flags),
        "metavar": metavar,
        "parse": parse,
        "validate": validate,
        "choices": tuple(choices) if choices else None,
        "positional": positional,
        "expects": expects,
        "hook": False,
    }
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def hook_setting(signature: str, help: str) -> Any:
    """Declare a server hook (hooks.py): a function a Python config file defines, with no
    command-line flag or environment variable."""
    return dataclasses.field(
        default=None,
        metadata={
            "help": help,
            "section": "Server hooks",
            "flags": (),
            "metavar": None,
            "parse": None,
            "validate": None,
            "choices": None,
            "positional": False,
            "expects": None,
            "hook": True,
            "signature": signature,
        },
    )


# ---------------------------------------------------------------- parsers/validators


def _octal(text: str) -> int:
    text = text.strip()
    if text.startswith("0") and text[:2].lower() not in ("0o", "0x"):
        return int(text, 8)
    return int(text, 0)


def _cert_reqs(text: str) -> str:
    text = text.strip().lower()
    return {"0": "none", "1": "optional", "2": "required"}.get(text, text)


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _protocols(value: list[str]) -> str | None:
    bad = [p for p in value if p not in PROTOCOLS]
    return f"unknown protocol {bad[0]!r}; expected one of {', '.join(PROTOCOLS)}" if bad else None


def _proxy_headers(value: list[str]) -> str | None:
    bad = [h for h in value if h.lower() not in PROXY_HEADERS]
    return f"unknown header {bad[0]!r}; expected some of {', '.join(PROXY_HEADERS)}" if bad else None


def _static_mounts(value: list[str]) -> str | None:
    """``static.validate_mounts``, imported only when there is a mount to check: the
    static responder imports the WSGI modules, which the master does not need."""
    if not value:
        return None
    from .static import validate_mounts

    return validate_mounts(value)


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return 0
    return int(text)


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _bind_list(value: list[str]) -> str | None:
    return None if value else "at least one address is required"


def _address_of(kinds: tuple[str, ...], expected: str) -> Callable[[str | None], str | None]:
    """A validator: an address ``sockets.parse_address`` reads, of one of ``kinds``."""

    def validate(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            address = parse_address(value)
        except BindError as exc:
            return str(exc)
        return None if address.kind in kinds else f"expected {expected}"

    return validate


_metrics_address: Final = _address_of(("tcp", "unix"), "HOST:PORT or unix:PATH")
_statsd_address: Final = _address_of(("tcp",), "HOST:PORT (UDP)")


def _header_name(value: str | None) -> str | None:
    if value is None:
        return None
    token = value and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in value) and value.isascii()
    return None if token else "expected a header field name (RFC 9110 §5.1), e.g. X-Request-ID"


def _health_path(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("/") or any(c in value for c in "?# ") or not value.isascii():
        return "must be an ASCII path starting with /, without a query or spaces"
    return None


def _non_empty_items(what: str, example: str) -> Callable[[list[str]], str | None]:
    """A validator of a list: no item may be empty (or only blanks)."""

    def validate(value: list[str]) -> str | None:
        return (
            f"an empty {what} names nothing; give e.g. {example}"
            if any(not v.strip() for v in value)
            else None
        )

    return validate


_reload_files: Final = _non_empty_items("file name", "templates/base.html")
_reload_globs: Final = _non_empty_items("pattern", "*.html")
_directories: Final = _non_empty_items("directory", "lib")


def _umask(value: int) -> str | None:
    return None if 0 <= value <= 0o777 else "must be between 0 and 0o777"


_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of one rapidwsgi server (see the generated docs/settings.md)."""

    app: str | None = setting(
        None,
        help="The WSGI application: MODULE:NAME, MODULE:NAME.attr, or MODULE:factory() "
        "(literal arguments allowed, e.g. MODULE:create_app('prod')). "
        "NAME defaults to 'application', then 'app'.",
        section="Application",
        positional=True,
        metavar="MODULE:APP",
    )
    config: str | None = setting(
        None,
        help="Read settings from FILE: a Python file (gunicorn style, `bind = [...]`) "
        "or a TOML file (top level or a [rapidwsgi] table). Lower precedence than the "
        "environment and the command line.",
        section="Application",
        flags=("-c", "--config"),
        metavar="FILE",
    )
    chdir: str | None = setting(
        None,
        help="Change to DIR before loading the application (it is also put first on sys.path).",
        section="Application",
        metavar="DIR",
    )
    pythonpath: list[str] = setting(
        help="Directories to put first on sys.path (in this order) before loading the "
        "application. Comma-separated, repeatable (gunicorn's --pythonpath).",
        section="Application",
        metavar="DIRS",
        parse=_comma_list,
        default_factory=list,
        validate=_directories,
    )
    root_path: str = setting(
        "",
        help="SCRIPT_NAME for every request (the prefix the app is mounted at); "
        "a PATH_INFO starting with it has it removed.",
        section="Application",
        metavar="PREFIX",
    )
    bind: list[str] = setting(
        help="Listen on ADDRESS: HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N. Repeat for several.",
        section="Server socket",
        flags=("-b", "--bind"),
        metavar="ADDRESS",
        default_factory=lambda: ["127.0.0.1:8000"],
        validate=_bind_list,
    )
    protocol: list[str] = setting(
        help="Wire protocol of the listening sockets: http, uwsgi (nginx uwsgi_pass) or fastcgi "
        "(nginx fastcgi_pass). Give it once for every --bind, or once per --bind in the same order.",
        section="Server socket",
        metavar="PROTOCOL",
        default_factory=lambda: ["http"],
        validate=_protocols,
    )
    forwarded_allow_ips: list[str] = setting(
        help="Peers trusted to say who the client is: the --trusted-proxy-headers from them set "
        "REMOTE_ADDR, wsgi.url_scheme and HTTP_HOST (from others they stay plain headers), and a "
        "PROXY protocol header is accepted from them. Addresses, CIDR ranges, 'unix' (unix-socket "
        "peers) or '*'. Comma-separated.",
        section="Server socket",
        metavar="ADDRESSES",
        parse=_comma_list,
        default_factory=lambda: ["127.0.0.1", "::1", "unix"],
        validate=validate_spec,
    )
    trusted_proxy_headers: list[str] = setting(
        help="The forwarding headers the trusted proxies (--forwarded-allow-ips) set or overwrite "
        "themselves: only these are applied (" + ", ".join(PROXY_HEADERS) + "). The default is "
        "what deploy/nginx/proxy.conf sets; a client's own Forwarded or X-Real-IP passes through "
        "nginx untouched and is not believed. Comma-separated.",
        section="Server socket",
        metavar="HEADERS",
        parse=_comma_list,
        default_factory=lambda: list(DEFAULT_HEADERS),
        validate=_proxy_headers,
    )
    clear_untrusted_proxy_headers: bool = setting(
        True,
        help="Remove the forwarding headers not in --trusted-proxy-headers (and X-Forwarded-By) from "
        "the environ of a trusted proxy's requests: only the client can have written them.",
        section="Server socket",
    )
    proxy_protocol: bool = setting(
        False,
        help="Accept a HAProxy PROXY protocol header (v1 or v2) at the start of a connection from "
        "a --forwarded-allow-ips peer (it gives the client address); refuse it from other peers.",
        section="Server socket",
    )
    backlog: int = setting(
        2048,
        help="Maximum number of pending connections (listen(2) backlog).",
        section="Server socket",
        validate=_positive,
    )
    umask: int = setting(
        0,
        help="umask applied while creating unix sockets (octal, e.g. 007 for owner+group).",
        section="Server socket",
        parse=_octal,
        expects="an octal number such as 007",
        validate=_umask,
    )
    certfile: str | None = setting(
        None,
        help="TLS certificate (PEM, the chain after the leaf) for the http listeners: they serve "
        "HTTPS. Workers load it when they start, so a reload (SIGHUP) picks up a renewed file.",
        section="TLS",
        metavar="FILE",
    )
    keyfile: str | None = setting(
        None,
        help="Private key of --certfile (PEM), if not in the certificate file.",
        section="TLS",
        metavar="FILE",
    )
    ca_certs: str | None = setting(
        None,
        help="CA certificates (PEM) to verify client certificates with (see --cert-reqs).",
        section="TLS",
        metavar="FILE",
    )
    cert_reqs: str = setting(
        "none",
        help="Client certificates: none (not asked), optional (verified if sent) or required "
        "(the handshake fails without a valid one). gunicorn's 0/1/2 mean the same.",
        section="TLS",
        parse=_cert_reqs,
        choices=("none", "optional", "required"),
    )
    ciphers: str | None = setting(
        None,
        help="OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults); default: "
        "Python's ssl defaults.",
        section="TLS",
    )
    workers: int = setting(
        1,
        help="Worker processes under the master. 0 or 'auto': one per CPU.",
        section="Worker",
        flags=("-w", "--workers"),
        parse=_workers,
        expects="an integer or 'auto'",
        validate=_non_negative,
    )
    workers_min: int = setting(
        0,
        help="Adaptive worker count: never fewer than N workers (with --workers-max; 0: 1 when "
        "--workers-max is set). The master starts max(--workers, N) workers, adds one when every "
        "worker has been busy for --workers-scale-up-after seconds and retires one while some "
        "worker has been idle for --workers-idle-timeout (docs/process.md, Adaptive worker count).",
        section="Worker",
        metavar="N",
        validate=_non_negative,
    )
    workers_max: int = setting(
        0,
        help="Adaptive worker count: never more than M workers (0: the fixed --workers count, no "
        "adaptation).",
        section="Worker",
        metavar="M",
        validate=_non_negative,
    )
    workers_scale_up_after: float = setting(
        3.0,
        help="Adaptive worker count: add a worker (up to --workers-max) once every serving worker "
        "has had all its capacity in use (inline: requests waiting for the event loop, or the loop "
        "blocked; --threads N: N requests in the application) at every heartbeat for this long, as "
        "uWSGI's cheaper-overload.",
        section="Worker",
        metavar="SECONDS",
        validate=_positive,
    )
    workers_idle_timeout: float = setting(
        30.0,
        help="Adaptive worker count: retire one worker (down to --workers-min; gracefully, its "
        "requests finish) when at least one worker had nothing in the application at every "
        "heartbeat for this long: the one idle longest. One retirement per such stretch.",
        section="Worker",
        metavar="SECONDS",
        validate=_positive,
    )
    threads: int = setting(
        1,
        help="Application threads. 1 runs the application inline on the event loop "
        "(fastest for non-blocking apps); N > 1 runs it in a pool of N threads.",
        section="Worker",
        validate=_positive,
    )
    preload: bool = setting(
        False,
        help="Import the application once in a zygote process and fork the workers from it "
        "(copy-on-write memory). On SIGHUP a fresh zygote imports the new code.",
        section="Worker",
    )
    reuse_port: bool = setting(
        False,
        help="Give each worker its own SO_REUSEPORT listening socket (TCP only) instead of "
        "sharing the master's: the kernel balances connections, but a worker that exits "
        "resets the connections still queued on its socket unless the sysctl "
        "net.ipv4.tcp_migrate_req is 1 (Linux >= 5.14; the master warns when it is not).",
        section="Worker",
    )
    max_requests: int = setting(
        0,
        help="Retire a worker gracefully after this many requests (0: never); its "
        "replacement is serving before it stops.",
        section="Worker",
        metavar="N",
        validate=_non_negative,
    )
    max_requests_jitter: int = setting(
        0,
        help="Add a random 0..N to --max-requests per worker, so workers do not retire together.",
        section="Worker",
        metavar="N",
        validate=_non_negative,
    )
    reload: bool = setting(
        False,
        help="Development: restart the workers (rolling) when a Python file under the working "
        "directory, --chdir or --pythonpath changes, or a file of --reload-include or "
        "--reload-extra-files (uses watchfiles when installed).",
        section="Worker",
    )
    reload_extra_files: list[str] = setting(
        help="With --reload, also reload when one of these files is created, modified or deleted "
        "(any file, inside the watched directories or not; a relative path is relative to the working "
        "directory after --chdir). Comma-separated, repeatable; --reload-extra-file (gunicorn's "
        "spelling) is the same option.",
        section="Worker",
        flags=("--reload-extra-file", "--reload-extra-files"),
        metavar="FILES",
        parse=_comma_list,
        default_factory=list,
        validate=_reload_files,
    )
    reload_include: list[str] = setting(
        help="With --reload, also reload when a file matching GLOB under the watched directories "
        "changes, in addition to the .py files. A pattern without a slash matches the file name at "
        "any depth (*.html); one with a slash matches the path relative to the watched directory, "
        "where * and ? never match a slash and ** matches any number of directories "
        "(templates/**/*.txt). Repeatable.",
        section="Worker",
        metavar="GLOB",
        default_factory=list,
        validate=_reload_globs,
    )
    loop: str = setting(
        "auto",
        help="Event loop implementation: uvloop, asyncio, or auto (uvloop when installed).",
        section="Worker",
        choices=("auto", "uvloop", "asyncio"),
    )
    timeout: float = setting(
        30.0,
        help="Watchdog: a worker whose event loop stops for this long (a blocked inline app, "
        "a deadlock) gets SIGABRT (its traceback is logged), then SIGKILL, and is replaced. "
        "0 disables it.",
        section="Timeouts",
        flags=("-t", "--timeout"),
        metavar="SECONDS",
        validate=_non_negative,
    )
    keep_alive: float = setting(
        5.0,
        help="Seconds an idle keep-alive connection is kept open between requests.",
        section="Timeouts",
        metavar="SECONDS",
        validate=_non_negative,
    )
    header_timeout: float = setting(
        10.0,
        help="Seconds a client has to send a complete request head once it started "
        "(slow clients are answered 408 and disconnected).",
        section="Timeouts",
        metavar="SECONDS",
        validate=_positive,
    )
    body_timeout: float = setting(
        30.0,
        help="Seconds without progress allowed while receiving a request body.",
        section="Timeouts",
        metavar="SECONDS",
        validate=_positive,
    )
    send_timeout: float = setting(
        60.0,
        help="Seconds a client may stop reading a response before it is disconnected.",
        section="Timeouts",
        metavar="SECONDS",
        validate=_positive,
    )
    graceful_timeout: float = setting(
        30.0,
        help="On SIGTERM/SIGINT, seconds to finish in-flight requests before exiting anyway.",
        section="Timeouts",
        metavar="SECONDS",
        validate=_non_negative,
    )
    limit_request_line: int = setting(
        8190,
        help="Maximum bytes of the request line (larger: 414).",
        section="Limits",
        metavar="BYTES",
        validate=_positive,
    )
    limit_request_fields: int = setting(
        100,
        help="Maximum number of request header fields (more: 431).",
        section="Limits",
        metavar="N",
        validate=_positive,
    )
    limit_request_field_size: int = setting(
        8190,
        help="Maximum bytes of one request header field line (larger: 431).",
        section="Limits",
        metavar="BYTES",
        validate=_positive,
    )
    limit_request_body: int = setting(
        1 << 30,
        help=(
            "Maximum bytes of a request body (larger: 413, answered before any of it is read"
            " or spooled, and before any 100 Continue); 0 for no limit. The default, 1 GiB as"
            " in waitress, admits any upload a form or an API usually takes while bounding"
            " what one request can make the server read, and the temporary file an inline"
            " worker spools a body into."
        ),
        section="Limits",
        metavar="BYTES",
        validate=_non_negative,
    )
    limit_concurrency: int = setting(
        0,
        help="Threaded mode: requests one worker runs in the application at once (0: as many "
        "as --threads; more than --threads is the same as --threads). Beyond it and "
        "--backlog-requests, a request is answered 503 with Retry-After at once, without "
        "calling the application or reading its body. Inline mode (--threads 1) runs one "
        "request at a time and leaves the others in their sockets: bound those with "
        "--limit-connections.",
        section="Load and health",
        metavar="N",
        validate=_non_negative,
    )
    backlog_requests: int = setting(
        1024,
        help="Threaded mode: requests one worker keeps waiting for a free thread (beyond "
        "them: 503). The thread pool's queue is never longer.",
        section="Load and health",
        metavar="N",
        validate=_non_negative,
    )
    limit_connections: int = setting(
        0,
        help="Connections one worker serves at once (0: no limit). At the limit the worker "
        "stops accepting, and new connections wait in the kernel's listen queue (--backlog) "
        "for this worker or another one, instead of being accepted and starved.",
        section="Load and health",
        flags=("--worker-connections", "--limit-connections"),
        metavar="N",
        validate=_non_negative,
    )
    max_worker_memory: int = setting(
        0,
        help="Retire a worker whose resident memory (RSS) exceeds this many MiB, checked every "
        "second, the way --max-requests does: its replacement serves first, its requests "
        "finish (0: never).",
        section="Load and health",
        metavar="MIB",
        validate=_non_negative,
    )
    request_timeout: float = setting(
        0.0,
        help="Threaded mode: a request still in the application after this many seconds gets "
        "its thread's traceback logged; its client gets 504 (or, once the response has "
        "started, a reset), and the worker is retired (replacement first) while the thread "
        "stays stuck: Python threads cannot be killed. 0: off. Inline mode has the "
        "--timeout watchdog.",
        section="Load and health",
        metavar="SECONDS",
        validate=_non_negative,
    )
    health_path: str | None = setting(
        None,
        help="Answer GET/HEAD of this path on the application's listeners without calling the "
        "application: 200 while serving, 503 once a stop has begun (a load balancer's "
        "readiness check).",
        section="Load and health",
        metavar="/PATH",
        validate=_health_path,
    )
    shutdown_delay: float = setting(
        0.0,
        help="On SIGTERM, keep accepting and serving for this many seconds while --health-path "
        "answers 503 (so a load balancer stops sending first), then stop gracefully.",
        section="Load and health",
        metavar="SECONDS",
        validate=_non_negative,
    )
    pid: str | None = setting(
        None,
        help="Write the master's PID to FILE (removed at exit).",
        section="Process",
        metavar="FILE",
    )
    user: str | None = setting(
        None,
        help="Switch to this user (name or uid) after binding the sockets.",
        section="Process",
    )
    group: str | None = setting(
        None,
        help="Switch to this group (name or gid) after binding the sockets.",
        section="Process",
    )
    access_logfile: str | None = setting(
        None,
        help="Write an access log to FILE ('-' for stdout). Off by default.",
        section="Logging",
        metavar="FILE",
    )
    access_logformat: str = setting(
        "combined",
        help="Access log format: 'common', 'combined', 'json' (one JSON object per line, see "
        "docs/observability.md), or a gunicorn-style format string with atoms such as %(h)s %(r)s "
        "%(s)s %(b)s %(D)s %({header}i)s.",
        section="Logging",
        metavar="FORMAT",
    )
    error_log_format: str = setting(
        "text",
        help="Error log format: 'text' (gunicorn's layout) or 'json' (one object per line: time, level, pid, "
        "message, exc_info).",
        section="Logging",
        choices=("text", "json"),
    )
    request_id_header: str | None = setting(
        None,
        help="Give every request an id in this header (e.g. X-Request-ID): kept from a trusted peer "
        "(--forwarded-allow-ips) when it is 1-200 visible ASCII characters, else a new random one (32 hex "
        "digits); set in the environ (HTTP_X_REQUEST_ID) and added to the response. The JSON access log "
        "logs X-Request-ID the same way without it. Requests with ids take the Python path.",
        section="Logging",
        metavar="NAME",
        validate=_header_name,
    )
    error_logfile: str = setting(
        "-",
        help="Write the error log to FILE ('-' for stderr).",
        section="Logging",
        flags=("--error-logfile", "--log-file"),
        metavar="FILE",
    )
    log_level: str = setting(
        "info",
        help="Error log level.",
        section="Logging",
        choices=_LOG_LEVELS,
    )
    server_header: bool = setting(
        True,
        help="Send 'Server: rapidwsgi' unless the application sets its own Server header.",
        section="HTTP",
    )
    date_header: bool = setting(
        True,
        help="Send a Date header (cached per second) unless the application sets one.",
        section="HTTP",
    )
    metrics_bind: str | None = setting(
        None,
        help="Serve metrics from the master at ADDRESS (HOST:PORT or unix:PATH), never on the application's "
        "listeners: GET /metrics is the Prometheus text format (OpenMetrics when the scraper asks), "
        "/metrics?format=json the live per-worker view that `rapidwsgi stats` shows. Counters are "
        "kept across all workers, including dead and replaced ones. Off by default. "
        "See docs/observability.md.",
        section="Metrics",
        metavar="ADDRESS",
        validate=_metrics_address,
    )
    statsd_host: str | None = setting(
        None,
        help="Send the same metrics to a statsd daemon at HOST:PORT over UDP, from the master, every second "
        "(counters as deltas, gauges as values). Off by default.",
        section="Metrics",
        metavar="HOST:PORT",
        validate=_statsd_address,
    )
    statsd_prefix: str = setting(
        "rapidwsgi",
        help="The prefix of every statsd metric name (dot-separated).",
        section="Metrics",
    )
    static: list[str] = setting(
        help="Serve the files under DIRECTORY at URL_PREFIX (e.g. /static/=/srv/app/static) from the "
        "server itself: requests under the prefix never reach the application. Append :SECONDS for "
        "this mount's max-age, :immutable for fingerprinted files (a year, immutable), or both. "
        "Repeat for several mounts (the longest matching prefix wins). See docs/static.md.",
        section="Static files",
        metavar="URL_PREFIX=DIRECTORY",
        default_factory=list,
        validate=_static_mounts,
    )
    static_max_age: int = setting(
        60,
        help="Cache-Control max-age (seconds) of static files, for mounts without their own.",
        section="Static files",
        metavar="SECONDS",
        validate=_non_negative,
    )
    static_index: bool = setting(
        False,
        help="Serve index.html for a directory under a static mount (a directory path without its "
        "trailing slash is redirected to it); without it a directory is a 404. Never a listing.",
        section="Static files",
    )
    static_follow_symlinks: bool = setting(
        False,
        help="Follow symlinks that point outside the static mount's directory (inside it they are "
        "always followed); without it such a file is a 404.",
        section="Static files",
    )
    static_dotfiles: bool = setting(
        False,
        help="Serve files and directories whose names start with a dot (e.g. .well-known); without "
        "it they are a 404.",
        section="Static files",
    )
    static_sendfile: str = setting(
        "auto",
        help="How static files beyond 256 KiB are sent: on (sendfile(2), zero copy), off (reads of "
        "256 KiB blocks), or auto: sendfile, except to a peer on this host (loopback or a unix "
        "socket: a front-end on the same machine), where plain writes measured faster.",
        section="Static files",
        choices=("auto", "on", "off"),
    )
    static_cache_ttl: float = setting(
        1.0,
        help="How long (seconds) what a static path resolved to is trusted before the file is "
        "stat'ed again: a hot file costs no system call; a changed one is seen within this time.",
        section="Static files",
        metavar="SECONDS",
        validate=_non_negative,
    )
    check_config: bool = setting(
        False,
        help="Check the configuration and exit: load the settings, import the application as a worker "
        "would (after --chdir and --pythonpath), load the TLS files, check the --static directories "
        "and the --user/--group names; print 'rapidwsgi: configuration OK' and exit 0, or print the "
        "error and exit with the usual non-zero status. Binds no socket and starts no process.",
        section="Checks",
    )
    print_config: bool = setting(
        False,
        help="Print the effective settings and exit 0 without serving: one line per setting, in the "
        "order of this reference, as `name = value  # source`, the value a Python literal and the "
        "source one of default, file, env or cli. The application may be omitted.",
        section="Checks",
    )
    on_starting: Hook | None = hook_setting(
        "on_starting(server)", "Master: first thing, before anything is forked."
    )
    when_ready: Hook | None = hook_setting(
        "when_ready(server)", "Master: the listeners are ready, before the first workers start."
    )
    pre_fork: Hook | None = hook_setting(
        "pre_fork(server, worker)", "Master: before each worker is forked (worker.pid is None)."
    )
    post_fork: Hook | None = hook_setting(
        "post_fork(server, worker)", "Worker: right after its fork, before it loads the application."
    )
    post_worker_init: Hook | None = hook_setting(
        "post_worker_init(worker)", "Worker: the application is loaded (worker.app), before serving."
    )
    pre_request: Hook | None = hook_setting(
        "pre_request(worker, req)",
        "Worker: a request head is complete, before the application (on the event loop; "
        "turns the C request path off).",
    )
    post_request: Hook | None = hook_setting(
        "post_request(worker, req, environ, resp)",
        "Worker: the response is sent or aborted (on the event loop; turns the C request path off).",
    )
    worker_exit: Hook | None = hook_setting(
        "worker_exit(server, worker)", "Worker: it stopped serving, just before the process exits."
    )
    child_exit: Hook | None = hook_setting(
        "child_exit(server, worker)", "Master: a worker exited and was reaped (worker.exit_code)."
    )
    on_reload: Hook | None = hook_setting(
        "on_reload(server)", "Master: a reload (SIGHUP, --reload) begins, before the new workers start."
    )
    on_exit: Hook | None = hook_setting("on_exit(server)", "Master: just before it exits.")

    @property
    def adaptive(self) -> bool:
        """An adaptive worker count (--workers-max set): see :attr:`workers_range`."""
        return self.workers_max > 0

    @property
    def workers_range(self) -> tuple[int, int]:
        """The adaptive range, (min, max): --workers-min (1 when unset) to --workers-max."""
        return max(self.workers_min, 1), self.workers_max

    def protocol_for(self, index: int) -> str:
        """The ``--protocol`` of the ``index``-th listening socket."""
        return self.protocol[index] if len(self.protocol) > 1 else self.protocol[0]

    def tls_for(self, index: int) -> bool:
        """Whether the ``index``-th listening socket serves TLS (an http one, with --certfile)."""
        return bool(self.certfile) and self.protocol_for(index) == "http"

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
        """Settings from the command line, environment and config file, validated."""
        return cls.load_with_sources(argv, environ)[0]

    @classmethod
    def load_with_sources(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> tuple[Config, dict[str, str]]:
        """:meth:`load`, and where each setting's value came from: every setting name maps
        to one of :data:`SOURCES` (``default``, ``file``, ``env``, ``cli``)."""
        environ = os.environ if environ is None else environ
        cli = vars(build_parser().parse_args(argv))
        env = values_from_env(environ)
        config_file = cli.get("config") or env.get("config")
        file_values = values_from_file(config_file) if config_file else {}
        merged: dict[str, Any] = {**file_values, **env, **cli}
        config = cls.from_values(merged)
        sources = {f.name: "default" for f in dataclasses.fields(cls)}
        for source, values in (("file", file_values), ("env", env), ("cli", cli)):
            sources.update(dict.fromkeys(values, source))
        return config, sources

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Config:
        """Build and validate from already-typed values (missing ones take defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        config = cls(**values)
        hints = _hints()
        for f in dataclasses.fields(cls):
            value = getattr(config, f.name)
            if f.metadata["hook"]:
                if value is not None and not callable(value):
                    raise ConfigError(f"hook {f.name!r}: expected a function, got {value!r}")
                continue
            _check_type(f.name, value, hints[f.name])
            check = f.metadata["validate"]
            choices = f.metadata["choices"]
            if choices and value not in choices:
                raise ConfigError(f"{_flag(f)}: {value!r} is not one of {', '.join(choices)}")
            if check is not None:
                problem = check(value)
                if problem:
                    # A list's validator names the bad item itself; a scalar is shown as typed.
                    shown = "" if isinstance(value, list) else f" (got {_show(value)})"
                    raise ConfigError(f"{_flag(f)}: {problem}{shown}")
        if (config.keyfile or config.ca_certs or config.ciphers) and not config.certfile:
            raise ConfigError("--keyfile, --ca-certs and --ciphers need --certfile (TLS is off without it)")
        if config.cert_reqs != "none" and not config.ca_certs:
            raise ConfigError(
                f"--cert-reqs {config.cert_reqs}: client certificates need --ca-certs to verify them"
            )
        watching = [_flag(f) for f in _RELOAD_OPTIONS if getattr(config, f.name)]
        if watching and not config.reload:
            verb = "needs" if len(watching) == 1 else "need"
            raise ConfigError(f"{' and '.join(watching)} {verb} --reload (nothing is watched without it)")
        if config.workers_min and not config.workers_max:
            raise ConfigError(
                f"--workers-min {config.workers_min} needs --workers-max (the upper end of the range)"
            )
        if config.workers_min > config.workers_max:
            raise ConfigError(
                f"--workers-min {config.workers_min} is above --workers-max {config.workers_max}"
            )
        if config.adaptive and config.workers > config.workers_max:
            raise ConfigError(f"--workers {config.workers} is above --workers-max {config.workers_max}")
        if len(config.protocol) not in (1, len(config.bind)):
            raise ConfigError(
                f"--protocol: give one for all binds or one per --bind ({len(config.bind)}), "
                f"not {len(config.protocol)}"
            )
        return config


#: Where a setting's value came from (:meth:`Config.load_with_sources`), lowest precedence first.
SOURCES: Final = ("default", "file", "env", "cli")

_RELOAD_OPTIONS: Final = tuple(
    f for f in dataclasses.fields(Config) if f.name in ("reload_extra_files", "reload_include")
)


def effective_settings(config: Config, sources: Mapping[str, str]) -> list[str]:
    """``--print-config``: one ``name = value  # source`` line per setting, in table order."""
    return [
        f"{f.name} = {_literal(getattr(config, f.name))}  # {sources.get(f.name, 'default')}"
        for f in dataclasses.fields(config)
    ]


def _literal(value: Any) -> str:
    """A value as a Python literal; a server hook (a function) by its name."""
    if callable(value):
        return f"<function {getattr(value, '__qualname__', value)}>"
    return repr(value)


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _base_type(hint: Any) -> Any:
    """int / float / str / bool / list, ignoring Optional."""
    origin = typing.get_origin(hint)
    if origin is list:
        return list
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return _base_type(args[0])
    return hint


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _check_type(name: str, value: Any, hint: Any) -> None:
    if value is None and _optional(hint):
        return
    base = _base_type(hint)
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if base is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise ConfigError(f"setting {name!r}: expected {getattr(base, '__name__', base)}, got {value!r}")


def _default_of(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _flag(f: dataclasses.Field[Any]) -> str:
    if f.metadata["positional"]:
        return f.metadata["metavar"] or f.name.upper()
    flags: tuple[str, ...] = f.metadata["flags"]
    return flags[-1] if flags else "--" + f.name.replace("_", "-")


def _env_name(f: dataclasses.Field[Any]) -> str:
    return ENV_PREFIX + f.name.upper()


def _show(value: Any) -> str:
    """A value as the user would have typed it (``-1``, not ``-1.0``; lists comma-joined)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


#: What a value of each kind must look like, for "'abc' is not an integer".
_EXPECTED: Final[dict[Any, str]] = {
    int: "an integer",
    float: "a number",
    bool: "a boolean (true/false, yes/no, on/off, 1/0)",
}


def _parser_for(f: dataclasses.Field[Any], hint: Any) -> Callable[[str], Any]:
    """The text -> value function of a setting; a bad text raises ValueError with a
    message naming what was expected (argparse shows it as it is)."""
    custom = f.metadata["parse"]
    base = _base_type(hint)
    if custom is not None:
        parse = typing.cast(Callable[[str], Any], custom)
        expected = f.metadata["expects"] or "a valid value"
    elif base is bool:
        parse, expected = _parse_bool, _EXPECTED[bool]
    elif base is list:
        return str
    else:
        parse, expected = typing.cast(Callable[[str], Any], base), _EXPECTED.get(base, "a valid value")

    def parse_text(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None

    return parse_text


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


# ------------------------------------------------------------------ generators


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad value raises ConfigError (the CLI reports it like any other)."""

    def error(self, message: str) -> typing.NoReturn:
        # "argument -w/--workers: ..." -> "--workers: ...", as the other errors name it.
        if message.startswith("argument ") and ": " in message:
            flags, _, rest = message[len("argument ") :].partition(": ")
            message = f"{flags.split('/')[-1]}: {rest}"
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser, generated from the table. Unset options are absent."""
    parser = _Parser(
        prog="rapidwsgi",
        description="rapidwsgi: a fast, strict HTTP/1.1 server for WSGI applications.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"rapidwsgi {__version__}")
    hints = _hints()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(Config):
        if f.metadata["hook"]:
            continue  # a config file's function
        section = f.metadata["section"]
        group = groups.get(section)
        if group is None:
            group = groups[section] = parser.add_argument_group(section)
        hint = hints[f.name]
        base = _base_type(hint)
        # argparse expands %-formats in help texts (%(default)s): a literal % (the
        # access log atoms, %(h)s) must be doubled.
        help_text = f.metadata["help"]
        default = _default_of(f)
        if not f.metadata["positional"] and default is not None and default != "":
            help_text += f" (default: {oct(default) if f.name == 'umask' else _show(default)})"
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%"), "dest": f.name}
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata["positional"]:
            del kwargs["dest"]
            group.add_argument(f.name, nargs="?", metavar=f.metadata["metavar"], **kwargs)
            continue
        flags = f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)
        if base is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if base is list:
            # A comma-list parser yields lists: they extend; plain items append.
            kwargs["action"] = "extend" if f.metadata["parse"] is not None else "append"
        kwargs["type"] = _parser_for(f, hint)
        kwargs["metavar"] = f.metadata["metavar"] or f.name.upper()
        group.add_argument(*flags, **kwargs)
    return parser


def values_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Typed values from ``RAPIDWSGI_<NAME>`` variables (lists: comma-separated)."""
    hints = _hints()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        raw = environ.get(_env_name(f))
        if raw is None or f.metadata["hook"]:
            continue
        hint = hints[f.name]
        try:
            if _base_type(hint) is list:
                values[f.name] = [item.strip() for item in raw.split(",") if item.strip()]
            else:
                values[f.name] = _parser_for(f, hint)(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{_env_name(f)}: {exc}") from None
    return values


def values_from_file(path: str) -> dict[str, Any]:
    """Settings from a Python or TOML config file (unknown names are an error)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    if path.endswith(".toml"):
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        with open(path, "rb") as fp:
            data: dict[str, Any] = tomllib.load(fp)
        data = data.get("rapidwsgi", data)
        data = {key.replace("-", "_"): value for key, value in data.items()}
    else:
        try:
            namespace = runpy.run_path(path)
        except Exception as exc:
            raise ConfigError(f"config file {path!r} failed: {exc}") from exc
        names = {f.name for f in dataclasses.fields(Config)}
        data = {k: v for k, v in namespace.items() if k in names}
    if isinstance(data.get("bind"), str):
        data["bind"] = [data["bind"]]
    return data


def settings_markdown() -> str:
    """The settings reference page (docs/settings.md), generated from the table."""
    hints = _hints()
    out = [
        "# Settings reference",
        "",
        "Generated from `rapidwsgi.config.Config` by `python -m rapidwsgi.config`; do not edit.",
        "",
        "Every setting can be given on the command line, as an environment variable",
        f"(`{ENV_PREFIX}<NAME>`; lists comma-separated; booleans 1/0, true/false, yes/no, on/off)",
        "or in a config file (`--config FILE`, Python or TOML). Precedence: command line,",
        "then environment, then config file, then the default.",
        "",
    ]
    section = None
    for f in dataclasses.fields(Config):
        if f.metadata["section"] != section:
            section = f.metadata["section"]
            out += [f"## {section}", ""]
            if f.metadata["hook"]:
                out += [
                    "Functions defined in a Python config file (`--config FILE.py`), with",
                    "gunicorn's names and arguments (docs/process.md, Server hooks); a hook",
                    "that raises is logged and the server goes on.",
                    "",
                ]
        if f.metadata["hook"]:
            out += [f"### `{f.metadata['signature']}`", "", f.metadata["help"], ""]
            continue
        hint = hints[f.name]
        base = _base_type(hint)
        if f.metadata["positional"]:
            cli = f"`{f.metadata['metavar']}` (positional)"
        else:
            flags = f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)
            if base is bool:
                flags = (*flags, "--no-" + flags[-1][2:])
            cli = ", ".join(f"`{flag}`" for flag in flags)
        default = _default_of(f)
        if f.name == "umask":
            default_text = f"`{oct(typing.cast(int, default))}`"
        else:
            default_text = f"`{default!r}`"
        out += [
            f"### `{f.name}`",
            "",
            f"- command line: {cli}",
            f"- environment: `{_env_name(f)}`",
            f"- type: {getattr(base, '__name__', str(base))}"
            + (
                f", one of {', '.join(f'`{c}`' for c in f.metadata['choices'])}"
                if f.metadata["choices"]
                else ""
            ),
            f"- default: {default_text}",
            "",
            f.metadata["help"],
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(settings_markdown())
