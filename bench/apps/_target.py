"""Shared helper for the runner scripts: load ``module:attr`` and parse argv."""

from __future__ import annotations

import importlib
import sys
from typing import Any


def load(target: str) -> Any:
    """Import ``module:attr`` (the cwd and this folder are on sys.path)."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "app")


def parse_argv(server: str) -> tuple[Any, str, int]:
    """Return (app, host, port) from ``runner.py MODULE:APP HOST PORT``."""
    if len(sys.argv) != 4:
        sys.exit(f"usage: run_{server}.py MODULE:APP HOST PORT")
    return load(sys.argv[1]), sys.argv[2], int(sys.argv[3])
