"""The memo caches' one eviction rule (``_bounded.remember``), and the cache whose
entries are not all recomputable from the key alone (the environ keys)."""

from __future__ import annotations

from rapidwsgi import wsgi
from rapidwsgi._bounded import remember


def test_remember_keeps_a_cache_bounded_and_caches_new_keys() -> None:
    cache: dict[int, str] = {}
    for i in range(10):
        remember(cache, i, str(i), 4)
        assert len(cache) <= 4
    assert cache[9] == "9"  # a full cache still takes new keys (it started over)


def test_environ_keys_of_special_fields_survive_a_full_cache() -> None:
    for i in range(wsgi._MAX_CACHED_KEYS + 5):
        assert wsgi._environ_key(b"x-field-%d" % i) == f"HTTP_X_FIELD_{i}"
    assert len(wsgi._ENVIRON_KEYS) <= wsgi._MAX_CACHED_KEYS
    assert wsgi._environ_key(b"content-type") == "CONTENT_TYPE"
    assert wsgi._environ_key(b"content-length") == ""
    assert wsgi._environ_key(b"x_forwarded_for") == ""  # the waitress rule
