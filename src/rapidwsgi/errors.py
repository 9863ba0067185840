"""Typed errors shared by every layer.

Contract: every error a peer can provoke is a :class:`ProtocolError` carrying the
HTTP status it implies (RFC 9110 §15), so the code that reports it never has to guess
a status from a message. Errors the application provokes are :class:`AppError`.
"""

from __future__ import annotations

import enum
from typing import Final


class ExitCode(enum.IntEnum):
    """Process exit statuses of the master and its workers."""

    OK = 0
    USAGE = 2  # bad command line or setting (argparse's convention)
    WORKER_BOOT = 3  # workers keep dying before they serve (gunicorn's code)
    APP_LOAD = 4  # the application could not be imported (gunicorn's code)
    BIND = 5  # a listening socket could not be created


class RapidWSGIError(Exception):
    """Base class of every error raised by rapidwsgi itself."""


class ProtocolError(RapidWSGIError):
    """A violation of the wire protocol.

    ``status`` is the response status the violation implies; ``reason`` is a short
    human-readable explanation that is safe to log (it never echoes raw peer bytes).
    """

    status: int = 400

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason: Final = reason
        if status is not None:
            self.status = status


class RemoteProtocolError(ProtocolError):
    """The peer sent something we refuse (RFC 9112 strict parsing)."""


class BadRequest(RemoteProtocolError):
    status = 400


class RequestTimeout(RemoteProtocolError):
    """The peer took too long to send a request head or body (RFC 9110 §15.5.9)."""

    status = 408


class ContentTooLarge(RemoteProtocolError):
    status = 413


class URITooLong(RemoteProtocolError):
    status = 414


class ExpectationFailed(RemoteProtocolError):
    status = 417


class HeaderFieldsTooLarge(RemoteProtocolError):
    status = 431


class NotImplementedByServer(RemoteProtocolError):
    """Unknown transfer coding or unsupported method (RFC 9110 §15.6.2)."""

    status = 501


class VersionNotSupported(RemoteProtocolError):
    status = 505


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids (a bug or an app error)."""

    status = 500


class AppError(RapidWSGIError):
    """The WSGI application broke a PEP 3333 rule (bad status, bad header, ...)."""


class AppTimeout(RapidWSGIError):
    """The application did not answer within ``--request-timeout`` (the client gets
    504 Gateway Timeout, RFC 9110 §15.6.5, if no response had started)."""

    status = 504


class ClientDisconnected(OSError):
    """The client went away while the application was reading or writing.

    An ``OSError`` subclass so that applications and frameworks that already handle
    socket errors on ``wsgi.input`` or ``write()`` handle this one too.
    """


class ConfigError(RapidWSGIError):
    """An invalid setting value; the message names the setting."""


class AppLoadError(RapidWSGIError):
    """The application could not be imported or located.

    ``detail`` holds the formatted traceback of the underlying import error, if any.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail: Final = detail


class BindError(RapidWSGIError):
    """A listening socket could not be created (address in use, bad path, ...)."""
