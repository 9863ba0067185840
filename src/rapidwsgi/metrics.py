"""Per-worker counters in shared memory, folded by the master (``--metrics-bind``).

Rules:

1. The master maps one anonymous ``MAP_SHARED`` region of ``MAX_SLOTS`` slots before
   it forks anything (zygotes and workers inherit it). Each worker owns one slot for
   its whole life; nothing else writes to it while it lives.
2. A worker updates its slot in place on the hot path: no message, no syscall, a few
   stores (C: ``_cfast.Meter``; the pure-Python :class:`PyMeter` is the reference,
   held to identical bytes by ``tests/test_metrics.py``). Counters are written only on
   the event-loop thread, or under the GIL by the C meter, so no increment is lost.
3. A counter is in shared memory the moment the request it counts is answered: a
   ``kill -9`` loses nothing. The master folds a slot into its retired totals only
   after it reaped the worker (nobody writes it any more), then zeroes it and frees
   it: totals = retired + the live slots, never a request counted twice or lost.
4. Gauges (connections, threads) are written at the worker's tick; they are not
   folded (a dead worker has no connections).
5. Each busy application thread has a *record*: the start time, method and path of
   its request, for ``rapidwsgi stats``. A record is written under a sequence number
   (odd while it changes) so that the master never shows a torn one.

Layout of a slot (native-endian unsigned 64-bit words; ``OFFSETS`` names them):
requests[protocol][method][status class], duration buckets[protocol][bucket]
(non-cumulative, the last one +Inf), duration sum in ns[protocol], request and
response body bytes[protocol], parse errors[status], timeouts[phase], aborted
responses, application exceptions, shed requests, stuck requests; then the gauges; then ``RECORDS`` records of
``RECORD_BYTES`` bytes each: seq, start (monotonic ns, 0 = idle), method (16 bytes),
path length (2 bytes) and path.
"""

from __future__ import annotations

import mmap
import struct
import threading
import time
from typing import Final, Protocol

from .events import PROTOCOLS as _PROTOCOLS

#: The protocol label's values (events.PROTOCOLS: ServerConnection.METRICS_PROTOCOL indexes it;
#: a plain re-export leaves mypyc unable to type it).
PROTOCOLS: Final = _PROTOCOLS
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
#: Upper bounds (seconds) of the request duration histogram; +Inf is implicit. Finer
#: than Prometheus's defaults at the low end: a cached page takes well under 5 ms.
# (Not Final: mypyc loses a Final tuple of floats.)
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: The same in nanoseconds (a literal: mypyc compiles this module; a test checks them).
BUCKETS_NS: Final = (
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
)
#: The statuses a request that cannot be parsed is answered with (errors.py).
PARSE_STATUSES: Final = (400, 413, 414, 431, 501, 505)
#: Where a connection timed out: waiting for a request head, for its body, for the
#: client to read the response, or idle between requests (keep-alive).
TIMEOUT_PHASES: Final = ("header", "body", "send", "keepalive")

_NP, _NM, _NS, _NB = len(PROTOCOLS), len(METHODS), len(STATUS_CLASSES), len(BUCKETS) + 1

REQUESTS: Final = 0
DURATION_BUCKETS: Final = REQUESTS + _NP * _NM * _NS
DURATION_SUM: Final = DURATION_BUCKETS + _NP * _NB
REQUEST_BYTES: Final = DURATION_SUM + _NP
RESPONSE_BYTES: Final = REQUEST_BYTES + _NP
PARSE_ERRORS: Final = RESPONSE_BYTES + _NP
TIMEOUTS: Final = PARSE_ERRORS + len(PARSE_STATUSES)
ABORTED: Final = TIMEOUTS + len(TIMEOUT_PHASES)
APP_EXCEPTIONS: Final = ABORTED + 1
#: Requests answered 503 by load shedding (--limit-concurrency, --backlog-requests).
SHED: Final = APP_EXCEPTIONS + 1
#: Requests still in the application past --request-timeout.
STUCK: Final = SHED + 1
#: Counters end here: everything before is folded when a worker dies.
COUNTERS: Final = STUCK + 1
CONNECTIONS_ACTIVE: Final = COUNTERS
CONNECTIONS_IDLE: Final = COUNTERS + 1
THREADS_BUSY: Final = COUNTERS + 2
REQUESTS_WAITING: Final = COUNTERS + 3
WORDS: Final = COUNTERS + 4

#: Records start at this byte offset of a slot.
RECORDS_AT: Final = 2048
RECORD_BYTES: Final = 256
#: Busy threads shown per worker (record 0: the event-loop thread, inline requests).
RECORDS: Final = 64
METHOD_BYTES: Final = 16
PATH_AT: Final = 34
PATH_BYTES: Final = RECORD_BYTES - PATH_AT
SLOT_BYTES: Final = RECORDS_AT + RECORDS * RECORD_BYTES
#: Workers (including replacements under way) one master can count.
MAX_SLOTS: Final = 1024

assert WORDS * 8 <= RECORDS_AT

_METHOD_INDEX: Final = dict(zip(METHODS[:-1], range(len(METHODS) - 1), strict=True))
#: The index of a request's method (bytes, as in events.Request) in METHODS ...
METHOD_INDEX: Final = dict(zip([m.encode() for m in METHODS[:-1]], range(len(METHODS) - 1), strict=True))
#: ... and of every other method.
OTHER_METHOD: Final = len(METHODS) - 1
_U64: Final = struct.Struct("=Q")
_U16: Final = struct.Struct("=H")


def method_index(method: str) -> int:
    return _METHOD_INDEX.get(method, _NM - 1)


def status_index(status: int) -> int:
    return status // 100 - 1 if 100 <= status < 600 else _NS - 1


def request_index(protocol: int, method: int, status: int) -> int:
    """The word of requests[protocol][method][status class]."""
    return REQUESTS + (protocol * _NM + method) * _NS + status


def bucket_of(duration_ns: int) -> int:
    for i, bound in enumerate(BUCKETS_NS):
        if duration_ns <= bound:
            return i
    return _NB - 1


class Meter(Protocol):
    """What a worker writes its slot with (``_cfast.Meter`` or :class:`PyMeter`)."""

    def request(
        self, protocol: int, method: int, status: int, duration_ns: int, bytes_in: int, bytes_out: int, /
    ) -> None: ...

    def finish(
        self,
        record: int,
        protocol: int,
        method: int,
        status: int,
        started_ns: int,
        bytes_in: int,
        bytes_out: int,
        /,
    ) -> None: ...

    def count(self, word: int, /) -> None: ...

    def gauges(self, active: int, idle: int, busy: int, waiting: int, /) -> None: ...

    def begin(self, record: int, method: bytes, path: bytes, start_ns: int, /) -> None: ...

    def end(self, record: int, /) -> None: ...


class PyMeter:
    """A worker's writer of its slot: the reference for ``_cfast.Meter`` (same methods,
    same bytes)."""

    def __init__(self, region: mmap.mmap | bytearray, slot: int) -> None:
        start = slot * SLOT_BYTES
        self._bytes = memoryview(region)[start : start + SLOT_BYTES]
        self._words = self._bytes[:RECORDS_AT].cast("Q")
        #: count() may come from application threads (an exception on one).
        self._lock = threading.Lock()

    def request(
        self, protocol: int, method: int, status: int, duration_ns: int, bytes_in: int, bytes_out: int
    ) -> None:
        """One answered (or aborted) request; on the loop thread."""
        w = self._words
        w[request_index(protocol, method, status_index(status))] += 1
        w[DURATION_BUCKETS + protocol * _NB + bucket_of(duration_ns)] += 1
        w[DURATION_SUM + protocol] += max(duration_ns, 0)
        w[REQUEST_BYTES + protocol] += bytes_in
        w[RESPONSE_BYTES + protocol] += bytes_out

    def finish(
        self,
        record: int,
        protocol: int,
        method: int,
        status: int,
        started_ns: int,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """``end(record)`` (if >= 0) and ``request(...)`` timed from ``started_ns`` to
        now (``time.monotonic_ns``): one call per request on the Python path."""
        if record >= 0:
            self.end(record)
        self.request(protocol, method, status, time.monotonic_ns() - started_ns, bytes_in, bytes_out)

    def count(self, word: int) -> None:
        """One more of a plain counter (PARSE_ERRORS + i, TIMEOUTS + i, ABORTED, ...)."""
        with self._lock:
            self._words[word] += 1

    def gauges(self, active: int, idle: int, busy: int, waiting: int) -> None:
        w = self._words
        w[CONNECTIONS_ACTIVE] = active
        w[CONNECTIONS_IDLE] = idle
        w[THREADS_BUSY] = busy
        w[REQUESTS_WAITING] = waiting

    def begin(self, record: int, method: bytes, path: bytes, start_ns: int) -> None:
        """Record ``record``'s thread starting a request (see rule 5)."""
        if not 0 <= record < RECORDS:
            return
        b = self._bytes
        at = RECORDS_AT + record * RECORD_BYTES
        seq = _U64.unpack_from(b, at)[0]
        _U64.pack_into(b, at, seq + 1)
        _U64.pack_into(b, at + 8, start_ns)
        m = method[:METHOD_BYTES]
        b[at + 16 : at + 16 + METHOD_BYTES] = m + bytes(METHOD_BYTES - len(m))
        p = path[:PATH_BYTES]
        _U16.pack_into(b, at + 32, len(p))
        b[at + PATH_AT : at + PATH_AT + len(p)] = p
        _U64.pack_into(b, at, seq + 2)

    def end(self, record: int) -> None:
        if not 0 <= record < RECORDS:
            return
        b = self._bytes
        at = RECORDS_AT + record * RECORD_BYTES
        seq = _U64.unpack_from(b, at)[0]
        _U64.pack_into(b, at, seq + 1)
        _U64.pack_into(b, at + 8, 0)
        _U64.pack_into(b, at, seq + 2)


#: What ``_cfast.Meter`` needs of the layout (one layout: this module's).
C_LAYOUT: Final = (
    SLOT_BYTES,
    REQUESTS,
    DURATION_BUCKETS,
    DURATION_SUM,
    REQUEST_BYTES,
    RESPONSE_BYTES,
    WORDS,
    RECORDS_AT,
    RECORD_BYTES,
    RECORDS,
    _NM,
    _NS,
    METHOD_BYTES,
    PATH_AT,
    BUCKETS_NS,
)


def make_meter(region: mmap.mmap | bytearray, slot: int, c: bool) -> Meter:
    """The writer of ``slot``: ``_cfast.Meter`` when ``c`` (the C path is on), else the
    reference :class:`PyMeter`. Both have the same methods."""
    if c:
        from . import _cfast

        return _cfast.Meter(region, slot, C_LAYOUT)
    return PyMeter(region, slot)


# ---------------------------------------------------------------------- master side


class Busy:
    """One thread's request in progress, as the master reads it."""

    __slots__ = ("method", "path", "record", "start_ns")

    def __init__(self, record: int, start_ns: int, method: str, path: str) -> None:
        self.record = record
        self.start_ns = start_ns
        self.method = method
        self.path = path


class Slots:
    """The master's view of the shared region (see the module docstring)."""

    def __init__(self, count: int = MAX_SLOTS) -> None:
        self.count = count
        # Anonymous and shared: inherited by every fork, never backed by a file. Pages
        # are only allocated when a worker first writes them.
        self.region = mmap.mmap(-1, count * SLOT_BYTES, flags=mmap.MAP_SHARED)
        self._free = list(range(count - 1, -1, -1))
        self.retired = [0] * COUNTERS

    def acquire(self) -> int:
        """A zeroed slot for a new worker, or -1 when all are taken (it is not counted)."""
        return self._free.pop() if self._free else -1

    def release(self, slot: int) -> None:
        """Fold a reaped worker's counters into the retired totals, zero, free."""
        if slot < 0:
            return
        words = self.words(slot)
        retired = self.retired
        for i in range(COUNTERS):
            retired[i] += words[i]
        words.release()
        start = slot * SLOT_BYTES
        self.region[start : start + SLOT_BYTES] = bytes(SLOT_BYTES)
        self._free.append(slot)

    def drop(self, slot: int) -> None:
        """Free a slot whose worker was never started (nothing to fold)."""
        if slot >= 0:
            start = slot * SLOT_BYTES
            self.region[start : start + SLOT_BYTES] = bytes(SLOT_BYTES)
            self._free.append(slot)

    def words(self, slot: int) -> memoryview:
        start = slot * SLOT_BYTES
        return memoryview(self.region)[start : start + RECORDS_AT].cast("Q")

    def totals(self, live: list[int]) -> list[int]:
        """Counters of all workers ever (retired + ``live`` slots), then the live gauges."""
        out = self.retired + [0] * (WORDS - COUNTERS)
        for slot in live:
            if slot < 0:
                continue
            with self.words(slot) as words:
                values = words.tolist()
            for i in range(WORDS):
                out[i] += values[i]
        return out

    def busy(self, slot: int) -> list[Busy]:
        """The requests in progress in ``slot``'s worker (consistent snapshots)."""
        if slot < 0:
            return []
        found = []
        base = slot * SLOT_BYTES + RECORDS_AT
        region = self.region
        for record in range(RECORDS):
            at = base + record * RECORD_BYTES
            for _ in range(4):  # a record being rewritten: try again, then skip it
                seq = _U64.unpack_from(region, at)[0]
                if seq & 1:
                    continue
                start = _U64.unpack_from(region, at + 8)[0]
                if not start:
                    break
                method = bytes(region[at + 16 : at + 16 + METHOD_BYTES]).rstrip(b"\0")
                length = min(_U16.unpack_from(region, at + 32)[0], PATH_BYTES)
                path = bytes(region[at + PATH_AT : at + PATH_AT + length])
                if _U64.unpack_from(region, at)[0] == seq:
                    found.append(Busy(record, start, method.decode("latin-1"), path.decode("latin-1")))
                    break
        return found

    def close(self) -> None:
        self.region.close()
