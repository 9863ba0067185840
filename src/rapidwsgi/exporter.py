"""The master's metrics: the Prometheus and JSON endpoint (``--metrics-bind``) and
statsd (``--statsd-host``).

Rules:

1. Everything here runs in the master's loop, on its thread: no thread is started (a
   thread alive at fork would leave its locks held in every child). The endpoint is a
   non-blocking socket the loop polls; each client sends one request, gets one
   response and the connection closes. A client is dropped after ``CLIENT_TIMEOUT``
   or beyond ``MAX_CLIENTS``, so a scraper that hangs cannot hold the master.
2. Counters come from :class:`metrics.Slots` (retired + live slots, read at the
   moment of the scrape); the worker table and the restart and reload counts from the
   master's own records (:class:`MasterView`). Nothing is cached between scrapes.
3. The Prometheus text (and OpenMetrics, when the scraper's ``Accept`` asks for it) is
   written by ``prometheus_client``'s own encoders from metric families built here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

from . import __version__, metrics
from .log import error_log
from .metrics import Slots
from .sockets import parse_address

CLIENT_TIMEOUT: Final = 5.0
MAX_CLIENTS: Final = 16
MAX_REQUEST: Final = 8192
STATSD_INTERVAL: Final = 1.0
#: One statsd datagram stays below a common path MTU (1500 - IP - UDP headers).
STATSD_PACKET: Final = 1432
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
#: A worker's load in the JSON stats (worker.Supervision.LOADS).
_LOAD_NAMES: Final = ("idle", "busy", "full")
_TICKS: Final = os.sysconf("SC_CLK_TCK")


class WorkerView(Protocol):
    """What the master knows of one worker (supervisor.WorkerProcess)."""

    pid: int
    generation: int
    spawned: float
    slot: int
    #: The load its last beat reported (adaptive worker count): 0 idle, 1 busy, 2 full.
    load: int

    @property
    def state(self) -> str: ...


class MasterView(Protocol):
    """What the exporter reads of the master (supervisor.Master)."""

    pid: int
    generation: int
    num_workers: int
    started: float
    restarts: dict[str, int]
    reloads: dict[str, int]
    #: The adaptive range (0, 0 for a fixed count) and the decisions by direction.
    workers_min: int
    workers_max: int
    scaling: dict[str, int]

    @property
    def worker_views(self) -> Sequence[WorkerView]: ...

    @property
    def listener_protocols(self) -> Sequence[str]: ...


def process_usage(pid: int) -> tuple[int, float]:
    """``pid``'s resident set (bytes) and CPU time (seconds), from /proc; zeros if gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss = int(f.read().split()[1]) * _PAGE
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Fields after the command name, which may itself hold spaces and parentheses.
            fields = f.read().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (proc(5) 14, 15)
    except (OSError, IndexError, ValueError):
        return 0, 0.0
    return rss, cpu


class Snapshot:
    """The totals and the worker table at one moment (one scrape)."""

    def __init__(self, master: MasterView, slots: Slots) -> None:
        self.master = master
        self.taken = time.monotonic()
        workers = list(master.worker_views)
        self.workers = workers
        self.totals = slots.totals([w.slot for w in workers])
        self.per_worker: list[dict[str, Any]] = []
        now_ns = time.monotonic_ns()
        for w in workers:
            rss, cpu = process_usage(w.pid)
            requests = 0
            gauges = [0, 0, 0, 0]
            if w.slot >= 0:
                with slots.words(w.slot) as words:
                    values = words.tolist()
                requests = sum(values[metrics.REQUESTS : metrics.DURATION_BUCKETS])
                gauges = values[metrics.COUNTERS : metrics.WORDS]
            self.per_worker.append(
                {
                    "pid": w.pid,
                    "slot": w.slot,
                    "generation": w.generation,
                    "state": w.state,
                    "age": round(self.taken - w.spawned, 3),
                    "rss": rss,
                    "cpu": round(cpu, 2),
                    "requests": requests,
                    "connections": gauges[0],
                    "idle_connections": gauges[1],
                    "threads_busy": gauges[2],
                    "requests_waiting": gauges[3],
                    "load": _LOAD_NAMES[w.load] if master.workers_max else None,
                    "busy": [
                        {
                            "thread": b.record,
                            "method": b.method,
                            "path": b.path,
                            "age": round(max(now_ns - b.start_ns, 0) / 1e9, 3),
                        }
                        for b in slots.busy(w.slot)
                    ],
                }
            )

    # ------------------------------------------------------------------ JSON

    def as_json(self) -> dict[str, Any]:
        t = self.totals
        m = self.master
        requests = [
            {"protocol": p, "method": meth, "status": sc, "count": t[metrics.request_index(pi, mi, si)]}
            for pi, p in enumerate(metrics.PROTOCOLS)
            for mi, meth in enumerate(metrics.METHODS)
            for si, sc in enumerate(metrics.STATUS_CLASSES)
            if t[metrics.request_index(pi, mi, si)]
        ]
        return {
            "master": {
                "pid": m.pid,
                "version": __version__,
                "uptime": round(self.taken - m.started, 3),
                "generation": m.generation,
                "workers_wanted": m.num_workers,
                "workers_min": m.workers_min,
                "workers_max": m.workers_max,
                "scaling": dict(m.scaling),
                "restarts": dict(m.restarts),
                "reloads": dict(m.reloads),
            },
            "requests_total": sum(t[metrics.REQUESTS : metrics.DURATION_BUCKETS]),
            "requests": requests,
            "parse_errors": {
                str(s): t[metrics.PARSE_ERRORS + i] for i, s in enumerate(metrics.PARSE_STATUSES)
            },
            "timeouts": {p: t[metrics.TIMEOUTS + i] for i, p in enumerate(metrics.TIMEOUT_PHASES)},
            "aborted": t[metrics.ABORTED],
            "app_exceptions": t[metrics.APP_EXCEPTIONS],
            "shed": t[metrics.SHED],
            "stuck": t[metrics.STUCK],
            "connections": t[metrics.CONNECTIONS_ACTIVE],
            "idle_connections": t[metrics.CONNECTIONS_IDLE],
            "threads_busy": t[metrics.THREADS_BUSY],
            "requests_waiting": t[metrics.REQUESTS_WAITING],
            "workers": self.per_worker,
        }

    # ------------------------------------------------------------------ Prometheus

    def families(self) -> Iterator[Any]:
        """The metric families (prometheus_client's), see docs/observability.md."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        t = self.totals
        m = self.master
        protocols = sorted(set(m.listener_protocols), key=metrics.PROTOCOLS.index)
        info = GaugeMetricFamily("rapidwsgi_info", "The server's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        requests = CounterMetricFamily(
            "rapidwsgi_requests",
            "Requests answered (or aborted), by front-end protocol, method and status class.",
            labels=["protocol", "method", "status"],
        )
        for pi, p in enumerate(metrics.PROTOCOLS):
            for mi, meth in enumerate(metrics.METHODS):
                for si, sc in enumerate(metrics.STATUS_CLASSES):
                    value = t[metrics.request_index(pi, mi, si)]
                    if value:
                        requests.add_metric([p, meth, sc], value)
        yield requests
        nb = len(metrics.BUCKETS) + 1
        duration = HistogramMetricFamily(
            "rapidwsgi_request_duration_seconds",
            "Time from a request's head to its response's last byte handed to the kernel.",
            labels=["protocol"],
        )
        body_in = CounterMetricFamily(
            "rapidwsgi_request_body_bytes", "Request body bytes received.", labels=["protocol"]
        )
        body_out = CounterMetricFamily(
            "rapidwsgi_response_body_bytes", "Response body bytes sent.", labels=["protocol"]
        )
        for pi, p in enumerate(metrics.PROTOCOLS):
            counts = t[metrics.DURATION_BUCKETS + pi * nb : metrics.DURATION_BUCKETS + (pi + 1) * nb]
            if p not in protocols and not any(counts):
                continue
            cumulative, buckets = 0, []
            for bound, count in zip((*metrics.BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            duration.add_metric([p], buckets, t[metrics.DURATION_SUM + pi] / 1e9)
            body_in.add_metric([p], t[metrics.REQUEST_BYTES + pi])
            body_out.add_metric([p], t[metrics.RESPONSE_BYTES + pi])
        yield duration
        yield body_in
        yield body_out
        parse = CounterMetricFamily(
            "rapidwsgi_parse_errors", "Requests refused before the application, by status.", labels=["status"]
        )
        for i, status in enumerate(metrics.PARSE_STATUSES):
            parse.add_metric([str(status)], t[metrics.PARSE_ERRORS + i])
        yield parse
        timeouts = CounterMetricFamily(
            "rapidwsgi_timeouts", "Connections timed out, by what they were waiting for.", labels=["phase"]
        )
        for i, phase in enumerate(metrics.TIMEOUT_PHASES):
            timeouts.add_metric([phase], t[metrics.TIMEOUTS + i])
        yield timeouts
        yield CounterMetricFamily(
            "rapidwsgi_responses_aborted", "Responses cut short (connection reset).", value=t[metrics.ABORTED]
        )
        yield CounterMetricFamily(
            "rapidwsgi_app_exceptions",
            "Exceptions raised by the application.",
            value=t[metrics.APP_EXCEPTIONS],
        )
        yield CounterMetricFamily(
            "rapidwsgi_requests_shed",
            "Requests answered 503 at once by load shedding (--limit-concurrency, --backlog-requests).",
            value=t[metrics.SHED],
        )
        yield CounterMetricFamily(
            "rapidwsgi_requests_stuck",
            "Requests still in the application after --request-timeout (answered 504 or reset).",
            value=t[metrics.STUCK],
        )
        for word, name, doc in (
            (metrics.CONNECTIONS_ACTIVE, "rapidwsgi_connections", "Open client connections."),
            (
                metrics.CONNECTIONS_IDLE,
                "rapidwsgi_connections_idle",
                "Keep-alive connections between requests.",
            ),
            (metrics.THREADS_BUSY, "rapidwsgi_threads_busy", "Application threads running a request."),
            (
                metrics.REQUESTS_WAITING,
                "rapidwsgi_requests_waiting",
                "Requests waiting for an application thread.",
            ),
        ):
            yield GaugeMetricFamily(name, doc + " (sampled each second)", value=t[word])
        labels = ["worker", "pid"]
        rss = GaugeMetricFamily("rapidwsgi_worker_rss_bytes", "A worker's resident memory.", labels=labels)
        cpu = CounterMetricFamily("rapidwsgi_worker_cpu_seconds", "A worker's CPU time.", labels=labels)
        served = CounterMetricFamily(
            "rapidwsgi_worker_requests", "Requests a worker answered since it started.", labels=labels
        )
        age = GaugeMetricFamily(
            "rapidwsgi_worker_age_seconds", "Seconds since a worker was forked.", labels=labels
        )
        generation = GaugeMetricFamily(
            "rapidwsgi_worker_generation", "The reload generation a worker belongs to.", labels=labels
        )
        for w in self.per_worker:
            key = [str(w["slot"]), str(w["pid"])]
            rss.add_metric(key, w["rss"])
            cpu.add_metric(key, w["cpu"])
            served.add_metric(key, w["requests"])
            age.add_metric(key, w["age"])
            generation.add_metric(key, w["generation"])
        yield from (rss, cpu, served, age, generation)
        states = GaugeMetricFamily("rapidwsgi_workers", "Worker processes alive, by state.", labels=["state"])
        for state in ("booting", "serving", "retiring", "stopping"):
            states.add_metric([state], sum(1 for w in self.per_worker if w["state"] == state))
        yield states
        restarts = CounterMetricFamily(
            "rapidwsgi_worker_restarts", "Workers replaced, by cause.", labels=["cause"]
        )
        for cause, value in sorted(m.restarts.items()):
            restarts.add_metric([cause], value)
        yield restarts
        reloads = CounterMetricFamily(
            "rapidwsgi_reloads", "Reloads (SIGHUP, --reload), by outcome.", labels=["outcome"]
        )
        for outcome, value in sorted(m.reloads.items()):
            reloads.add_metric([outcome], value)
        yield reloads
        yield GaugeMetricFamily(
            "rapidwsgi_workers_target",
            "The worker count the master keeps (--workers; with --workers-max, where the adaptation is).",
            value=m.num_workers,
        )
        scaling = CounterMetricFamily(
            "rapidwsgi_worker_scaling",
            "Adaptive worker count (--workers-max): workers added (up) and idle ones retired (down).",
            labels=["direction"],
        )
        for direction in ("up", "down"):
            scaling.add_metric([direction], m.scaling.get(direction, 0))
        yield scaling

    def prometheus(self, accept: str) -> tuple[bytes, str]:
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(_Collected(self)), content_type

    # ------------------------------------------------------------------ statsd

    def statsd_values(self) -> tuple[dict[str, int | float], dict[str, int | float]]:
        """(counters, gauges) by statsd name without the prefix: the Prometheus names,
        with the label values appended, dot-separated."""
        counters: dict[str, int | float] = {}
        gauges: dict[str, int | float] = {}
        for family in self.families():
            for sample in family.samples:
                name = sample.name.removeprefix("rapidwsgi_")
                if name.endswith(("_bucket", "_created")) or family.type == "info":
                    continue
                parts = [name, *(_statsd_safe(v) for v in sample.labels.values())]
                key = ".".join(parts)
                if family.type in ("counter", "histogram"):
                    counters[key] = sample.value
                elif family.name != "rapidwsgi_info":
                    gauges[key] = sample.value
        return counters, gauges


class _Collected:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        return self.snapshot.families()


def _bound(value: float) -> str:
    # prometheus_client's spelling of le: "+Inf", and floats like Python's repr.
    return "+Inf" if value == float("inf") else repr(float(value))


def _statsd_safe(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in value)


# ---------------------------------------------------------------------- the endpoint


class _Client:
    __slots__ = ("deadline", "inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbuf = b""
        self.outbuf = b""


class Exporter:
    """The master's ``--metrics-bind`` endpoint and statsd sender (module docstring)."""

    def __init__(
        self,
        master: MasterView,
        slots: Slots,
        listener: socket.socket | None,
        statsd: str | None,
        prefix: str,
    ) -> None:
        """``listener``: the endpoint's bound and listening socket (cli.py binds it with
        the others, before dropping privileges, and the master removes its unix socket
        file at exit with the others')."""
        self.master = master
        self.slots = slots
        self.listener = listener
        self.clients: dict[int, _Client] = {}
        self.statsd: socket.socket | None = None
        self.statsd_prefix = prefix.rstrip(".")
        self._statsd_sent: dict[str, int | float] = {}
        self._statsd_next = 0.0
        if statsd is not None:
            address = parse_address(statsd)
            info = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)[0]
            self.statsd = socket.socket(info[0], socket.SOCK_DGRAM)
            self.statsd.setblocking(False)
            self.statsd.connect(info[4])

    def poll_fds(self) -> list[tuple[int, int]]:
        import select

        out = []
        if self.listener is not None:
            out.append((self.listener.fileno(), select.POLLIN))
        for fd, client in self.clients.items():
            out.append((fd, select.POLLOUT if client.outbuf else select.POLLIN))
        return out

    def handle(self, fd: int) -> bool:
        """Act on a ready descriptor; False if it is not ours."""
        if self.listener is not None and fd == self.listener.fileno():
            self._accept()
            return True
        client = self.clients.get(fd)
        if client is None:
            return False
        if client.outbuf:
            self._send(client)
        else:
            self._receive(client)
        return True

    def tick(self, now: float) -> None:
        for client in list(self.clients.values()):
            if now > client.deadline:
                self._drop(client)
        if self.statsd is not None and now >= self._statsd_next:
            self._statsd_next = now + STATSD_INTERVAL
            self.send_statsd()

    def forget(self) -> None:
        """In a forked child: close the sockets, leave the unix socket file alone."""
        for client in list(self.clients.values()):
            client.sock.close()
        self.clients.clear()
        if self.listener is not None:
            self.listener.close()
        if self.statsd is not None:
            self.statsd.close()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        if self.listener is not None:
            self.listener.close()
        if self.statsd is not None:
            self.statsd.close()

    # ------------------------------------------------------------------ HTTP

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(MAX_CLIENTS):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                error_log.warning("metrics endpoint: accept failed: %s", exc)
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            self.clients[sock.fileno()] = _Client(sock, time.monotonic() + CLIENT_TIMEOUT)

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbuf += data
        end = client.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(client.inbuf) > MAX_REQUEST:
                self._reply(client, 431, "text/plain; charset=utf-8", b"request head too large\n")
            return
        self._answer(client, client.inbuf[:end])

    def _answer(self, client: _Client, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._reply(client, 400, "text/plain; charset=utf-8", b"bad request\n")
            return
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            self._reply(
                client, 405, "text/plain; charset=utf-8", b"GET or HEAD\n", extra=b"Allow: GET, HEAD\r\n"
            )
            return
        url = urlsplit(target)
        query = parse_qs(url.query)
        if url.path not in ("/metrics", "/stats", "/"):
            self._reply(client, 404, "text/plain; charset=utf-8", b"see /metrics and /metrics?format=json\n")
            return
        try:
            snapshot = Snapshot(self.master, self.slots)
            if url.path == "/stats" or query.get("format") == ["json"]:
                body = json.dumps(snapshot.as_json(), separators=(",", ":")).encode() + b"\n"
                content_type = "application/json"
            else:
                body, content_type = snapshot.prometheus(headers.get("accept", ""))
        except Exception:  # a bug here must never take the master down
            error_log.exception("metrics endpoint: rendering failed")
            self._reply(client, 500, "text/plain; charset=utf-8", b"internal error\n")
            return
        self._reply(client, 200, content_type, body, head_only=method == "HEAD")

    def _reply(
        self,
        client: _Client,
        status: int,
        content_type: str,
        body: bytes,
        extra: bytes = b"",
        head_only: bool = False,
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
            status, "Error"
        )
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n"
        ).encode("latin-1")
        client.outbuf = head + extra + b"\r\n" + (b"" if head_only else body)
        self._send(client)

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.outbuf = client.outbuf[sent:]
        if not client.outbuf:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()

    # ------------------------------------------------------------------ statsd

    def send_statsd(self) -> None:
        """Counters as the change since the last send (``|c``), gauges as values (``|g``)."""
        assert self.statsd is not None
        try:
            counters, gauges = Snapshot(self.master, self.slots).statsd_values()
        except Exception:
            error_log.exception("statsd: collecting failed")
            return
        lines = []
        prefix = self.statsd_prefix + "." if self.statsd_prefix else ""
        for key, value in counters.items():
            delta = value - self._statsd_sent.get(key, 0)
            if delta:
                lines.append(f"{prefix}{key}:{_number(delta)}|c")
            self._statsd_sent[key] = value
        for key, value in gauges.items():
            lines.append(f"{prefix}{key}:{_number(value)}|g")
        self._send_lines(lines, self.statsd.send)

    @staticmethod
    def _send_lines(lines: list[str], send: Callable[[bytes], object]) -> None:
        packet = b""
        for line in lines:
            data = line.encode("ascii")
            if packet and len(packet) + 1 + len(data) > STATSD_PACKET:
                _send_quietly(send, packet)
                packet = b""
            packet = packet + b"\n" + data if packet else data
        if packet:
            _send_quietly(send, packet)


def _send_quietly(send: Callable[[bytes], object], packet: bytes) -> None:
    # statsd is fire-and-forget: a daemon that is down loses these.
    with contextlib.suppress(OSError):
        send(packet)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0")
