"""Compiled regular expressions for the HTTP/1.1 ABNF (RFC 9110 §5, RFC 9112).

Every pattern here is *anchored by the caller* (``fullmatch`` with ``pos``/``endpos``)
and written so that it runs in linear time on hostile input: no nested quantifiers over
overlapping classes, every alternative starts with a distinct character class.
"""

from __future__ import annotations

import re
from typing import Final

# RFC 9110 §5.6.2: token = 1*tchar
TCHAR: Final = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN: Final = rb"[" + TCHAR + rb"]+"
TOKEN_RE: Final = re.compile(TOKEN)

# RFC 9110 §5.5: field-vchar = VCHAR / obs-text; field-value = *field-content, with
# SP / HTAB allowed only *between* visible characters. Leading and trailing OWS belong
# to the field line (RFC 9112 §5) and are not part of the value. CR, LF, NUL and every
# other control byte (and DEL) are rejected outright: RFC 9110 §5.5 lets a recipient
# replace them, but replacing is guessing.
_VCHAR: Final = rb"[\x21-\x7e\x80-\xff]"
_VALUE: Final = _VCHAR + rb"(?:[\t\x20-\x7e\x80-\xff]*" + _VCHAR + rb")?"

# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS, ended by CRLF.
# No whitespace between name and colon (§5.1: MUST reject with 400); a line starting
# with whitespace (obs-fold, §5.2) cannot match because it does not start with a tchar.
# The look-behind pins every match to the start of a line, so ``findall`` over a field
# block returns one match per line exactly when every line is valid: a block is valid
# iff the number of matches equals the number of LF bytes in it (each match ends with
# the only LF it contains). The caller checks that count; no second validating pass.
FIELD_LINE: Final = re.compile(
    rb"(?<=\n)(" + TOKEN + rb"):[ \t]*(" + rb"(?:" + _VALUE + rb")?" + rb")[ \t]*\r\n"
)

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, exactly one SP
# each (§3 allows lenient whitespace parsing; a strict server does not). The target is
# checked for its form separately; here it is any run of visible bytes (obs-text is
# tolerated in the target because real clients send raw UTF-8 paths).
REQUEST_LINE: Final = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e\x80-\xff]+) HTTP/([0-9])\.([0-9])")
# Something that at least *looks* like a request line with a bad version, so that we
# can answer 505 for a well-formed but unsupported version and 400 for garbage.
ANY_VERSION: Final = re.compile(rb"HTTP/[0-9]\.[0-9]")

# RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
# The size is limited to 16 hex digits (64 bits) so it cannot overflow anything.
_QUOTED: Final = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"(?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|" + _QUOTED + rb"))?)*"
)

# RFC 9110 §7.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ]
# uri-host is an IP-literal in brackets or a reg-name (unreserved / pct-encoded /
# sub-delims); IPv4 addresses are a subset of reg-name.
HOST_VALUE: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")

# RFC 9110 §8.6: Content-Length = 1*DIGIT
DIGITS: Final = re.compile(rb"[0-9]+")
