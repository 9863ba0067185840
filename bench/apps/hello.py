"""Hello-world WSGI app used by the benchmark: 200, text/plain, 13 bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]

BODY = b"Hello, world!"
HEADERS = (
    ("Content-Type", "text/plain"),
    ("Content-Length", str(len(BODY))),
)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answer every request with ``Hello, world!``."""
    start_response("200 OK", list(HEADERS))
    return [BODY]
