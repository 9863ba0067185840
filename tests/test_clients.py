"""Real HTTP clients (curl, requests, httpx, http.client) against a real server.

Every test runs twice: with the application inline on the event loop and with
``--threads 4``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.conftest import ServerProcess

CURL = shutil.which("curl") or "/usr/bin/curl"


@pytest.fixture(scope="module", params=["inline", "threads"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    args = ("--threads", "4") if request.param == "threads" else ()
    proc = ServerProcess("apps:app", *args)
    try:
        yield proc
    finally:
        proc.stop()


def _payload(size: int, seed: bytes = b"") -> bytes:
    return os.urandom(size) + seed


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stream_body(n: int, size: int) -> bytes:
    """What ``/stream?n=N&size=S`` of tests/apps.py sends."""
    return b"".join(bytes([65 + i % 26]) * size for i in range(n))


def _split_head(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Split curl ``-i`` output into the last status line, its headers and the body."""
    while True:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split(" ")[1].startswith("1"):  # skip interim responses
            raw = rest
            continue
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers, rest


# ------------------------------------------------------------------ curl


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [CURL, "-sS", "--max-time", "30", *args], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def test_curl_get_returns_status_headers_and_body(server: ServerProcess) -> None:
    status, headers, body = _split_head(_curl("-i", f"{server.url}/hello").stdout)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == "13"
    assert headers["content-type"] == "text/plain"
    assert body == b"Hello, world!"


def test_curl_post_data_binary_from_a_file_arrives_intact(server: ServerProcess, tmp_path: Path) -> None:
    data = _payload(300_000)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    result = _curl(
        "--data-binary", f"@{upload}", "-H", "Content-Type: application/octet-stream", f"{server.url}/digest"
    )
    assert json.loads(result.stdout) == {"length": len(data), "sha256": _sha(data)}


def test_curl_expect_100_continue_upload_gets_100_continue_and_arrives_intact(
    server: ServerProcess, tmp_path: Path
) -> None:
    data = _payload(2 * 1024 * 1024)
    upload = tmp_path / "big.bin"
    upload.write_bytes(data)
    result = _curl("-v", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}", f"{server.url}/digest")
    verbose = result.stderr.decode(errors="replace")
    assert "> Expect: 100-continue" in verbose
    assert "< HTTP/1.1 100 Continue" in verbose
    assert json.loads(result.stdout) == {"length": len(data), "sha256": _sha(data)}


def test_curl_chunked_upload_is_decoded_without_content_length(server: ServerProcess, tmp_path: Path) -> None:
    data = b"".join(b"line %06d of a chunked upload\n" % i for i in range(4000))
    upload = tmp_path / "chunked.txt"
    upload.write_bytes(data)
    result = _curl(
        "-v", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", f"{server.url}/echo"
    )
    assert "> Transfer-Encoding: chunked" in result.stderr.decode(errors="replace")
    doc = json.loads(result.stdout)
    assert doc["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert "CONTENT_LENGTH" not in doc
    assert (doc["body_length"], doc["body_sha256"]) == (len(data), _sha(data))


def test_curl_head_gets_headers_and_no_body(server: ServerProcess) -> None:
    result = _curl("-v", "-I", f"{server.url}/hello")
    status, headers, body = _split_head(result.stdout)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == "13"
    assert body == b""
    assert "Excess found" not in result.stderr.decode(errors="replace")


def test_curl_http10_request_is_served_as_http10(server: ServerProcess) -> None:
    doc = json.loads(_curl("--http1.0", f"{server.url}/echo").stdout)
    assert doc["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_curl_http10_streaming_response_is_not_chunked_and_arrives_in_full(server: ServerProcess) -> None:
    status, headers, body = _split_head(_curl("-i", "--http1.0", f"{server.url}/stream?n=20&size=100").stdout)
    assert status.endswith(" 200 OK")
    assert "chunked" not in headers.get("transfer-encoding", "")
    assert body == _stream_body(20, 100)


def test_curl_reuses_one_keep_alive_connection_for_two_urls(server: ServerProcess) -> None:
    result = _curl("-v", f"{server.url}/hello", f"{server.url}/echo?second=1")
    verbose = result.stderr.decode(errors="replace")
    assert "Re-using existing connection" in verbose
    assert verbose.count("Connected to") == 1
    assert result.stdout.startswith(b"Hello, world!")
    assert json.loads(result.stdout[len(b"Hello, world!") :])["QUERY_STRING"] == "second=1"


def test_curl_chunked_streaming_download_arrives_in_full(server: ServerProcess) -> None:
    _, headers, body = _split_head(_curl("-i", f"{server.url}/stream?n=200&size=1000").stdout)
    assert headers["transfer-encoding"] == "chunked"
    assert body == _stream_body(200, 1000)


# ------------------------------------------------------------------ requests


def test_requests_session_reuses_the_keep_alive_connection(server: ServerProcess) -> None:
    with requests.Session() as session:
        first = session.get(f"{server.url}/echo", timeout=10).json()
        second = session.get(f"{server.url}/echo", timeout=10).json()
    assert first["REMOTE_PORT"] == second["REMOTE_PORT"]


def test_requests_generator_upload_is_sent_chunked_and_arrives_intact(server: ServerProcess) -> None:
    parts = [os.urandom(10_000) for _ in range(30)]

    def body() -> Iterator[bytes]:
        yield from parts

    response = requests.post(f"{server.url}/echo", data=body(), timeout=10)
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    doc = response.json()
    assert doc["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert "CONTENT_LENGTH" not in doc
    data = b"".join(parts)
    assert (doc["body_length"], doc["body_sha256"]) == (len(data), _sha(data))


def test_requests_streaming_download_with_iter_content_arrives_in_full(server: ServerProcess) -> None:
    with requests.get(f"{server.url}/stream?n=300&size=1000", stream=True, timeout=10) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        received = b"".join(response.iter_content(chunk_size=4096))
    assert received == _stream_body(300, 1000)


def test_requests_large_json_round_trip(server: ServerProcess) -> None:
    doc: dict[str, Any] = {
        "items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(40_000)]
    }
    response = requests.post(f"{server.url}/echo", json=doc, timeout=20)
    echoed = response.json()
    assert response.headers["Content-Type"] == "application/json"
    assert echoed["CONTENT_TYPE"] == "application/json"
    assert int(echoed["CONTENT_LENGTH"]) > 1_000_000
    assert json.loads(echoed["body"]) == doc


def test_requests_large_download_arrives_in_full(server: ServerProcess) -> None:
    response = requests.get(f"{server.url}/big?size={5 * 1024 * 1024}", timeout=20)
    assert len(response.content) == 5 * 1024 * 1024
    assert response.content == b"x" * (5 * 1024 * 1024)


# ------------------------------------------------------------------ httpx


def test_httpx_client_speaks_http11_and_reuses_the_connection(server: ServerProcess) -> None:
    with httpx.Client(http2=False, timeout=10) as client:
        first = client.get(f"{server.url}/echo")
        second = client.get(f"{server.url}/echo")
    assert first.http_version == "HTTP/1.1"
    assert first.json()["REMOTE_PORT"] == second.json()["REMOTE_PORT"]


def test_httpx_iterator_upload_is_sent_chunked_and_arrives_intact(server: ServerProcess) -> None:
    parts = [os.urandom(50_000) for _ in range(20)]

    def body() -> Iterator[bytes]:
        yield from parts

    with httpx.Client(http2=False, timeout=10) as client:
        response = client.post(f"{server.url}/digest", content=body())
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    data = b"".join(parts)
    assert response.json() == {"length": len(data), "sha256": _sha(data)}


def test_httpx_streaming_download_arrives_in_full(server: ServerProcess) -> None:
    with (
        httpx.Client(http2=False, timeout=10) as client,
        client.stream("GET", f"{server.url}/stream?n=300&size=1000") as response,
    ):
        assert response.headers["Transfer-Encoding"] == "chunked"
        received = b"".join(response.iter_bytes())
    assert received == _stream_body(300, 1000)


def test_httpx_large_json_round_trip(server: ServerProcess) -> None:
    doc = {"values": list(range(200_000)), "text": "é" * 1000}
    with httpx.Client(http2=False, timeout=20) as client:
        response = client.post(f"{server.url}/echo", json=doc)
    echoed = response.json()
    assert json.loads(echoed["body"].encode("latin-1")) == doc


def test_httpx_head_has_length_and_no_body(server: ServerProcess) -> None:
    with httpx.Client(http2=False, timeout=10) as client:
        response = client.head(f"{server.url}/hello")
        after = client.get(f"{server.url}/hello")  # the connection is still in sync
    assert response.headers["Content-Length"] == "13"
    assert response.content == b""
    assert after.content == b"Hello, world!"


# ------------------------------------------------------------------ http.client


def _connection(server: ServerProcess) -> http.client.HTTPConnection:
    address = server.address
    assert isinstance(address, tuple)
    return http.client.HTTPConnection(address[0], address[1], timeout=10)


def test_http_client_reuses_one_connection_for_several_requests(server: ServerProcess) -> None:
    conn = _connection(server)
    try:
        ports = []
        for _ in range(3):
            conn.request("GET", "/echo")
            response = conn.getresponse()
            assert not response.will_close
            ports.append(json.loads(response.read())["REMOTE_PORT"])
        assert len(set(ports)) == 1
    finally:
        conn.close()


def test_http_client_post_with_content_length_arrives_intact(server: ServerProcess) -> None:
    data = _payload(500_000)
    conn = _connection(server)
    try:
        conn.request("POST", "/digest", body=data, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"length": len(data), "sha256": _sha(data)}
    finally:
        conn.close()


def test_http_client_encode_chunked_upload_arrives_intact(server: ServerProcess) -> None:
    parts = [b"alpha-", b"", b"beta-", b"gamma" * 1000]
    conn = _connection(server)
    try:
        conn.request("POST", "/echo", body=iter(parts), encode_chunked=True)
        doc = json.loads(conn.getresponse().read())
        assert doc["HTTP_TRANSFER_ENCODING"] == "chunked"
        assert doc["body"] == b"".join(parts).decode()
    finally:
        conn.close()


def test_http_client_head_then_get_on_the_same_connection(server: ServerProcess) -> None:
    conn = _connection(server)
    try:
        conn.request("HEAD", "/hello")
        head = conn.getresponse()
        assert head.getheader("Content-Length") == "13"
        assert head.read() == b""
        conn.request("GET", "/hello")
        assert conn.getresponse().read() == b"Hello, world!"
    finally:
        conn.close()
