"""TLS for the HTTP listeners (``--certfile``/``--keyfile``), on the standard ``ssl`` module.

Contract: :func:`server_context` returns the ``ssl.SSLContext`` every HTTP listener of a
worker serves with, or None without ``--certfile``; a certificate, key or CA file that
cannot be loaded raises :class:`~rapidwsgi.errors.ConfigError` with a one-line reason.
The master calls :func:`load_at_start` before it forks and before ``--user`` drops
privileges (a bad file is an error at start, not a crash loop); every worker calls
:func:`worker_context`, which loads the files again, so a reload (SIGHUP) picks up renewed
certificates, and falls back to the context loaded at start (inherited through fork)
when they cannot be read any more (a key readable only by root). uwsgi and FastCGI
listeners are never wrapped: their peer is a gateway on a trusted link.
"""

from __future__ import annotations

import ssl
from typing import Final

from .config import Config
from .errors import ConfigError

#: --cert-reqs values (gunicorn's 0/1/2 are accepted as the same three).
VERIFY_MODES: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def server_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context for ``config``, or None when TLS is off (see above)."""
    if not config.certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.0/1.1 are deprecated (RFC 8996).
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        what = f"--certfile {config.certfile}" + (f" / --keyfile {config.keyfile}" if config.keyfile else "")
        raise ConfigError(f"{what}: cannot load the certificate and key: {_reason(exc)}") from None
    if config.ca_certs:
        try:
            context.load_verify_locations(cafile=config.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ca-certs {config.ca_certs}: {_reason(exc)}") from None
    context.verify_mode = VERIFY_MODES[config.cert_reqs]
    if config.ciphers:
        try:
            context.set_ciphers(config.ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(f"--ciphers {config.ciphers!r}: {_reason(exc)}") from None
    # Only HTTP/1.1 is spoken: a client offering h2 by ALPN must not assume it.
    context.set_alpn_protocols(["http/1.1"])
    return context


_at_start: ssl.SSLContext | None = None


def load_at_start(config: Config) -> ssl.SSLContext | None:
    """:func:`server_context`, kept for :func:`worker_context` (the master, before forking)."""
    global _at_start
    _at_start = server_context(config)
    return _at_start


def worker_context(config: Config) -> tuple[ssl.SSLContext | None, str | None]:
    """The context for a starting worker: freshly loaded, or else the one loaded at start
    (with the reason why the files could not be loaded again)."""
    try:
        return server_context(config), None
    except ConfigError as exc:
        if _at_start is None:
            raise
        return _at_start, str(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
