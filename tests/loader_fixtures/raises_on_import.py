"""A module whose import fails inside its own code."""

from __future__ import annotations


def _configure() -> None:
    raise RuntimeError("fixture exploded while importing")


_configure()

app = None
