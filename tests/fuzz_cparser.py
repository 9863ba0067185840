"""Fuzz target: the C request path (``rapidwsgi._cfast``) against the Python reference.

Run the fuzzer (atheris; libFuzzer options are passed through; the extension must be
built in ``src/``, e.g. ``python setup.py build_ext --inplace``)::

    python tests/fuzz_cparser.py -max_total_time=300 [corpus_dir ...]

Without a corpus directory, one is created in a temporary directory and seeded from
``tests/http1_corpus.py``. The input's first bytes configure the run (see
:func:`fuzz_one_input`, the layout of ``tests/fuzz_http1.py``). Properties:

* :func:`check_parse_head`: whenever ``_cfast.parse_head`` accepts a head, the
  reference (:class:`~rapidwsgi.protocols.http1.H1Connection` with the same limits)
  produces an equal :class:`~rapidwsgi.events.Request` from the same bytes, and the head
  ends exactly where the C parser says (the reference has the request from
  ``data[:consumed]`` and still waits with one byte less). A C parser that declines
  (None) is always right: the reference decides.
* the whole connection (``tests/cpath_harness.py``): the input fed in the given reads,
  then EOF, gives the same bytes, transport calls, environs and error log with
  ``c_path=True`` as with ``c_path=False``, and no exception escapes a protocol callback.

``tests/test_cparser_fuzz.py`` runs the same checks with hypothesis.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any, cast

if __name__ == "__main__" and not __package__:  # run as a script: make the imports work
    import os

    _ROOT = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(_ROOT)]
    if os.environ.get("RAPIDWSGI_TEST_SOURCE") == "1":  # else: the installed build
        sys.path[:0] = [os.environ.get("RAPIDWSGI_TEST_SRC") or str(_ROOT / "src")]

from rapidwsgi.errors import RemoteProtocolError
from rapidwsgi.events import NEED_DATA, Request
from rapidwsgi.protocols.http1 import H1Connection, Limits
from tests.cpath_harness import TRUSTED, UNTRUSTED, differential, echo_app, echo_stream_app, with_limits
from tests.fuzz_http1 import SMALL_LIMITS, request_key, run_atheris, seed_inputs, split_at


def load_cfast() -> ModuleType | None:
    """``rapidwsgi._cfast``, or None when it is not built."""
    try:
        from rapidwsgi import _cfast
    except ImportError:
        return None
    return _cfast


_cfast = load_cfast()


def full_request_key(r: Request) -> tuple[object, ...]:
    """Everything a Request carries, including what ``request_key`` leaves out."""
    return (*request_key(r), r.forwarded, r.extra)


def _check_types(r: Request) -> None:
    """What the rest of the server relies on: exact types, not look-alikes."""
    assert type(r) is Request, type(r)
    for name in ("method", "target", "path", "query", "version"):
        assert type(getattr(r, name)) is bytes, (name, type(getattr(r, name)))
    assert type(r.headers) is list
    for item in r.headers:
        assert type(item) is tuple and len(item) == 2, item
        assert type(item[0]) is bytes and type(item[1]) is bytes, item
    assert r.authority is None or type(r.authority) is bytes
    assert type(r.content_length) is int
    for name in ("chunked", "keep_alive", "expect_continue", "forwarded"):
        assert type(getattr(r, name)) is bool, (name, getattr(r, name))


def reference_first(data: bytes, limits: Limits) -> Any:
    """The reference's first event for ``data`` (no EOF), or the error it raises."""
    conn = H1Connection(limits)
    conn.receive_data(data)
    try:
        return conn.next_event()
    except RemoteProtocolError as exc:
        return exc


def check_parse_head(data: bytes, limits: Limits | None = None) -> Request | None:
    """The C parser's verdict on ``data``, checked against the reference (see above)."""
    if _cfast is None:
        return None
    limits = limits if limits is not None else Limits()
    result = _cfast.parse_head(data, limits.max_line, limits.max_fields, limits.max_field_size)
    if result is None:
        return None
    assert type(result) is tuple and len(result) == 2, result
    consumed, request = cast("tuple[int, Request]", result)
    assert type(consumed) is int and 0 < consumed <= len(data), (consumed, len(data))
    _check_types(request)
    # The reference with the same head limits, no body limit (parse_head has none).
    ref_limits = Limits(
        max_line=limits.max_line, max_fields=limits.max_fields, max_field_size=limits.max_field_size
    )
    for prefix in (data, data[:consumed]):
        ref = reference_first(prefix, ref_limits)
        assert isinstance(ref, Request), f"C accepted {data[:consumed]!r}, the reference gives {ref!r}"
        ref_key, c_key = full_request_key(ref), full_request_key(request)
        assert ref_key == c_key, f"for {data[:consumed]!r}:\n  reference {ref_key!r}\n  C         {c_key!r}"
    shorter = reference_first(data[: consumed - 1], ref_limits)
    assert shorter is NEED_DATA, (
        f"C says the head ends at {consumed}, the reference gives {shorter!r} before it"
    )
    return request


def check_connection(payload: bytes, cuts: list[int], config: int) -> None:
    """The whole-connection differential on ``payload`` read in pieces cut at ``cuts``."""
    setup = with_limits(UNTRUSTED if config & 4 else TRUSTED, SMALL_LIMITS if config & 1 else None)
    app = echo_stream_app if config & 8 else echo_app
    run = differential(split_at(payload, cuts), app, setup, what=f"config {config}, cuts {cuts}")
    assert not run.exceptions, run.exceptions


def fuzz_one_input(raw: bytes) -> None:
    """The fuzz entry point. Input layout: ``config, ncuts, cuts[ncuts] (2 bytes each), payload``.

    ``config`` bit 0 selects :data:`~tests.fuzz_http1.SMALL_LIMITS`; bit 1 also runs the
    whole-connection differential (about a millisecond per input); bit 2 an untrusted
    peer there; bit 3 the streaming application there.
    """
    if len(raw) < 2:
        return
    config, ncuts = raw[0], raw[1] % 8
    header = 2 + 2 * ncuts
    payload = raw[header:]
    cuts = [int.from_bytes(raw[i : i + 2], "big") for i in range(2, min(header, len(raw)) - 1, 2)]
    limits = Limits(**SMALL_LIMITS) if config & 1 else None
    check_parse_head(payload, limits)
    check_parse_head(payload[:-1] if payload else payload, limits)
    if config & 2 and len(payload) <= 4096:
        check_connection(payload, cuts, config)


def cparser_seeds() -> list[bytes]:
    """The corpus seeds of fuzz_http1, each also with the connection differential on."""
    seeds = seed_inputs()
    return seeds + [bytes((seed[0] | 2,)) + seed[1:] for seed in seeds]


def main(argv: list[str]) -> None:
    run_atheris("fuzz_cparser", argv, cparser_seeds(), fuzz_one_input)


if __name__ == "__main__":
    main(sys.argv)
