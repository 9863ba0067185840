"""Run a WSGI app under gevent.pywsgi: ``run_gevent.py MODULE:APP HOST PORT``.

No monkey-patching: the apps do not block on sockets (SQLite is a local file).
"""

from __future__ import annotations

import importlib

from _target import parse_argv


def main() -> None:
    app, host, port = parse_argv("gevent")
    pywsgi = importlib.import_module("gevent.pywsgi")
    # log=None: no access log (the other servers run without one too)
    pywsgi.WSGIServer((host, port), app, log=None).serve_forever()


if __name__ == "__main__":
    main()
