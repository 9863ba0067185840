"""CGI variables from a gateway (nginx's ``uwsgi_pass`` / ``fastcgi_pass``) as a Request.

Contract: :func:`request_from_cgi` turns the variables a gateway sent (bytes names and
values, as in nginx's ``uwsgi_params`` / ``fastcgi_params``) into the same
:class:`~rapidwsgi.events.Request` the HTTP/1.1 front-end produces, so that one WSGI
adapter builds the environ (PEP 3333 rules: PATH_INFO from the request target,
percent-decoded, latin-1). Variables that are not the request line or a header (for
example REMOTE_ADDR, SERVER_NAME, HTTPS, SCRIPT_NAME) are carried in ``Request.extra``
and land in the environ as they are; ``HTTPS``/``REQUEST_SCHEME`` set
``wsgi.url_scheme``. What would be malformed in an HTTP head is refused here too
(:class:`BadRequest`): a method that is no token, a target that is not origin-form or
``*`` or holds spaces or controls, header variables with CR/LF/NUL, a non-numeric
CONTENT_LENGTH, an ``HTTP_CONTENT_TYPE``/``HTTP_CONTENT_LENGTH`` that disagrees with its
CGI variable (one that agrees is dropped: the CGI variable is authoritative); the
``--limit-request-*`` limits apply. PATH_INFO always comes from REQUEST_URI, as over
HTTP; a gateway's SCRIPT_NAME is kept only when it is a mount point above the path.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote_from_bytes, unquote_to_bytes

from ..errors import BadRequest, ContentTooLarge, HeaderFieldsTooLarge, URITooLong
from ..events import GATEWAY_FRAMED, LENGTH, NO_BODY, Request
from . import _grammar as g
from .base import MAX_LENGTH_DIGITS, Limits

# Variables that make up the request line or its framing (not passed through as extra).
_REQUEST_VARS: Final = frozenset(
    (
        b"REQUEST_METHOD",
        b"REQUEST_URI",
        b"QUERY_STRING",
        b"SERVER_PROTOCOL",
        b"CONTENT_LENGTH",
        b"CONTENT_TYPE",
    )
)
_VERSIONS: Final = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}


# The HTTP_ twins of the CGI framing variables: nginx's stock uwsgi_params and
# fastcgi_params (and Caddy's FastCGI transport) send both CONTENT_TYPE and
# HTTP_CONTENT_TYPE. The CGI variable is authoritative (RFC 3875 §4.1.3, §4.1.2).
_TWINS: Final = {b"HTTP_CONTENT_TYPE": b"CONTENT_TYPE", b"HTTP_CONTENT_LENGTH": b"CONTENT_LENGTH"}


def request_from_cgi(
    variables: list[tuple[bytes, bytes]],
    limits: Limits,
    *,
    length_optional: bool = False,
    keep_alive: bool = False,
) -> Request:
    """A Request from gateway variables; raises the RemoteProtocolError for bad ones.

    ``length_optional`` (FastCGI, whose STDIN stream delimits the body itself): an
    absent, empty or ``-1`` CONTENT_LENGTH (Caddy's for a chunked request) means "read to
    the end of STDIN"; the Request then carries no content-length header and is framed
    ``GATEWAY_FRAMED``; a declared one (even 0) is ``LENGTH``, which the stream must
    agree with. Otherwise (uwsgi) the body is CONTENT_LENGTH bytes, none without it.
    ``keep_alive``: the gateway keeps the connection for another request.
    """
    if len(variables) > limits.max_fields + 64:  # the CGI set itself is ~20 variables
        raise HeaderFieldsTooLarge("too many gateway variables")
    values: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    extra: dict[str, str] = {}
    twins: list[tuple[bytes, bytes]] = []
    for name, value in variables:
        values[name] = value
        if name.startswith(b"HTTP_"):
            if len(name) + len(value) - 3 > limits.max_field_size:
                raise HeaderFieldsTooLarge("header field too large")
            # The gateway already parsed the request, but what it forwards is still
            # checked like a field line (RFC 9110 §5.5): no CR/LF/NUL can reach the app.
            if g.TOKEN.fullmatch(name, 5) is None or g.FIELD_VALUE.fullmatch(value) is None:
                raise BadRequest("invalid header variable")
            if name in _TWINS:
                twins.append((name, value))
                continue
            headers.append((name[5:].lower().replace(b"_", b"-"), value))
        elif name not in _REQUEST_VARS and name:
            extra[name.decode("latin-1")] = value.decode("latin-1")
    for name, value in twins:
        cgi_name = _TWINS[name]
        if cgi_name not in values:
            values[cgi_name] = value  # only the twin was sent: it is the field
        elif values[cgi_name].strip() != value.strip():
            # Two different framings for one request: refuse rather than guess which the
            # gateway acted on (RFC 9112 §6.3 treats differing lengths the same way).
            raise BadRequest(f"{name.decode()} disagrees with {cgi_name.decode()}")
    method = values.get(b"REQUEST_METHOD")
    if not method or g.TOKEN.fullmatch(method) is None:
        raise BadRequest("gateway sent no valid REQUEST_METHOD")
    target = values.get(b"REQUEST_URI")
    if not target:
        # Rebuild a target from the decoded path the gateway sent (RFC 3875 §4.1.13:
        # SCRIPT_NAME then PATH_INFO; nginx's uwsgi_params send the whole path in PATH_INFO).
        script = values.get(b"SCRIPT_NAME", b"")
        path_info = values.get(b"PATH_INFO", b"")
        if not _under(path_info, script):
            path_info = script + path_info
        path = quote_from_bytes(path_info or b"/", safe="/;%@:+$,!~*'()=&").encode()
        query = values.get(b"QUERY_STRING", b"")
        target = path + (b"?" + query if query else b"")
    if len(target) > limits.max_line:
        raise URITooLong("request target too long")
    if g.GATEWAY_TARGET.fullmatch(target) is None:
        raise BadRequest("invalid REQUEST_URI")
    path, _, query = target.partition(b"?")
    if b"QUERY_STRING" in values:
        query = values[b"QUERY_STRING"]
        if g.GATEWAY_QUERY.fullmatch(query) is None:
            raise BadRequest("invalid QUERY_STRING")
    content_length = 0
    raw_length = values.get(b"CONTENT_LENGTH", b"")
    if length_optional and raw_length == b"-1":
        raw_length = b""
    if raw_length:
        if not raw_length.isdigit() or len(raw_length) > MAX_LENGTH_DIGITS:
            raise BadRequest("invalid CONTENT_LENGTH")
        content_length = int(raw_length)
        if limits.max_body and content_length > limits.max_body:
            raise ContentTooLarge("request body too large")
        headers.append((b"content-length", raw_length))
        framing = LENGTH if content_length or length_optional else NO_BODY
    else:
        framing = GATEWAY_FRAMED if length_optional else NO_BODY
    if values.get(b"CONTENT_TYPE"):
        if g.FIELD_VALUE.fullmatch(values[b"CONTENT_TYPE"]) is None:
            raise BadRequest("invalid CONTENT_TYPE")
        headers.append((b"content-type", values[b"CONTENT_TYPE"]))
    protocol = values.get(b"SERVER_PROTOCOL", b"HTTP/1.0")
    extra["SERVER_PROTOCOL"] = protocol.decode("latin-1")
    https = values.get(b"HTTPS", b"").lower() in (b"on", b"1", b"yes")
    scheme = values.get(b"REQUEST_SCHEME", values.get(b"UWSGI_SCHEME", b""))
    if https or scheme.lower() == b"https":
        extra["wsgi.url_scheme"] = "https"
    elif scheme.lower() == b"http":
        extra["wsgi.url_scheme"] = "http"
    # The path is the request target's, decoded as over HTTP, whatever the gateway made
    # of it: PATH_INFO differs per front-end (nginx: $document_uri, normalised; Apache
    # mod_proxy_fcgi and HAProxy fcgi-app: none, the whole path in SCRIPT_NAME; lighttpd:
    # split after the first segment). The gateway's SCRIPT_NAME is a mount point only
    # when it is a proper prefix of the path at a "/" (nginx `uwsgi_param SCRIPT_NAME
    # /app`); --root-path, when set, wins over it (see wsgi.build_environ).
    extra.pop("PATH_INFO", None)
    script_name = extra.pop("SCRIPT_NAME", "")
    if script_name:
        decoded = (unquote_to_bytes(path) if path.find(b"%") >= 0 else path).decode("latin-1")
        mount = script_name.rstrip("/")
        # Compared before stripping: "/admin/" sent for the path "/admin/" is the whole
        # path (Apache, HAProxy), not a mount at "/admin" above PATH_INFO "/".
        if mount and script_name != decoded and decoded.startswith(mount + "/"):
            extra["SCRIPT_NAME"] = mount
    return Request(
        method,
        target,
        path,
        query,
        _VERSIONS.get(protocol, b"1.1"),
        headers,
        content_length=content_length,
        keep_alive=keep_alive,
        extra=extra,
        framing=framing,
    )


def _under(path: bytes, prefix: bytes) -> bool:
    """``path`` is ``prefix`` or below it (at a "/" boundary)."""
    return not prefix or path == prefix or path.startswith(prefix.rstrip(b"/") + b"/")
