"""The ``rapidwsgi`` command: settings, application loading, binding, serving.

Contract: :func:`main` returns a process exit status from :class:`ExitCode` and never
lets an expected failure (bad setting, unimportable app, address in use) escape as a
traceback: it prints one line saying what went wrong (plus the import traceback when
there is one) and exits non-zero.
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import resource
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from .config import Config, build_parser, effective_settings
from .errors import AppLoadError, BindError, ConfigError, ExitCode
from .log import error_log, setup_error_log
from .sockets import bind, chown_unix_sockets, parse_address, systemd_sockets
from .supervisor import Master

# The master imports only what supervising needs (supervisor.py): the checks at start
# below import the TLS, static and loader modules only when their option asks for them;
# the serving modules are imported by import_worker_modules, for the workers' sake.


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["stats"]:
        from .stats import main as stats_main

        return stats_main(args[1:])
    try:
        config, sources = Config.load_with_sources(argv)
    except ConfigError as exc:
        print(f"rapidwsgi: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if config.print_config:
        sys.stdout.write("".join(line + "\n" for line in effective_settings(config, sources)))
        sys.stdout.flush()
        if not config.check_config:
            return ExitCode.OK
    if not config.app:
        build_parser().print_usage(sys.stderr)
        print("rapidwsgi: error: the application (MODULE:APP) is required", file=sys.stderr)
        return ExitCode.USAGE
    if config.check_config:
        return check_config(config)
    setup_error_log(config.log_level, config.error_logfile, config.error_log_format)

    try:
        enter_app_directory(config)
    except ConfigError as exc:
        error_log.error("%s", exc)
        return ExitCode.USAGE

    try:
        check_at_start(config)
    except ConfigError as exc:
        error_log.error("%s", exc)
        return ExitCode.USAGE
    try:
        sockets, created = open_sockets(config)
        metrics_socket = None
        if config.metrics_bind:
            # Bound with the others, before --user: a port below 1024 works as for --bind.
            address = parse_address(config.metrics_bind)
            metrics_socket = bind(address, 64, 0o077)
            if address.kind == "unix":
                created.append(address.path)
    except BindError as exc:
        error_log.error("%s", exc)
        return ExitCode.BIND
    if not config.preload or config.user is not None or config.group is not None:
        # Not with --preload: the zygote imports them (and its workers share its copy).
        import_worker_modules(config)
    raise_open_files_limit()
    try:
        drop_privileges(config, sockets, created)
    except ConfigError as exc:
        error_log.error("%s", exc)
        return ExitCode.USAGE
    return Master(config, sockets, unlink_at_exit=created, metrics_socket=metrics_socket).run()


def check_at_start(config: Config) -> None:
    """What must fail before anything is bound or forked, with a :class:`ConfigError`:
    a certificate or key that does not load, a ``--static`` directory that is missing.

    The TLS context loaded here is kept for the workers (``tls.worker_context``); the
    modules are imported only when the option is set, so that a master without them
    does not hold ``ssl`` or the static responder (and the WSGI modules it imports).
    """
    if config.certfile:
        from .tls import load_at_start

        load_at_start(config)
    if config.static:
        from .static import StaticFiles

        StaticFiles.from_config(config)


def import_worker_modules(config: Config) -> None:
    """Import what a worker imports after the fork (the worker module, the protocol,
    WSGI and static modules, the event loop), not the application, here in the master.

    Without ``--preload``: the workers forked from the master then share one copy of
    them, copy-on-write (each importing its own costs about 3 MiB of private memory per
    worker, more than the master saves; bench/rss.py). With ``--user``/``--group``
    (also with ``--preload``): imported before the privileges are dropped, because after
    the switch an installation only root can read would fail in every worker with a
    traceback, or silently fall back from uvloop to asyncio. Otherwise (``--preload``)
    nothing is imported here: the zygote imports them."""
    from . import loader  # noqa: F401
    from .worker import import_event_loop

    import_event_loop(config.loop)


def enter_app_directory(config: Config) -> None:
    """``--chdir`` and ``--pythonpath``: where the workers import the application from."""
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise ConfigError(f"cannot change directory to {config.chdir!r}: {exc.strerror}") from None
    # Like gunicorn: the working directory's modules are importable.
    sys.path.insert(0, os.getcwd())
    for path in reversed(config.pythonpath):
        sys.path.insert(0, os.path.abspath(path))


def check_config(config: Config) -> int:
    """``--check-config``: what :func:`main` checks before binding, then the application
    imported as a worker imports it; binds nothing and forks nothing.

    Prints ``rapidwsgi: configuration OK`` and returns 0, or prints one error line (and
    the application's traceback, for an import error) to stderr and returns its ExitCode.
    """

    def fail(message: object, status: ExitCode, detail: str = "") -> int:
        print(f"rapidwsgi: error: {message}", file=sys.stderr)
        if detail:
            sys.stderr.write(detail.rstrip() + "\n")
        return status

    from .loader import load_app  # --check-config imports the application anyway

    try:
        enter_app_directory(config)
        check_at_start(config)
        if config.user is not None or config.group is not None:
            resolve_ids(config)
        if config.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ConfigError("--loop uvloop: uvloop is not installed")
    except ConfigError as exc:
        return fail(exc, ExitCode.USAGE)
    try:
        for text in config.bind:
            parse_address(text)
    except BindError as exc:
        return fail(exc, ExitCode.BIND)
    try:
        load_app(config.app or "")
    except AppLoadError as exc:
        return fail(exc, ExitCode.APP_LOAD, exc.detail)
    print("rapidwsgi: configuration OK")
    return ExitCode.OK


#: Never ask for more descriptors than this, even when the hard limit is unlimited.
MAX_OPEN_FILES: Final = 1 << 20


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit (the workers inherit it).

    Every connection is a file descriptor: with the common soft limit of 1024, a worker
    would fail to accept the 1000th concurrent client (EMFILE) although the hard limit
    (often 524288 under systemd) allows far more. Raising the soft limit needs no privilege.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open
            error_log.debug("cannot raise the open files limit to %d: %s", wanted, exc)
            return
        error_log.debug("Open files limit raised from %d to %d", soft, wanted)


def open_sockets(config: Config) -> tuple[list[socket.socket], list[str]]:
    """The listening sockets (systemd's if it passed some, else ``--bind``), and the
    unix socket files created for them here (the master removes those at exit, never
    the files of sockets it adopted).

    With ``--reuse-port`` TCP addresses are only bound here (holding the port); each
    worker listens on its own SO_REUSEPORT socket.
    """
    inherited = systemd_sockets()
    if inherited:
        error_log.info("Using %d socket(s) from systemd (LISTEN_FDS)", len(inherited))
        return inherited, []
    sockets = []
    created = []
    for text in config.bind:
        address = parse_address(text)
        reuse = config.reuse_port and address.kind == "tcp"
        sockets.append(bind(address, config.backlog, config.umask, reuse_port=reuse, listen=not reuse))
        if address.kind == "unix":
            created.append(address.path)
    return sockets, created


def drop_privileges(config: Config, sockets: list[socket.socket], created: list[str]) -> None:
    """``--user`` / ``--group``: switch after binding (the unix socket files created
    here change owner too; an adopted socket's file keeps the owner its creator gave it)."""
    if config.user is None and config.group is None:
        return
    uid, gid = resolve_ids(config)
    chown_unix_sockets(
        [s for s in sockets if s.family == socket.AF_UNIX and s.getsockname() in created], uid, gid
    )
    try:
        if gid != os.getgid():
            os.setgroups([])
            os.setgid(gid)
        if uid != os.getuid():
            os.setuid(uid)
    except PermissionError as exc:
        raise ConfigError(f"cannot switch to user {uid} / group {gid}: {exc.strerror}") from None
    error_log.info("Running as uid %d, gid %d", uid, gid)


def resolve_ids(config: Config) -> tuple[int, int]:
    """The uid and gid ``--user`` / ``--group`` name (the current ones where not given)."""
    try:
        uid = _resolve(config.user, pwd.getpwnam, "pw_uid") if config.user else os.getuid()
        if config.group:
            gid = _resolve(config.group, grp.getgrnam, "gr_gid")
        elif config.user:
            gid = pwd.getpwuid(uid).pw_gid
        else:
            gid = os.getgid()
    except KeyError as exc:
        raise ConfigError(f"unknown user or group: {exc.args[0]}") from None
    return uid, gid


def _resolve(name: str, lookup: Callable[[str], Any], field: str) -> int:
    if name.isdigit():
        return int(name)
    return int(getattr(lookup(name), field))
