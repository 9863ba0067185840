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
