"""``--access-logformat json``, ``--error-log-format json`` and ``--request-id-header``:
every line parses with ``json.loads`` and holds exactly what the request carried,
whatever bytes a hostile client put into it."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from rapidwsgi.log import AccessRecord, JSONFormatter, RequestIds, iso_time, json_format
from tests.conftest import ServerProcess
from tests.rawhttp import RawConnection, wait_until

Start = type[ServerProcess]
APP = "metricsapp:app"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")
HEX32 = re.compile(r"[0-9a-f]{32}")


def _wsgi(raw: bytes) -> str:
    """A WSGI string: the bytes as latin-1."""
    return raw.decode("latin-1")


def _record(environ: dict[str, Any], status: int = 200, sent: int = 5, duration: float = 0.0123456) -> str:
    return json_format()(AccessRecord(environ, status, sent, duration, b""))


def test_a_plain_request_gives_exactly_these_fields() -> None:
    line = _record(
        {
            "REMOTE_ADDR": "10.0.0.7",
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/hello",
            "QUERY_STRING": "a=1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_USER_AGENT": "curl/8.5",
            "HTTP_X_REQUEST_ID": "abc-1",
        }
    )
    assert line.endswith("\n") and line.count("\n") == 1
    doc = json.loads(line)
    assert ISO.fullmatch(doc.pop("time"))
    assert doc.pop("pid") > 0
    assert doc == {
        "remote_addr": "10.0.0.7",
        "method": "GET",
        "path": "/hello",
        "query": "a=1",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 5,
        "duration": 0.012346,
        "user_agent": "curl/8.5",
        "referer": None,
        "request_id": "abc-1",
    }


HOSTILE = [
    (b'quote " and \\ backslash', 'quote " and \\ backslash'),
    (b"nul \x00 lf \n cr \r tab \t esc \x1b del \x7f", "nul \x00 lf \n cr \r tab \t esc \x1b del \x7f"),
    (b"utf-8 \xc3\xa9 \xe2\x82\xac", "utf-8 é €"),
    (b"invalid \xff\xfe \xc3 \x80", "invalid \\xff\\xfe \\xc3 \\x80"),
    (b'","status":999,"x":"', '","status":999,"x":"'),
    (b"c1 \xc2\x85 line separator \xe2\x80\xa8", "c1 \x85 line separator \u2028"),
]


@pytest.mark.parametrize(("raw", "text"), HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_stay_inside_their_field_on_one_line(raw: bytes, text: str) -> None:
    value = _wsgi(raw)
    line = _record(
        {
            "REMOTE_ADDR": "1.2.3.4",
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/" + value,
            "QUERY_STRING": value,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_USER_AGENT": value,
            "HTTP_REFERER": value,
        }
    )
    assert line.count("\n") == 1 and line.endswith("\n")  # one line, whatever the bytes
    assert line.isascii()
    doc = json.loads(line)
    assert (doc["path"], doc["query"], doc["user_agent"], doc["referer"]) == ("/" + text, text, text, text)
    assert doc["status"] == 200


def test_request_ids_are_kept_from_a_trusted_peer_only_when_sane() -> None:
    ids = RequestIds("X-Request-ID")
    assert ids.key == "HTTP_X_REQUEST_ID"
    env = {"HTTP_X_REQUEST_ID": "trace-42"}
    assert ids.assign(env, trusted=True) == "trace-42"
    assert env == {"HTTP_X_REQUEST_ID": "trace-42"}
    for value in ("trace-42", "", "a b", "x" * 201, "é", "a\x00", "one, two"):
        env = {"HTTP_X_REQUEST_ID": value}
        trusted = value != "trace-42"  # the sane one from an untrusted peer, the rest trusted
        new = ids.assign(env, trusted=trusted)
        assert HEX32.fullmatch(new), value
        assert env["HTTP_X_REQUEST_ID"] == new
    env = {}
    first, second = ids.assign(env, True), ids.assign({}, True)
    assert first != second
    assert ids.assign({"HTTP_X_REQUEST_ID": "x" * 200}, True) == "x" * 200


def test_the_id_is_added_to_a_response_unless_the_application_set_it() -> None:
    ids = RequestIds("X-Trace")
    assert ids.key == "HTTP_X_TRACE"
    assert (
        ids.add_to(b"Content-Type: text/plain\r\n", "id1") == b"Content-Type: text/plain\r\nX-Trace: id1\r\n"
    )
    assert ids.add_to(b"x-trace: mine\r\n", "id1") == b"x-trace: mine\r\n"
    assert ids.add_to(b"X-Tracer: no\r\n", "id1") == b"X-Tracer: no\r\nX-Trace: id1\r\n"
    assert RequestIds(None).add_to(b"A: b\r\n", "id1") == b"A: b\r\n"  # the JSON log alone adds none


def test_error_log_records_are_json_objects_with_the_traceback() -> None:
    formatter = JSONFormatter()
    try:
        raise ValueError('bad "value"\n\x00')
    except ValueError:
        record = logging.LogRecord(
            "rapidwsgi.error", logging.ERROR, __file__, 1, "Error %s", ("x\n\xff",), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert ISO.fullmatch(doc["time"])
    assert (doc["level"], doc["message"]) == ("ERROR", "Error x\n\xff")
    assert doc["exc_info"].startswith("Traceback (most recent call last):")
    assert doc["exc_info"].endswith('ValueError: bad "value"\n\x00')
    assert ISO.fullmatch(iso_time(0.0))


# ---------------------------------------------------------------------- real servers


def _raw(server: ServerProcess, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with RawConnection(server.address) as conn:
        conn.send(data)
        response = conn.read_response()
        return response.status, {k.lower(): v for k, v in response.headers}, response.body


def _lines(path: Path, count: int) -> list[dict[str, Any]]:
    assert wait_until(lambda: path.exists() and path.read_text().count("\n") >= count, 10)
    text = path.read_text()
    assert text.isascii()
    return [json.loads(line) for line in text.splitlines()]


def test_hostile_requests_through_a_server_log_parseable_lines_with_their_ids(
    start_server: Start, tmp_path: Path
) -> None:
    log = tmp_path / "access.json"
    server = start_server(
        APP,
        "--access-logfile",
        str(log),
        "--access-logformat",
        "json",
        "--request-id-header",
        "X-Request-ID",
    )
    # Percent-encoded bytes decode into PATH_INFO: quote, backslash, NUL, LF, invalid UTF-8.
    target = b"/a%22b%5Cc%00d%0Ae%FF%FE?q=%22%01&r=\\"
    ua = b'agent "quoted" \\ \xff\xfe \xc3\xa9'
    status, headers, _ = _raw(
        server,
        b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nUser-Agent: " + ua + b"\r\nReferer: http://x/\"'\r\n"
        b"X-Request-ID: from-the-proxy\r\n\r\n",
    )
    assert status == 404
    assert headers["x-request-id"] == "from-the-proxy"  # loopback is a trusted peer by default
    status, headers, body = _raw(server, b"GET /hello HTTP/1.1\r\nHost: h\r\nX-Request-ID: has space\r\n\r\n")
    assert (status, body) == (200, b"hello")
    generated = headers["x-request-id"]
    assert HEX32.fullmatch(generated)
    first, second = _lines(log, 2)
    assert first["path"] == '/a"b\\c\x00d\ne\\xff\\xfe'
    assert first["query"] == "q=%22%01&r=\\"
    assert first["user_agent"] == 'agent "quoted" \\ \\xff\\xfe é'
    assert first["referer"] == "http://x/\"'"
    assert (first["method"], first["status"], first["bytes"], first["protocol"]) == (
        "GET",
        404,
        4,
        "HTTP/1.1",
    )
    assert first["request_id"] == "from-the-proxy"
    assert first["remote_addr"] == "127.0.0.1"
    assert (second["path"], second["status"], second["request_id"]) == ("/hello", 200, generated)
    assert 0 <= second["duration"] < 5


def test_an_untrusted_clients_id_is_replaced_and_the_json_log_alone_adds_no_header(
    start_server: Start, tmp_path: Path
) -> None:
    log = tmp_path / "access.json"
    server = start_server(
        APP, "--access-logfile", str(log), "--access-logformat", "json", "--forwarded-allow-ips", "10.9.9.9"
    )
    status, headers, _ = _raw(server, b"GET /hello HTTP/1.1\r\nHost: h\r\nX-Request-ID: forged\r\n\r\n")
    assert status == 200
    assert "x-request-id" not in headers  # no --request-id-header: the id is only logged
    (line,) = _lines(log, 1)
    assert HEX32.fullmatch(line["request_id"])


def test_error_log_json_lines_parse_including_an_application_traceback(start_server: Start) -> None:
    server = start_server(APP, "--error-log-format", "json")
    status, _, _ = _raw(server, b"GET /raise HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status == 500
    server.wait_for_log("the metrics test's exception")
    assert server.stop() == 0
    lines = server.stderr.splitlines()
    docs = [json.loads(line) for line in lines]  # every line
    assert {d["level"] for d in docs} <= {"INFO", "ERROR", "WARNING", "DEBUG", "CRITICAL"}
    (error,) = [d for d in docs if "exc_info" in d]
    assert error["message"] == "Error handling request GET /raise"
    assert error["exc_info"].endswith("RuntimeError: the metrics test's exception")
    assert any(d["message"].startswith("Listening at: http://127.0.0.1:") for d in docs)


def test_a_bad_request_id_header_name_is_a_usage_error(start_server: Start) -> None:
    server = start_server(APP, "--request-id-header", "X Bad", wait=False)
    assert server.wait() == 2
    assert "expected a header field name" in server.stderr
