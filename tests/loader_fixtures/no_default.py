"""A module with an application under a non-default name only."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def handler(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"handler"]
