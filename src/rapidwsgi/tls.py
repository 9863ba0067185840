"""TLS for the HTTP listeners (``--certfile``/``--keyfile``), on the standard ``ssl`` module.

Contract: :func:`server_context` returns the ``ssl.SSLContext`` every HTTP listener of a
worker serves with, or None without ``--certfile``; a certificate, key or CA file that
cannot be loaded raises :class:`~rapidwsgi.errors.ConfigError` with a one-line reason.
The master calls it once before forking (so a bad file is an error at start, not a crash
loop); every worker builds its own context, so a reload (SIGHUP) picks up renewed
certificate files without a restart. uwsgi and FastCGI listeners are never wrapped: their
peer is a gateway on a trusted link.
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
