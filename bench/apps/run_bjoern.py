"""Run a WSGI app under bjoern: ``run_bjoern.py MODULE:APP HOST PORT``."""

from __future__ import annotations

import importlib

from _target import parse_argv


def main() -> None:
    app, host, port = parse_argv("bjoern")
    bjoern = importlib.import_module("bjoern")
    bjoern.run(app, host, port)


if __name__ == "__main__":
    main()
