"""hello:app behind WhiteNoise (static files inside the application, at Python speed).

The directory comes from ``BENCH_STATIC_DIR`` and is served at ``/static/``, as
``bench/static.py`` mounts it on every server. ``max_age`` as rapidwsgi's default
``--static-max-age`` (60 s); WhiteNoise reads the directory once at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from hello import app as hello
from whitenoise import WhiteNoise  # type: ignore[import-not-found,unused-ignore]

StartResponse = Callable[..., Any]

app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]] = WhiteNoise(
    hello, root=os.environ["BENCH_STATIC_DIR"], prefix="static/", max_age=60
)
