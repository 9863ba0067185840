"""The overload benchmark's application: ``/sleep?s=SECONDS`` sleeps, then 200 ``slept``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Sleep for ``s`` seconds (default 0.5), then answer ``slept``."""
    seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["0.5"])[0])
    time.sleep(seconds)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"slept"]
