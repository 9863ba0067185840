"""Run a WSGI app under meinheld: ``run_meinheld.py MODULE:APP HOST PORT``.

meinheld's keep-alive is off by default (``set_keepalive(0)``); it is turned on
(10 s idle timeout) so that wrk's keep-alive loads measure it like the others.
"""

from __future__ import annotations

import importlib

from _target import parse_argv

KEEPALIVE_S = 10


def main() -> None:
    app, host, port = parse_argv("meinheld")
    server = importlib.import_module("meinheld.server")
    server.set_keepalive(KEEPALIVE_S)
    server.set_access_logger(None)
    server.listen((host, port))
    server.run(app)


if __name__ == "__main__":
    main()
