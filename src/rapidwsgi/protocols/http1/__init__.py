"""Sans-IO HTTP/1.1 (RFC 9112) for the server side. See ``_connection.py``."""

from ._connection import H1Connection
from ._semantics import Limits, request_from_head
from ._state import CLOSED, DONE, ERROR, IDLE, MUST_CLOSE, SEND_BODY

__all__ = [
    "CLOSED",
    "DONE",
    "ERROR",
    "IDLE",
    "MUST_CLOSE",
    "SEND_BODY",
    "H1Connection",
    "Limits",
    "request_from_head",
]
