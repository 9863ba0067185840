"""HTTPS on the http listeners: --certfile/--keyfile/--ca-certs/--cert-reqs (rapidwsgi.tls).

Certificates come from a throwaway CA made by ``trustme`` for each test module; the
server runs in a subprocess and every client trusts only that CA.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from rapidwsgi.config import Config
from rapidwsgi.errors import ConfigError, ExitCode
from tests.conftest import ServerProcess

Start = type[ServerProcess]


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    certfile: Path
    keyfile: Path
    client_file: Path  # a client certificate and its key, issued by the same CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(base / "cert.pem"), append=True)
    server.private_key_pem.write_to_path(str(base / "key.pem"))
    client = ca.issue_cert("client@example.com")
    client.private_key_and_cert_chain_pem.write_to_path(str(base / "client.pem"))
    return Pki(ca, base / "ca.pem", base / "cert.pem", base / "key.pem", base / "client.pem")


def client_context(pki: Pki, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if with_cert:
        context.load_cert_chain(str(pki.client_file))
    return context


def tls_args(pki: Pki) -> list[str]:
    return ["--certfile", str(pki.certfile), "--keyfile", str(pki.keyfile)]


def https(
    server: ServerProcess, context: ssl.SSLContext, path: str = "/hello"
) -> tuple[int, bytes, http.client.HTTPSConnection]:
    host, port = server.address  # type: ignore[misc]
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read(), conn


@pytest.fixture
def tls_server(start_server: Start, pki: Pki) -> Iterator[ServerProcess]:
    yield start_server("apps:app", *tls_args(pki))


def test_https_request_is_served_with_scheme_https_and_keep_alive(
    tls_server: ServerProcess, pki: Pki
) -> None:
    assert "Listening at: https://127.0.0.1:" in tls_server.stderr
    status, body, conn = https(tls_server, client_context(pki), "/echo?x=1")
    environ = json.loads(body)
    assert status == 200
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTPS"] == "on"
    assert environ["QUERY_STRING"] == "x=1"
    first_socket = conn.sock
    conn.request("GET", "/hello")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"Hello, world!")
    assert conn.sock is first_socket  # the same TLS connection served both requests
    assert isinstance(conn.sock, ssl.SSLSocket) and conn.sock.selected_alpn_protocol() in (None, "http/1.1")
    conn.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_file_wrapper_response_passes_through_tls_intact(
    tls_server: ServerProcess, pki: Pki, framing: str
) -> None:
    """sendfile(2) would bypass TLS: over TLS a file is sent through the transport."""
    size = 300_000
    query = f"size={size}" + (f"&cl={size}" if framing == "content-length" else "")
    status, body, conn = https(tls_server, client_context(pki), f"/file?{query}")
    conn.close()
    assert status == 200
    assert body == bytes(i % 251 for i in range(size))


def test_alpn_offers_only_http_1_1(tls_server: ServerProcess, pki: Pki) -> None:
    context = client_context(pki)
    context.set_alpn_protocols(["h2", "http/1.1"])
    host, port = tls_server.address  # type: ignore[misc]
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"Hello, world!")


def test_plain_http_to_the_tls_port_gets_no_http_response_and_the_server_keeps_serving(
    tls_server: ServerProcess, pki: Pki
) -> None:
    host, port = tls_server.address  # type: ignore[misc]
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        try:
            while chunk := raw.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    assert b"HTTP/1.1" not in received and b"Hello" not in received
    assert https(tls_server, client_context(pki))[:2] == (200, b"Hello, world!")
    assert "Traceback" not in tls_server.stderr


def test_silent_client_is_cut_off_by_the_handshake_timeout(start_server: Start, pki: Pki) -> None:
    server = start_server("apps:app", *tls_args(pki), "--header-timeout", "1")
    host, port = server.address  # type: ignore[misc]
    with socket.create_connection((host, port), timeout=15) as raw:
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):  # closed: it never completed a handshake
            assert raw.recv(1) == b""
        assert time.monotonic() - started < 12
    assert https(server, client_context(pki))[:2] == (200, b"Hello, world!")


def test_required_client_certificate_is_enforced(start_server: Start, pki: Pki) -> None:
    server = start_server(
        "apps:app", *tls_args(pki), "--ca-certs", str(pki.ca_file), "--cert-reqs", "required"
    )
    status, body, conn = https(server, client_context(pki, with_cert=True))
    conn.close()
    assert (status, body) == (200, b"Hello, world!")
    # TLS 1.3 reports a missing client certificate after the handshake, at the first read.
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        https(server, client_context(pki))
    assert https(server, client_context(pki, with_cert=True))[:2] == (200, b"Hello, world!")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_fetches_over_https_verifying_the_certificate(tls_server: ServerProcess, pki: Pki) -> None:
    host, port = tls_server.address  # type: ignore[misc]
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(pki.ca_file), f"https://{host}:{port}/hello"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hello, world!"


def test_a_reload_serves_a_renewed_certificate(start_server: Start, pki: Pki, tmp_path: Path) -> None:
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(pki.certfile, certfile)
    shutil.copyfile(pki.keyfile, keyfile)
    server = start_server("apps:app", "--certfile", str(certfile), "--keyfile", str(keyfile))
    _, _, conn = https(server, client_context(pki))
    assert isinstance(conn.sock, ssl.SSLSocket)
    before = conn.sock.getpeercert(binary_form=True)
    conn.close()
    renewed = pki.ca.issue_cert("127.0.0.1", "localhost")
    renewed.cert_chain_pems[0].write_to_path(str(certfile))
    renewed.private_key_pem.write_to_path(str(keyfile))
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Worker generation 2 serving", timeout=20)
    status, _, conn = https(server, client_context(pki))
    assert isinstance(conn.sock, ssl.SSLSocket)
    after = conn.sock.getpeercert(binary_form=True)
    conn.close()
    assert status == 200
    assert after == ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
    assert after != before


def test_a_certificate_that_does_not_load_is_a_one_line_error(start_server: Start, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    server = start_server("apps:app", "--certfile", str(missing), wait=False)
    assert server.wait(timeout=15) == ExitCode.USAGE
    assert f"--certfile {missing}: cannot load the certificate and key" in server.stderr
    assert "Traceback" not in server.stderr


def test_garbage_certificate_file_is_a_one_line_error(start_server: Start, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    server = start_server("apps:app", "--certfile", str(garbage), wait=False)
    assert server.wait(timeout=15) == ExitCode.USAGE
    assert "cannot load the certificate and key" in server.stderr
    assert "Traceback" not in server.stderr


def test_tls_options_without_certfile_are_refused() -> None:
    with pytest.raises(ConfigError, match="need --certfile"):
        Config.from_values({"keyfile": "key.pem"})
    with pytest.raises(ConfigError, match="need --ca-certs"):
        Config.from_values({"certfile": "cert.pem", "cert_reqs": "required"})


def test_only_http_listeners_serve_tls() -> None:
    config = Config.from_values(
        {
            "certfile": "cert.pem",
            "bind": ["127.0.0.1:8443", "unix:/run/app.sock"],
            "protocol": ["http", "uwsgi"],
        }
    )
    assert config.tls_for(0) is True
    assert config.tls_for(1) is False  # a gateway protocol's peer is nginx on a trusted link
    assert Config.from_values({"bind": ["127.0.0.1:8000"]}).tls_for(0) is False


def test_gunicorn_cert_reqs_numbers_mean_the_named_modes() -> None:
    config = Config.load(
        ["--certfile", "c.pem", "--ca-certs", "ca.pem", "--cert-reqs", "1", "app:app"], environ={}
    )
    assert config.cert_reqs == "optional"


def test_a_reload_keeps_the_certificate_loaded_at_start_when_the_files_are_gone(
    start_server: Start, pki: Pki, tmp_path: Path
) -> None:
    """Like a key readable only by root after --user: the new worker cannot load the
    files, says so, and serves the context the master loaded at start."""
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(pki.certfile, certfile)
    shutil.copyfile(pki.keyfile, keyfile)
    server = start_server("apps:app", "--certfile", str(certfile), "--keyfile", str(keyfile))
    certfile.unlink()
    keyfile.unlink()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Worker generation 2 serving", timeout=20)
    assert "cannot load the certificate and key" in server.stderr
    assert "serving the certificate loaded at start" in server.stderr
    status, body, conn = https(server, client_context(pki))
    conn.close()
    assert (status, body) == (200, b"Hello, world!")


def test_a_client_closing_cleanly_logs_nothing(start_server: Start, pki: Pki) -> None:
    """A TLS client that ends with close_notify and a FIN: no asyncio warning about
    eof_received() (its return value has no effect on a TLS transport)."""
    server = start_server("apps:app", *tls_args(pki))
    host, port = server.address  # type: ignore[misc]
    context = client_context(pki)
    for _ in range(3):
        with socket.create_connection((host, port), timeout=10) as raw:
            tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            received = b""
            while not received.endswith(b"Hello, world!"):
                part = tls.recv(65536)
                assert part, received
                received += part
            plain = tls.unwrap()  # close_notify, answered by the server's
            plain.shutdown(socket.SHUT_WR)
            plain.settimeout(10)
            assert plain.recv(65536) == b""  # the server closed its side too
    assert server.stop() == 0
    assert "eof_received" not in server.stderr, server.stderr
