"""Request-head parsing cost: rapidwsgi's sans-IO parser vs httptools (llhttp).

Principle 10 says: use httptools unless a faster strict parser is proven with numbers.
This measures, per request, parsing a complete head into a request object with
lower-cased header names, for a minimal request (as wrk sends it) and a browser-like
one. The httptools side collects the URL and headers from llhttp's callbacks and then
applies the same request semantics rapidwsgi applies after its own syntax check
(``request_from_head``: Host, framing, target form, persistence, Expect); the limits
rapidwsgi enforces (line, field count and size) are not added to it.

Run: ``python bench/parser.py`` (wall time, interleaved, median of rounds); for
instruction counts run it under ``valgrind --tool=callgrind`` with ``--only NAME``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from rapidwsgi.protocols.http1 import H1Connection
from rapidwsgi.protocols.http1._connection import request_from_head

MINIMAL = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
BROWSER = (
    b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\nCookie: sessionid=abc123; csrftoken=xyz\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n\r\n"
)


def rapidwsgi_parser(raw: bytes) -> Callable[[], object]:
    conn = H1Connection()

    def parse() -> object:
        conn.receive_data(raw)
        event = conn.next_event()
        conn.their_state = conn.our_state = "IDLE"  # reset without sending a response
        return event

    return parse


def httptools_parser(raw: bytes) -> Callable[[], object]:
    import httptools

    class Collector:
        def __init__(self) -> None:
            self.url = b""
            self.headers: list[tuple[bytes, bytes]] = []
            self.request: object = None

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.lower(), value))

        def on_headers_complete(self) -> None:
            self.request = request_from_head(
                parser.get_method(), self.url, parser.get_http_version().encode(), self.headers
            )

    collector = Collector()
    parser = httptools.HttpRequestParser(collector)

    def parse() -> object:
        collector.url = b""
        collector.headers = []
        parser.feed_data(raw)
        return collector.request

    return parse


PARSERS: dict[str, Callable[[bytes], Callable[[], object]]] = {
    "rapidwsgi": rapidwsgi_parser,
    "httptools": httptools_parser,
}


def measure(parse: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        parse()
    return (time.perf_counter() - start) / n * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", choices=sorted(PARSERS))
    args = ap.parse_args()
    names = [args.only] if args.only else list(PARSERS)
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for label, raw in (("minimal", MINIMAL), ("browser", BROWSER)):
            for name in names:
                parse = PARSERS[name](raw)
                parse()  # warm up
                results.setdefault((name, label), []).append(measure(parse, args.n))
    table: dict[str, Any] = {}
    for (name, label), values in results.items():
        table.setdefault(name, {})[label] = statistics.median(values)
    print(f"{'parser':12} {'minimal ns':>12} {'browser ns':>12}")
    for name, row in table.items():
        print(f"{name:12} {row['minimal']:12.0f} {row['browser']:12.0f}")
    if len(table) == 2:
        ours, theirs = table["rapidwsgi"], table["httptools"]
        for label in ("minimal", "browser"):
            print(f"httptools / rapidwsgi ({label}): {theirs[label] / ours[label]:.2f}x")


if __name__ == "__main__":
    main()
