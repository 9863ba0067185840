"""A 1 MB static-ish response: one precomputed bytes object, with Content-Length."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]

LINE = b"0123456789abcdef" * 4 + b"\n"  # 65 bytes
BODY = (LINE * (1024 * 1024 // len(LINE) + 1))[: 1024 * 1024]
HEADERS = (
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", str(len(BODY))),
)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answer every request with the same 1 MiB body."""
    start_response("200 OK", list(HEADERS))
    return [BODY]
