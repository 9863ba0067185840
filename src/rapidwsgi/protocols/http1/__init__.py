"""Sans-IO HTTP/1.1 (RFC 9112) for the server side. See ``_connection.py``."""

from ._connection import MAX_CHUNK_LINE, H1Connection, Limits
from ._state import CLOSED, DONE, ERROR, IDLE, MUST_CLOSE, SEND_BODY

__all__ = [
    "CLOSED",
    "DONE",
    "ERROR",
    "IDLE",
    "MAX_CHUNK_LINE",
    "MUST_CLOSE",
    "SEND_BODY",
    "H1Connection",
    "Limits",
]
