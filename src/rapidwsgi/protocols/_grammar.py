"""The few ABNF rules rapidwsgi checks itself (llhttp tokenizes the rest).

Every pattern here is *anchored by the caller* (``fullmatch``) and runs in linear time.
"""

from __future__ import annotations

import re
from typing import Final

# RFC 9110 §7.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ]
# uri-host is an IP-literal in brackets or a reg-name (unreserved / pct-encoded /
# sub-delims); IPv4 addresses are a subset of reg-name. llhttp checks only the
# characters of a field value, not this grammar.
HOST_VALUE: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")

# RFC 9110 §8.6: Content-Length = 1*DIGIT
DIGITS: Final = re.compile(rb"[0-9]+")

# The rules below check what a gateway (uwsgi, FastCGI) sends as CGI variables; the
# HTTP/1.1 front-end gets the same guarantees from llhttp's strict tokenizer.

# RFC 9110 §5.6.2: token = 1*tchar (methods, field names)
TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# RFC 9110 §5.5: field-value = *field-content; no CR, LF, NUL or other controls but HTAB.
FIELD_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

# RFC 9112 §3.2.1 origin-form (absolute-path [ "?" query ]) or §3.2.4 asterisk-form as a
# gateway forwards it: no spaces or controls. Raw bytes >= 0x80 (which nginx lets
# through from clients) are kept: they frame nothing, and PEP 3333 decodes them as latin-1.
GATEWAY_TARGET: Final = re.compile(rb"/[\x21-\x7e\x80-\xff]*|\*")
GATEWAY_QUERY: Final = re.compile(rb"[\x21-\x7e\x80-\xff]*")
