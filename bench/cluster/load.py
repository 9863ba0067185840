"""The test bed's load: ``clients`` threads, each on its own keep-alive connection to the
balancer, sending a fixed mix (every ``post_every``-th request a POST of a fresh UUID
token, the others a GET), with every request recorded: when it was sent and answered,
its status or the error, and which host and version answered. Bounded in time and in
count. A failure is anything but a 2xx (an error status, a reset, a timeout).
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from dataclasses import dataclass, field


@dataclass
class Record:
    method: str
    sent: float  # time.monotonic()
    done: float
    status: int  # 0: no HTTP answer
    error: str = ""
    host: str = ""
    version: str = ""
    token: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def parse_body(body: bytes) -> dict[str, str]:
    """``host=h1 version=v1 newest=3`` -> a dict."""
    fields: dict[str, str] = {}
    for part in body.decode(errors="replace").split():
        key, _, value = part.partition("=")
        fields[key] = value
    return fields


@dataclass
class Load:
    port: int
    clients: int = 8
    post_every: int = 4
    max_seconds: float = 120.0
    max_requests: int = 500_000
    timeout: float = 10.0
    records: list[Record] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Record]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        with self._lock:
            return sorted(self.records, key=lambda r: r.sent)

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def _client(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        i = n  # the clients' POSTs are spread, not all on the same tick
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            if self.count() >= self.max_requests:
                break
            i += 1
            post = i % self.post_every == 0
            token = str(uuid.uuid4()) if post else ""
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            sent = time.monotonic()
            record = Record("POST" if post else "GET", sent, sent, 0, token=token)
            try:
                if post:
                    body = f"token={token}"
                    headers = {"Content-Type": "application/x-www-form-urlencoded"}
                    conn.request("POST", "/items", body=body, headers=headers)
                else:
                    conn.request("GET", "/")
                response = conn.getresponse()
                data = response.read()
                record.status = response.status
                fields = parse_body(data)
                record.host = fields.get("host", "")
                record.version = fields.get("version", "")
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                record.error = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            record.done = time.monotonic()
            with self._lock:
                self.records.append(record)
        if conn is not None:
            conn.close()
