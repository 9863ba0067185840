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
CONTENT_LENGTH; the ``--limit-request-*`` limits apply.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote_from_bytes

from ..errors import BadRequest, ContentTooLarge, HeaderFieldsTooLarge, URITooLong
from ..events import Request
from . import _grammar as g
from .base import Limits

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


def request_from_cgi(variables: list[tuple[bytes, bytes]], limits: Limits) -> Request:
    """A Request from gateway variables; raises the RemoteProtocolError for bad ones."""
    if len(variables) > limits.max_fields + 64:  # the CGI set itself is ~20 variables
        raise HeaderFieldsTooLarge("too many gateway variables")
    values: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    extra: dict[str, str] = {}
    for name, value in variables:
        values[name] = value
        if name.startswith(b"HTTP_"):
            if len(name) + len(value) - 3 > limits.max_field_size:
                raise HeaderFieldsTooLarge("header field too large")
            # The gateway already parsed the request, but what it forwards is still
            # checked like a field line (RFC 9110 §5.5): no CR/LF/NUL can reach the app.
            if g.TOKEN.fullmatch(name, 5) is None or g.FIELD_VALUE.fullmatch(value) is None:
                raise BadRequest("invalid header variable")
            headers.append((name[5:].lower().replace(b"_", b"-"), value))
        elif name not in _REQUEST_VARS and name:
            extra[name.decode("latin-1")] = value.decode("latin-1")
    method = values.get(b"REQUEST_METHOD")
    if not method or g.TOKEN.fullmatch(method) is None:
        raise BadRequest("gateway sent no valid REQUEST_METHOD")
    target = values.get(b"REQUEST_URI")
    if not target:
        # Rebuild a target from the decoded path the gateway sent.
        path = quote_from_bytes(values.get(b"PATH_INFO", b"/") or b"/", safe="/;%@:+$,!~*'()=&").encode()
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
    if raw_length:
        if not raw_length.isdigit() or len(raw_length) > 18:
            raise BadRequest("invalid CONTENT_LENGTH")
        content_length = int(raw_length)
        if limits.max_body and content_length > limits.max_body:
            raise ContentTooLarge("request body too large")
        headers.append((b"content-length", raw_length))
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
    if extra.get("PATH_INFO") == "":
        del extra["PATH_INFO"]  # nginx's default: empty means "not split", compute it
    script_name = extra.get("SCRIPT_NAME")
    if script_name and script_name in (extra.get("DOCUMENT_URI"), extra.get("PATH_INFO")):
        # nginx's stock fastcgi_params send the whole path as SCRIPT_NAME (a CGI
        # script's name): it is no mount point for a WSGI app, so it is not used as one.
        del extra["SCRIPT_NAME"]
    return Request(
        method,
        target,
        path,
        query,
        _VERSIONS.get(protocol, b"1.1"),
        headers,
        content_length=content_length,
        keep_alive=False,
        extra=extra,
    )
