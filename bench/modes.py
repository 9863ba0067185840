"""What nginx in front costs, per mode: a slice of bench/run.py's scenario matrix.

``python bench/modes.py [run.py options]`` runs rapidwsgi alone on hello world, directly
and behind nginx in every mode (proxy_pass with and without upstream keep-alive,
uwsgi_pass, fastcgi_pass), ``wrk -c20``, 3 rounds of 5 s, and writes
``<out>/<date>-<host>-modes.*``. Any run.py option given here overrides these defaults
(e.g. ``--servers rapidwsgi,uwsgi`` or ``--loads wrk-c20,ab-c20``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import run

DEFAULTS = (
    "--servers",
    "rapidwsgi",
    "--apps",
    "hello",
    "--loads",
    "wrk-c20",
    "--matrix",
    "--rounds",
    "3",
    "--duration",
    "5",
    "--tag",
    "modes",
)


def main(argv: Sequence[str]) -> int:
    return run.main([*DEFAULTS, *argv])  # argparse: the later option wins


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
