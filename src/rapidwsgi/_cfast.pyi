"""Type stub of the C request path (``_cfast.c``; see its contract at the top)."""

from collections.abc import Callable
from typing import Any

from .events import Request

def setup(
    *,
    request: type,
    response: type,
    parse_status: Callable[[object], tuple[int, bytes]],
    header_parts: Callable[[object], tuple[bytes, int | None, bool, int]],
    status_cache: dict[str, tuple[int, bytes]],
    headers_cache: dict[tuple[Any, ...], tuple[bytes, int | None, bool, int]],
    app_error: type[BaseException],
    set_running_loop: Callable[[Any], None],
) -> None: ...
def presized(items: dict[str, Any], spare: int, /) -> dict[str, Any]: ...
def parse_head(
    data: bytes, max_line: int, max_fields: int, max_field_size: int, /
) -> tuple[int, Request] | None: ...

class Fast:
    def __init__(
        self,
        conn: Any,
        ctx: Any,
        app: Any,
        base: dict[str, Any],
        write: Callable[[bytes], object],
        loop: Any,
        base_context: Any,
        on_done: Callable[[], None] | None,
        max_line: int,
        max_fields: int,
        max_field_size: int,
        static_prefixes: tuple[str, ...] | None,
        static_bares: tuple[str, ...] | None,
        static_quick: Callable[[dict[str, Any]], object] | None,
        meter: Meter | None,
        shed: Callable[[dict[str, Any]], Any] | None,
    ) -> None: ...
    def serve(self, data: bytes, date_server: tuple[bytes, bytes, bytes, bytes], inline: bool, /) -> int: ...
    def clear(self) -> None: ...

class Meter:
    def __init__(self, region: Any, slot: int, layout: tuple[Any, ...], /) -> None: ...
    def request(
        self, protocol: int, method: int, status: int, duration_ns: int, bytes_in: int, bytes_out: int, /
    ) -> None: ...
    def finish(
        self,
        record: int,
        protocol: int,
        method: int,
        status: int,
        started_ns: int,
        bytes_in: int,
        bytes_out: int,
        /,
    ) -> None: ...
    def count(self, word: int, /) -> None: ...
    def gauges(self, active: int, idle: int, busy: int, waiting: int, /) -> None: ...
    def begin(self, record: int, method: bytes, path: bytes, start_ns: int, /) -> None: ...
    def end(self, record: int, /) -> None: ...
