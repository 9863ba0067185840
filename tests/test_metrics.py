"""The metrics slots (metrics.py) and their rendering (exporter.py), without processes.

The C meter (``_cfast.Meter``) is held to the pure-Python reference (``PyMeter``) byte
for byte; the master's folding is checked with exact totals; the Prometheus text is
read back with prometheus_client's own parsers.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from rapidwsgi import metrics
from rapidwsgi.exporter import Exporter, Snapshot
from rapidwsgi.metrics import PyMeter, Slots
from rapidwsgi.protocols.base import Limits, ServerConnection
from rapidwsgi.protocols.fastcgi import FastCGIConnection
from rapidwsgi.protocols.http1 import H1Connection
from rapidwsgi.protocols.uwsgi import UwsgiConnection

try:
    from rapidwsgi import _cfast
except ImportError:  # pragma: no cover - a build without a compiler
    _cfast = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_cfast is None, reason="the C extension is not built")


def test_each_front_end_has_its_protocol_label() -> None:
    wires: list[ServerConnection] = [
        H1Connection(Limits()),
        UwsgiConnection(Limits()),
        FastCGIConnection(Limits()),
    ]
    assert [metrics.PROTOCOLS[w.METRICS_PROTOCOL] for w in wires] == ["http", "uwsgi", "fastcgi"]


def test_each_protocol_name_serves_the_front_end_it_labels() -> None:
    # One list of names (events.PROTOCOLS): --protocol's choices, the metrics labels and
    # the worker's front-end classes all come from it.
    from rapidwsgi.config import PROTOCOLS as CONFIG_PROTOCOLS
    from rapidwsgi.events import PROTOCOLS
    from rapidwsgi.worker import WIRE_PROTOCOLS

    assert CONFIG_PROTOCOLS == metrics.PROTOCOLS == PROTOCOLS == ("http", "uwsgi", "fastcgi")
    assert list(WIRE_PROTOCOLS) == list(PROTOCOLS)
    labels = [PROTOCOLS[WIRE_PROTOCOLS[name](Limits()).METRICS_PROTOCOL] for name in PROTOCOLS]
    assert labels == list(PROTOCOLS)


def test_the_layout_fits_and_nothing_overlaps() -> None:
    assert metrics.WORDS * 8 <= metrics.RECORDS_AT
    assert metrics.RECORDS_AT + metrics.RECORDS * metrics.RECORD_BYTES == metrics.SLOT_BYTES
    assert metrics.SLOT_BYTES % 8 == 0
    assert metrics.SHED == metrics.APP_EXCEPTIONS + 1
    assert metrics.COUNTERS == metrics.STUCK + 1 == metrics.SHED + 2
    assert metrics.request_index(2, 7, 5) == metrics.DURATION_BUCKETS - 1


@pytest.mark.parametrize(
    ("status", "index"),
    [(100, 0), (199, 0), (200, 1), (304, 2), (404, 3), (503, 4), (599, 4), (0, 5), (600, 5)],
)
def test_status_classes(status: int, index: int) -> None:
    assert metrics.status_index(status) == index


def test_bucket_bounds_are_inclusive_and_the_last_is_infinity() -> None:
    assert metrics.bucket_of(0) == 0
    assert metrics.bucket_of(500_000) == 0
    assert metrics.bucket_of(500_001) == 1
    assert metrics.bucket_of(30_000_000_000) == len(metrics.BUCKETS) - 1
    assert metrics.bucket_of(30_000_000_001) == len(metrics.BUCKETS)


def test_py_meter_counts_exactly_where_the_layout_says() -> None:
    region = bytearray(metrics.SLOT_BYTES * 2)
    meter = PyMeter(region, 1)
    meter.request(1, metrics.method_index("POST"), 201, 2_000_000, 10, 20)
    meter.request(1, metrics.method_index("BREW"), 418, 40_000_000_000, 0, 4)
    meter.count(metrics.ABORTED)
    meter.gauges(7, 3, 2, 1)
    assert not any(region[: metrics.SLOT_BYTES])  # slot 0 untouched
    words = memoryview(region)[metrics.SLOT_BYTES : metrics.SLOT_BYTES + metrics.RECORDS_AT].cast("Q")
    assert words[metrics.request_index(1, 2, 1)] == 1
    assert words[metrics.request_index(1, 7, 3)] == 1
    nb = len(metrics.BUCKETS) + 1
    assert words[metrics.DURATION_BUCKETS + nb + 2] == 1  # 2 ms: the 2.5 ms bucket
    assert words[metrics.DURATION_BUCKETS + nb + nb - 1] == 1  # 40 s: +Inf
    assert words[metrics.DURATION_SUM + 1] == 40_002_000_000
    assert words[metrics.REQUEST_BYTES + 1] == 10
    assert words[metrics.RESPONSE_BYTES + 1] == 24
    assert words[metrics.ABORTED] == 1
    assert list(words[metrics.COUNTERS : metrics.WORDS]) == [7, 3, 2, 1]
    assert sum(words) == 1 + 1 + 1 + 1 + 40_002_000_000 + 10 + 24 + 1 + 7 + 3 + 2 + 1


# One operation on a meter: what both implementations are fed.
_ops = st.one_of(
    st.tuples(
        st.just("request"),
        st.integers(0, 2),
        st.integers(0, len(metrics.METHODS) - 1),
        st.sampled_from([0, 99, 100, 200, 204, 301, 404, 499, 500, 599, 600, 999]),
        st.integers(-5, 60_000_000_000),
        st.integers(0, 1 << 40),
        st.integers(0, 1 << 40),
    ),
    st.tuples(st.just("count"), st.integers(metrics.PARSE_ERRORS, metrics.COUNTERS - 1)),
    st.tuples(st.just("gauges"), *[st.integers(0, 100_000)] * 4),
    st.tuples(
        st.just("begin"),
        st.integers(-1, metrics.RECORDS),
        st.binary(max_size=20),
        st.binary(max_size=300),
        st.integers(1, 1 << 62),
    ),
    st.tuples(st.just("end"), st.integers(-1, metrics.RECORDS)),
)


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.lists(_ops, max_size=40), st.integers(0, 2))
def test_the_c_meter_writes_the_same_bytes_as_the_python_reference(
    ops: list[tuple[Any, ...]], slot: int
) -> None:
    py_region = bytearray(metrics.SLOT_BYTES * 3)
    c_region = bytearray(metrics.SLOT_BYTES * 3)
    py = PyMeter(py_region, slot)
    c = metrics.make_meter(c_region, slot, True)
    assert type(c).__name__ == "Meter"
    for op in ops:
        getattr(py, op[0])(*op[1:])
        getattr(c, op[0])(*op[1:])
        assert py_region == c_region, op
    del c  # releases its buffer on the region


@needs_c
def test_the_c_meter_refuses_a_slot_outside_the_region_and_bad_arguments() -> None:
    region = bytearray(metrics.SLOT_BYTES)
    with pytest.raises(ValueError, match="slot out of the region"):
        _cfast.Meter(region, 1, metrics.C_LAYOUT)
    with pytest.raises(ValueError, match="bad layout"):
        _cfast.Meter(region, 0, metrics.C_LAYOUT[:-1])
    with pytest.raises(BufferError):
        _cfast.Meter(bytes(metrics.SLOT_BYTES), 0, metrics.C_LAYOUT)  # read-only
    meter = _cfast.Meter(region, 0, metrics.C_LAYOUT)
    with pytest.raises(ValueError, match="out of range"):
        meter.request(3, 0, 200, 1, 0, 0)
    with pytest.raises(ValueError, match="no such word"):
        meter.count(metrics.WORDS)
    with pytest.raises(OverflowError):
        meter.request(0, 0, 200, 1, -1, 0)


def test_a_released_slot_is_folded_once_zeroed_and_reused() -> None:
    slots = Slots(4)
    a, b = slots.acquire(), slots.acquire()
    assert (a, b) == (0, 1)
    ma, mb = PyMeter(slots.region, a), PyMeter(slots.region, b)
    for _ in range(3):
        ma.request(0, 0, 200, 1000, 1, 5)
    mb.request(2, 2, 500, 1000, 7, 9)
    mb.gauges(4, 4, 0, 0)
    mb.begin(0, b"GET", b"/x", 123)
    assert slots.totals([a, b])[metrics.request_index(0, 0, 1)] == 3
    del ma
    slots.release(a)
    # Folded: the totals are the same with the slot gone from the live list.
    totals = slots.totals([b])
    assert totals[metrics.request_index(0, 0, 1)] == 3
    assert totals[metrics.request_index(2, 2, 4)] == 1
    assert totals[metrics.RESPONSE_BYTES] == 15
    assert totals[metrics.RESPONSE_BYTES + 2] == 9
    assert totals[metrics.CONNECTIONS_ACTIVE] == 4
    assert slots.acquire() == a  # reused, and zeroed
    assert not any(slots.region[a * metrics.SLOT_BYTES : (a + 1) * metrics.SLOT_BYTES])
    del mb
    slots.release(b)
    totals = slots.totals([a])
    assert totals[metrics.request_index(0, 0, 1)] == 3
    assert totals[metrics.CONNECTIONS_ACTIVE] == 0  # gauges are not folded
    assert slots.retired[metrics.REQUEST_BYTES + 2] == 7


def test_a_dropped_slot_is_not_folded() -> None:
    slots = Slots(2)
    s = slots.acquire()
    PyMeter(slots.region, s).request(0, 0, 200, 1, 0, 0)
    slots.drop(s)
    assert slots.retired == [0] * metrics.COUNTERS
    assert slots.release(-1) is None  # a worker that never had a slot


def test_slots_run_out_rather_than_share() -> None:
    slots = Slots(2)
    assert [slots.acquire(), slots.acquire(), slots.acquire()] == [0, 1, -1]


def test_busy_records_are_read_whole_and_torn_ones_skipped() -> None:
    slots = Slots(1)
    meter = PyMeter(slots.region, 0)
    meter.begin(0, b"GET", b"/a/b", 1_000)
    meter.begin(5, b"PROPFIND-LONG-METHOD-NAME", b"/" + b"x" * 400, 2_000)
    busy = slots.busy(0)
    assert [(b.record, b.start_ns, b.method, b.path) for b in busy] == [
        (0, 1_000, "GET", "/a/b"),
        (5, 2_000, "PROPFIND-LONG-ME", "/" + "x" * (metrics.PATH_BYTES - 1)),
    ]
    meter.end(0)
    assert [b.record for b in slots.busy(0)] == [5]
    # A record being rewritten (odd sequence number) is never shown half-written.
    at = metrics.RECORDS_AT + 5 * metrics.RECORD_BYTES
    seq = int.from_bytes(slots.region[at : at + 8], "little")
    slots.region[at : at + 8] = (seq + 1).to_bytes(8, "little")
    assert slots.busy(0) == []


# ---------------------------------------------------------------------- rendering


class FakeWorker:
    def __init__(self, pid: int, slot: int, state: str = "serving") -> None:
        self.pid = pid
        self.generation = 2
        self.spawned = time.monotonic() - 10
        self.slot = slot
        self.load = 0
        self._state = state

    @property
    def state(self) -> str:
        return self._state


class FakeMaster:
    def __init__(self, workers: list[FakeWorker]) -> None:
        self.pid = 1
        self.generation = 2
        self.num_workers = 2
        self.started = time.monotonic() - 60
        self.restarts = {"crash": 1, "reload": 2}
        self.reloads = {"completed": 1}
        self.workers_min = 0
        self.workers_max = 0
        self.scaling = {"up": 0, "down": 0}
        self._workers = workers

    @property
    def worker_views(self) -> list[FakeWorker]:
        return self._workers

    @property
    def listener_protocols(self) -> list[str]:
        return ["http", "uwsgi"]


def _filled() -> tuple[FakeMaster, Slots]:
    slots = Slots(4)
    a, b, dead = slots.acquire(), slots.acquire(), slots.acquire()
    PyMeter(slots.region, a).request(0, 0, 200, 300_000, 0, 5)
    PyMeter(slots.region, a).request(0, 0, 200, 2_000_000, 0, 5)
    PyMeter(slots.region, b).request(1, 2, 404, 7_000_000, 11, 4)
    PyMeter(slots.region, b).gauges(3, 1, 0, 0)
    PyMeter(slots.region, b).begin(0, b"GET", b"/slow", time.monotonic_ns() - 1_500_000_000)
    dm = PyMeter(slots.region, dead)
    dm.request(0, 1, 200, 100, 0, 0)
    dm.count(metrics.PARSE_ERRORS + metrics.PARSE_STATUSES.index(431))
    dm.count(metrics.TIMEOUTS + metrics.TIMEOUT_PHASES.index("header"))
    dm.count(metrics.APP_EXCEPTIONS)
    del dm
    slots.release(dead)
    return FakeMaster([FakeWorker(111, a), FakeWorker(222, b, "retiring")]), slots


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a metric family is duplicated"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_the_prometheus_text_has_the_exact_totals_of_live_and_dead_workers() -> None:
    master, slots = _filled()
    body, content_type = Snapshot(master, slots).prometheus("")
    assert content_type.startswith("text/plain; version=0.0.4")
    s = _samples(body.decode())
    assert s[("rapidwsgi_requests_total", (("method", "GET"), ("protocol", "http"), ("status", "2xx")))] == 2
    assert s[("rapidwsgi_requests_total", (("method", "HEAD"), ("protocol", "http"), ("status", "2xx")))] == 1
    assert (
        s[("rapidwsgi_requests_total", (("method", "POST"), ("protocol", "uwsgi"), ("status", "4xx")))] == 1
    )
    assert len([k for k in s if k[0] == "rapidwsgi_requests_total"]) == 3  # only those seen
    http = (("protocol", "http"),)
    assert s[("rapidwsgi_request_duration_seconds_count", http)] == 3
    assert s[("rapidwsgi_request_duration_seconds_bucket", (("le", "0.0005"), ("protocol", "http")))] == 2
    assert s[("rapidwsgi_request_duration_seconds_bucket", (("le", "0.0025"), ("protocol", "http")))] == 3
    assert s[("rapidwsgi_request_duration_seconds_sum", http)] == pytest.approx(0.0023001)
    uwsgi = (("protocol", "uwsgi"),)
    assert s[("rapidwsgi_request_duration_seconds_bucket", (("le", "0.005"), ("protocol", "uwsgi")))] == 0
    assert s[("rapidwsgi_request_duration_seconds_bucket", (("le", "0.01"), ("protocol", "uwsgi")))] == 1
    assert s[("rapidwsgi_request_body_bytes_total", uwsgi)] == 11
    assert s[("rapidwsgi_response_body_bytes_total", http)] == 10
    assert (
        "rapidwsgi_request_duration_seconds_count",
        (("protocol", "fastcgi"),),
    ) not in s  # not listened on
    assert s[("rapidwsgi_parse_errors_total", (("status", "431"),))] == 1
    assert s[("rapidwsgi_parse_errors_total", (("status", "400"),))] == 0
    assert s[("rapidwsgi_timeouts_total", (("phase", "header"),))] == 1
    assert s[("rapidwsgi_app_exceptions_total", ())] == 1
    assert s[("rapidwsgi_responses_aborted_total", ())] == 0
    assert s[("rapidwsgi_connections", ())] == 3
    assert s[("rapidwsgi_connections_idle", ())] == 1
    assert s[("rapidwsgi_worker_requests_total", (("pid", "111"), ("worker", "0")))] == 2
    assert s[("rapidwsgi_worker_requests_total", (("pid", "222"), ("worker", "1")))] == 1
    assert s[("rapidwsgi_worker_generation", (("pid", "222"), ("worker", "1")))] == 2
    assert s[("rapidwsgi_workers", (("state", "serving"),))] == 1
    assert s[("rapidwsgi_workers", (("state", "retiring"),))] == 1
    assert s[("rapidwsgi_worker_restarts_total", (("cause", "crash"),))] == 1
    assert s[("rapidwsgi_worker_restarts_total", (("cause", "reload"),))] == 2
    assert s[("rapidwsgi_reloads_total", (("outcome", "completed"),))] == 1
    # A fixed count: the target is --workers, and nothing was scaled.
    assert s[("rapidwsgi_workers_target", ())] == 2
    assert s[("rapidwsgi_worker_scaling_total", (("direction", "up"),))] == 0
    assert s[("rapidwsgi_worker_scaling_total", (("direction", "down"),))] == 0


def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    master, slots = _filled()
    body, content_type = Snapshot(master, slots).prometheus("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(body.decode())}
    assert {
        s.value for s in families["rapidwsgi_requests"].samples if s.name == "rapidwsgi_requests_total"
    } == {
        2,
        1,
    }
    assert body.endswith(b"# EOF\n")


def test_the_json_view_lists_each_worker_and_its_running_request() -> None:
    master, slots = _filled()
    doc = Snapshot(master, slots).as_json()
    assert doc["requests_total"] == 4
    assert doc["master"]["restarts"] == {"crash": 1, "reload": 2}
    assert [(w["pid"], w["slot"], w["state"], w["requests"]) for w in doc["workers"]] == [
        (111, 0, "serving", 2),
        (222, 1, "retiring", 1),
    ]
    (busy,) = doc["workers"][1]["busy"]
    assert (busy["thread"], busy["method"], busy["path"]) == (0, "GET", "/slow")
    assert 1.5 <= busy["age"] < 60
    assert doc["parse_errors"]["431"] == 1
    assert doc["connections"] == 3


def test_statsd_sends_counter_deltas_and_gauge_values() -> None:
    master, slots = _filled()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    exporter = Exporter(master, slots, None, f"127.0.0.1:{port}", "app.web")
    try:
        exporter.send_statsd()
        first = _statsd_lines(receiver)
        assert first["app.web.requests_total.http.GET.2xx"] == ("2", "c")
        assert first["app.web.requests_total.uwsgi.POST.4xx"] == ("1", "c")
        assert first["app.web.request_duration_seconds_count.http"] == ("3", "c")
        assert first["app.web.connections"] == ("3", "g")
        assert first["app.web.worker_requests_total.0.111"] == ("2", "c")
        assert first["app.web.workers.serving"] == ("1", "g")
        assert "app.web.parse_errors_total.400" not in first  # zero: no line
        PyMeter(slots.region, 0).request(0, 0, 200, 1, 0, 5)
        exporter.send_statsd()
        second = _statsd_lines(receiver)
        assert second["app.web.requests_total.http.GET.2xx"] == ("1", "c")  # the change
        assert "app.web.requests_total.uwsgi.POST.4xx" not in second  # unchanged
        assert second["app.web.connections"] == ("3", "g")  # gauges every time
    finally:
        exporter.close()
        receiver.close()


def _statsd_lines(receiver: socket.socket) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    receiver.settimeout(2)
    data = receiver.recv(65536)
    receiver.settimeout(0.2)
    packets = [data]
    while True:
        try:
            packets.append(receiver.recv(65536))
        except TimeoutError:
            break
    for packet in packets:
        assert len(packet) <= 1432
        for line in packet.decode("ascii").split("\n"):
            name, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            assert name not in out
            out[name] = (value, kind)
    return out


def test_the_nanosecond_bounds_are_the_second_bounds() -> None:
    assert tuple(round(b * 1e9) for b in metrics.BUCKETS) == metrics.BUCKETS_NS
    assert {m.encode(): i for i, m in enumerate(metrics.METHODS[:-1])} == metrics.METHOD_INDEX
    assert metrics.METHODS.index("other") == metrics.OTHER_METHOD


@pytest.mark.parametrize("kind", ["python", "c"])
def test_finish_ends_the_record_and_times_the_request_from_its_start(kind: str) -> None:
    if kind == "c" and _cfast is None:
        pytest.skip("the C extension is not built")
    slots = Slots(1)
    meter = metrics.make_meter(slots.region, 0, kind == "c")
    meter.begin(3, b"GET", b"/x", 1)
    started = time.monotonic_ns() - 3_000_000
    meter.finish(3, 1, metrics.method_index("PUT"), 204, started, 5, 0)
    elapsed = time.monotonic_ns() - started
    meter.finish(-1, 1, metrics.method_index("PUT"), 204, time.monotonic_ns() + 10**9, 0, 0)  # never below 0
    words = slots.words(0)
    assert words[metrics.request_index(1, 3, 1)] == 2
    assert 3_000_000 <= words[metrics.DURATION_SUM + 1] <= elapsed
    assert words[metrics.REQUEST_BYTES + 1] == 5
    nb = len(metrics.BUCKETS) + 1
    assert words[metrics.DURATION_BUCKETS + nb] == 1  # the one of 0 ns
    assert slots.busy(0) == []
    words.release()
    del meter
