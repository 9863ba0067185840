"""Run a WSGI app under fastwsgi: ``run_fastwsgi.py MODULE:APP HOST PORT``."""

from __future__ import annotations

import importlib

from _target import parse_argv


def main() -> None:
    app, host, port = parse_argv("fastwsgi")
    fastwsgi = importlib.import_module("fastwsgi")
    fastwsgi.run(wsgi_app=app, host=host, port=port)


if __name__ == "__main__":
    main()
