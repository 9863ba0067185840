"""The one eviction rule of the server's small memo caches.

Several lookups cache a pure function of a key a client or an application controls (a
request target, an environ key, a Host value, a peer address, a status line, a response
header list). Each cache is a plain ``dict``, read where it is used (``cache.get(key)``,
``key in cache``: the compiled modules and ``_cfast.c`` look them up directly, so a hit
costs no call), and written only on a miss, through :func:`remember`.

The rule: a cache holds at most ``limit`` entries; storing into a full one empties it
first. However many distinct keys arrive, the memory stays bounded, and the keys in use
since then are cached again. Each step is one dict operation, atomic under the GIL, so
application threads that miss at the same time (``header_parts`` runs in them) cannot
corrupt a cache or fail, at worst compute one value twice. Leaf module: imports nothing.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(cache: dict[K, V], key: K, value: V, limit: int) -> None:
    """Store ``key -> value`` in ``cache``, emptying it first when it has ``limit`` entries."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
