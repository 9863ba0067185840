"""The ``rapidwsgi`` command: settings, application loading, binding, serving.

Contract: :func:`main` returns a process exit status from :class:`ExitCode` and never
lets an expected failure (bad setting, unimportable app, address in use) escape as a
traceback: it prints one line saying what went wrong (plus the import traceback when
there is one) and exits non-zero.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Sequence

from .config import Config, build_parser
from .errors import AppLoadError, BindError, ConfigError
from .loader import load_app
from .log import error_log, setup_error_log
from .sockets import bind, parse_address


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 2  # bad command line or setting (argparse's convention)
    APP_LOAD = 4  # the application could not be imported (gunicorn's code)
    BIND = 5  # a listening socket could not be created


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = Config.load(argv)
    except ConfigError as exc:
        print(f"rapidwsgi: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if not config.app:
        build_parser().print_usage(sys.stderr)
        print("rapidwsgi: error: the application (MODULE:APP) is required", file=sys.stderr)
        return ExitCode.USAGE
    errors = setup_error_log(config.log_level, config.error_logfile)

    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            error_log.error("cannot change directory to %r: %s", config.chdir, exc.strerror)
            return ExitCode.USAGE
    # Like gunicorn: the working directory's modules are importable.
    sys.path.insert(0, os.getcwd())
    if config.pythonpath:
        for path in reversed(config.pythonpath.split(",")):
            if path.strip():
                sys.path.insert(0, os.path.abspath(path.strip()))

    try:
        sockets = [bind(parse_address(text), config.backlog, config.umask) for text in config.bind]
    except BindError as exc:
        error_log.error("%s", exc)
        return ExitCode.BIND

    try:
        app = load_app(config.app)
    except AppLoadError as exc:
        if exc.detail:
            error_log.error("%s\n%s", exc, exc.detail.rstrip())
        else:
            error_log.error("%s", exc)
        return ExitCode.APP_LOAD

    from .worker import Worker

    return Worker(config, app, sockets, errors).run()
