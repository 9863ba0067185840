"""Sans-IO HTTP/1.1 (RFC 9112) for the server side. See ``_connection.py``."""

from .._state import CLOSED, DONE, ERROR, IDLE, MUST_CLOSE, SEND_BODY
from ..base import Limits
from ._connection import H1Connection
from ._semantics import request_from_head

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
