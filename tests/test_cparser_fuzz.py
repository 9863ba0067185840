"""The checks of ``tests/fuzz_cparser.py`` with hypothesis, and a bounded atheris run.

Skipped as a whole while ``rapidwsgi._cfast`` is not built. Heads are generated from
parts (methods, targets, versions, field lines that matter to the framing, browser
fields) so that the C parser accepts many of them, then mutated byte-wise so that it
meets what it must decline.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("rapidwsgi._cfast", reason="the C extension is not built")

from rapidwsgi.protocols.http1 import Limits
from tests.conftest import ROOT
from tests.cpath_harness import C_PATH_AVAILABLE
from tests.fuzz_cparser import (
    check_connection,
    check_parse_head,
    cparser_seeds,
    fuzz_one_input,
)
from tests.fuzz_http1 import FRAMING_LINES, SMALL_LIMITS, mutate
from tests.http1_corpus import INVALID, VALID

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONNECTION_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

METHODS = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"TRACE",
    b"get",
    b"PROPFIND",
    b"CONNECT",
]
TARGETS = [
    b"/",
    b"*",
    b"/a/b?c=d&e",
    b"/caf%C3%A9/%2F/%zz?",
    b"//x",
    b"/\xc3\xa9",
    b"/a#frag",
    b"http://h.example/p?q",
    b"https://h.example:8443",
    b"h.example:443",
    b"/" + b"x" * 70,
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10"]
FIELDS = [
    *FRAMING_LINES,
    b"Host: h.example",
    b"Host: h.example:8080",
    b"Host: [::1]",
    b"Host:",
    b"Host: a@b",
    b"Cookie: a=1",
    b"cookie: b=2",
    b"X-Dup: 1",
    b"x-dup: 2",
    b"X_Under: 1",
    b"X-Trailing: v \t",
    b"X-Empty:",
    b"X-High: \xe9\xff",
    b"X-Ctl: a\x01b",
    b"X-Tab: a\tb",
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"X-Forwarded-For: 1.2.3.4",
    b"X-Forwarded-Proto: https",
    b"Forwarded: for=1.2.3.4",
    b"X-Real-IP: 5.6.7.8",
    b"Content-Type: text/plain",
    b"Expect: 100-continue",
    b"Connection: keep-alive, close",
    b"Bad Name: x",
    b"NoColon",
    b" Leading: space",
    b"X: " + b"v" * 60,
]
EOLS = [b"\r\n", b"\r\n", b"\r\n", b"\n"]

request_line = st.builds(
    lambda m, t, v, sep: m + sep + t + sep + v,
    st.sampled_from(METHODS),
    st.sampled_from(TARGETS),
    st.sampled_from(VERSIONS),
    st.sampled_from([b" ", b" ", b" ", b"  ", b"\t"]),
)
heads = st.builds(
    lambda line, fields, eol, lead, rest: lead + line + eol + b"".join(f + eol for f in fields) + eol + rest,
    request_line,
    st.lists(st.sampled_from(FIELDS), max_size=8),
    st.sampled_from(EOLS),
    st.sampled_from([b"", b"", b"\r\n"]),
    st.sampled_from([b"", b"", b"hello", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"0\r\n\r\n"]),
)
# The heads the C path exists for: mostly accepted, so that equality is checked often.
PLAIN_FIELDS = [
    b"Cookie: a=1",
    b"cookie: b=2",
    b"X-Dup: 1",
    b"x-dup: 2",
    b"X_Under: 1",
    b"X-Trailing: v \t",
    b"X-Empty:",
    b"Accept: */*",
    b"User-Agent: Mozilla/5.0 (X11)",
    b"Content-Type: text/plain",
    b"Content-Length: 0",
    b"Connection: close",
    b"Connection: keep-alive",
    b"X-Forwarded-For: 1.2.3.4",
    b"X-Forwarded-Proto: https",
    b"Forwarded: for=1.2.3.4",
    b"ACCEPT-language: en",
    b"X-Spaces:   a  b   ",
]
plain_heads = st.builds(
    lambda m, t, v, host, fields, rest: (
        m + b" " + t + b" " + v + b"\r\n" + host + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + rest
    ),
    st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"DELETE", b"OPTIONS"]),
    st.sampled_from([b"/", b"/a/b?c=d&e", b"/p%20q/%2F?x=%zz", b"/a?", b"//x", b"/index.html"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
    st.sampled_from([b"Host: h.example\r\n", b"Host: h.example:8080\r\n", b"host: [::1]:80\r\n", b""]),
    st.lists(st.sampled_from(PLAIN_FIELDS), max_size=10),
    st.sampled_from([b"", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"x"]),
)
mutations = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3)
limits = st.sampled_from([None, Limits(**SMALL_LIMITS)])
corpus = st.sampled_from([c.raw for c in VALID] + [c.raw for c in INVALID if len(c.raw) < 4096])
cuts = st.lists(st.integers(0, 1 << 16), max_size=6)


@SETTINGS
@given(data=plain_heads, ops=mutations, limits=limits)
def test_plain_heads_plain_and_mutated(
    data: bytes, ops: list[tuple[int, int, int]], limits: Limits | None
) -> None:
    check_parse_head(data, limits)
    check_parse_head(mutate(data, ops), limits)


@SETTINGS
@given(data=heads, limits=limits)
def test_generated_heads(data: bytes, limits: Limits | None) -> None:
    check_parse_head(data, limits)


@SETTINGS
@given(data=heads, ops=mutations, limits=limits)
def test_mutated_generated_heads(data: bytes, ops: list[tuple[int, int, int]], limits: Limits | None) -> None:
    check_parse_head(mutate(data, ops), limits)


@SETTINGS
@given(raw=corpus, ops=mutations, limits=limits)
def test_mutated_corpus_streams(raw: bytes, ops: list[tuple[int, int, int]], limits: Limits | None) -> None:
    data = mutate(raw, ops)
    check_parse_head(data, limits)
    check_parse_head(data[: len(data) // 2], limits)


@SETTINGS
@given(data=st.binary(max_size=512), limits=limits)
def test_random_bytes(data: bytes, limits: Limits | None) -> None:
    check_parse_head(data, limits)
    check_parse_head(b"GET / HTTP/1.1\r\n" + data, limits)


def test_some_generated_heads_are_accepted() -> None:
    """Not vacuous: the plain heads the C path exists for are accepted."""
    assert check_parse_head(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") is not None
    assert check_parse_head(b"GET /a?b HTTP/1.0\r\nCookie: a\r\ncookie: b\r\n\r\nGET") is not None


@CONNECTION_SETTINGS
@given(data=plain_heads | heads, ops=mutations, cuts=cuts, config=st.integers(0, 15))
def test_connection_differential_on_generated_heads(
    data: bytes, ops: list[tuple[int, int, int]], cuts: list[int], config: int
) -> None:
    check_connection(mutate(data, ops), cuts, config)


@CONNECTION_SETTINGS
@given(raw=corpus, ops=mutations, cuts=cuts, config=st.integers(0, 15))
def test_connection_differential_on_mutated_corpus(
    raw: bytes, ops: list[tuple[int, int, int]], cuts: list[int], config: int
) -> None:
    check_connection(mutate(raw, ops), cuts, config)


@pytest.mark.parametrize("seed", cparser_seeds()[::7])
def test_fuzz_entry_point_runs_on_its_seeds(seed: bytes) -> None:
    fuzz_one_input(seed)


def test_fuzz_entry_point_ignores_inputs_too_short_to_configure_it() -> None:
    fuzz_one_input(b"")
    fuzz_one_input(b"\x03")


def test_the_connection_uses_the_extension() -> None:
    assert C_PATH_AVAILABLE


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
@pytest.mark.skipif(
    "asan" in os.environ.get("LD_PRELOAD", ""),
    reason="under make asan the hypothesis properties above are the fuzzing (atheris' own "
    "coverage hooks clash with a preloaded ASan runtime)",
)
def test_bounded_atheris_run() -> None:
    """The fuzzer itself (tests/fuzz_http1.run_atheris) for 20 s against the build under
    test: it starts, seeds its corpus and finds nothing."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_cparser.py"), "-max_total_time=20", "-rss_limit_mb=4096"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "fuzz_cparser: seed corpus in" in proc.stderr
