"""The ``python -m rapidwsgi`` command: exit codes, binding, loading, logging and signals."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rapidwsgi import __version__
from tests.conftest import ROOT, TESTS, ServerProcess
from tests.rawhttp import RawConnection, RawResponse, get

Starter = type[ServerProcess]
_LOG_PREFIX = re.compile(r"^\[[^\]]+\] \[\d+\] \[[A-Z]+\] ")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    return env


def _run(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run the command to completion (for invocations that must exit by themselves)."""
    return subprocess.run(
        [sys.executable, "-m", "rapidwsgi", *args],
        cwd=TESTS,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _json(response: RawResponse) -> dict[str, object]:
    assert response.status == 200, response
    doc = json.loads(response.body)
    assert isinstance(doc, dict)
    return doc


def _fetch(address: tuple[str, int] | str, path: str, headers: str = "") -> RawResponse:
    with RawConnection(address) as conn:
        return conn.request(get(path, headers=headers))


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _exit_status_within(server: ServerProcess, seconds: float) -> int | None:
    try:
        return server.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary directory with a short path (unix socket paths are limited to ~107 bytes)."""
    return tmp_path_factory.mktemp("u")


# ------------------------------------------------------------------ exit codes


def test_version_flag_prints_the_package_version_and_exits_0() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rapidwsgi {__version__}"


def test_missing_application_is_a_usage_error_with_exit_status_2() -> None:
    result = _run("--bind", "127.0.0.1:0")
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "MODULE:APP" in result.stderr.splitlines()[-1]


def test_invalid_setting_exits_2_with_one_line_naming_the_flag() -> None:
    result = _run("--bind", "127.0.0.1:0", "--threads", "0", "apps:app")
    assert result.returncode == 2
    assert _error_lines(result.stderr) == ["rapidwsgi: error: --threads: must be > 0 (got 0)"]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "[ERROR]" in line or "[CRITICAL]" in line]


def test_unknown_module_exits_4_with_one_line_naming_the_module() -> None:
    result = _run("--bind", "127.0.0.1:0", "nosuchmodule:app")
    assert result.returncode == 4
    # The worker reports the import error in one line; the master says why it exits.
    naming = [line for line in _errors(result.stderr) if "'nosuchmodule'" in line]
    assert len(naming) == 1, result.stderr
    assert "cannot import module 'nosuchmodule'" in naming[0]
    assert "failed to load" in _errors(result.stderr)[-1]
    assert "Traceback" not in result.stderr


def test_application_raising_on_import_exits_4_with_message_and_traceback() -> None:
    result = _run("--bind", "127.0.0.1:0", "loader_fixtures.raises_on_import:app")
    assert result.returncode == 4
    first = _errors(result.stderr)[0]
    assert "error while importing 'loader_fixtures.raises_on_import'" in first
    assert "RuntimeError: fixture exploded while importing" in first
    assert "Traceback (most recent call last):" in result.stderr
    assert "raises_on_import.py" in result.stderr
    assert "_configure()" in result.stderr
    # Only the application's frames: not the loader's, not importlib's.
    assert "rapidwsgi" + os.sep + "loader.py" not in result.stderr
    assert "importlib" not in result.stderr
    assert "<frozen" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "abc"), "--workers: 'abc' is not an integer or 'auto'"),
        (("--threads", "four"), "--threads: 'four' is not an integer"),
        (("--keep-alive", "soon"), "--keep-alive: 'soon' is not a number"),
        (("--keep-alive", "-1"), "--keep-alive: must be >= 0 (got -1)"),
        (("--umask", "9z"), "--umask: '9z' is not an octal number such as 007"),
        (("--protocol", "h2"), "--protocol: unknown protocol 'h2'; expected one of http, uwsgi, fastcgi"),
        (
            ("--forwarded-allow-ips", "10.0.0.0/8,bogus"),
            "--forwarded-allow-ips: 'bogus' is not an address, a CIDR range, 'unix' or '*'",
        ),
    ],
)
def test_bad_values_are_one_line_naming_the_flag_and_the_value_once(
    args: tuple[str, str], message: str
) -> None:
    result = _run("--bind", "127.0.0.1:0", *args, "apps:app")
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [f"rapidwsgi: error: {message}"]


def test_bad_value_from_the_environment_names_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rapidwsgi", "apps:app"],
        cwd=TESTS,
        env={**_env(), "RAPIDWSGI_WORKERS": "abc"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [
        "rapidwsgi: error: RAPIDWSGI_WORKERS: 'abc' is not an integer or 'auto'"
    ]


def test_port_in_use_exits_5_with_address_already_in_use_on_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("--bind", f"127.0.0.1:{port}", "apps:app")
    assert result.returncode == 5
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Address already in use" in lines[0]
    assert str(port) in lines[0]


# ------------------------------------------------------------------ binding


def test_unix_socket_gets_the_umask_mode_and_serves_requests(start_server: Starter, short_dir: Path) -> None:
    path = short_dir / "s.sock"
    server = start_server("apps:app", "--umask", "007", bind=f"unix:{path}")
    assert server.address == str(path)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o770
    response = _fetch(str(path), "/hello")
    assert (response.status, response.body) == (200, b"Hello, world!")


def test_stale_unix_socket_file_is_replaced(start_server: Starter, short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))  # closed without unlinking: nobody listens on it any more
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    server = start_server("apps:app", bind=f"unix:{path}")
    response = _fetch(server.address, "/hello")
    assert response.body == b"Hello, world!"


def test_unix_socket_with_a_live_listener_is_refused(short_dir: Path) -> None:
    path = short_dir / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        result = _run("--bind", f"unix:{path}", "apps:app")
    assert result.returncode == 5
    assert "Address already in use" in result.stderr


def test_regular_file_at_the_unix_socket_path_is_refused_and_left_alone(short_dir: Path) -> None:
    path = short_dir / "data.txt"
    path.write_text("precious")
    result = _run("--bind", f"unix:{path}", "apps:app")
    assert result.returncode == 5
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "not a socket" in lines[0]
    assert path.read_text() == "precious"


@contextlib.contextmanager
def _serve_inherited(listener: socket.socket) -> Iterator[subprocess.Popen[bytes]]:
    fd = listener.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rapidwsgi", "--bind", f"fd://{fd}", "apps:app"],
        cwd=TESTS,
        env=_env(),
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_inherited_listening_socket_is_served_via_fd_url() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with _serve_inherited(listener) as proc:
            assert proc.stderr is not None
            lines: list[str] = []
            deadline = time.monotonic() + 15
            while not any("Listening at" in line for line in lines) and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stderr], [], [], 1)
                if ready:
                    lines.append(proc.stderr.readline().decode())
            listening = next(line for line in lines if "Listening at" in line)
            assert f"Listening at: http://127.0.0.1:{port} " in listening
            response = _fetch(("127.0.0.1", port), "/hello")
            assert response.body == b"Hello, world!"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_bind_with_port_0_serves_requests(start_server: Starter) -> None:
    server = start_server("apps:app", bind="[::1]:0")
    address = server.address
    assert isinstance(address, tuple)
    assert address[0] == "::1"
    assert address[1] != 0
    doc = _json(_fetch(address, "/echo"))
    assert doc["SERVER_NAME"] == "::1"
    assert doc["REMOTE_ADDR"] == "::1"


def test_listening_log_line_names_the_real_port_when_binding_port_0(start_server: Starter) -> None:
    server = start_server("apps:app", bind="127.0.0.1:0")
    match = server.wait_for_log(r"Listening at: http://127\.0\.0\.1:(\d+) \((\d+)\)")
    port, pid = int(match.group(1)), int(match.group(2))
    assert port != 0
    assert pid == server.proc.pid
    assert _fetch(("127.0.0.1", port), "/hello").body == b"Hello, world!"


# ------------------------------------------------------------------ application loading


def test_chdir_changes_directory_and_makes_its_modules_importable(
    start_server: Starter, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "chdir_app.py").write_text(
        textwrap.dedent(
            """\
            import json
            import os

            def app(environ, start_response):
                body = json.dumps({"cwd": os.getcwd()}).encode()
                start_response("200 OK", [("Content-Type", "application/json")])
                return [body]
            """
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server = start_server("chdir_app:app", "--chdir", str(site), cwd=elsewhere)
    assert _json(_fetch(server.address, "/"))["cwd"] == str(site)


def test_pythonpath_directories_are_all_importable(start_server: Starter, tmp_path: Path) -> None:
    first, second = tmp_path / "lib1", tmp_path / "lib2"
    first.mkdir()
    second.mkdir()
    (second / "pp_helper.py").write_text("GREETING = b'from lib2'\n")
    (first / "pp_app.py").write_text(
        textwrap.dedent(
            """\
            from pp_helper import GREETING

            def app(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [GREETING]
            """
        )
    )
    server = start_server("pp_app:app", "--pythonpath", f"{first},{second}", cwd=tmp_path)
    assert _fetch(server.address, "/").body == b"from lib2"


def test_factory_call_in_the_app_spec_builds_the_application(start_server: Starter) -> None:
    server = start_server("loader_fixtures.named:create_app('cli', n=3)")
    assert _json(_fetch(server.address, "/")) == {"label": "cli", "n": 3, "name": "factory"}


def test_threads_from_the_environment_make_wsgi_multithread_true(start_server: Starter) -> None:
    default = start_server("apps:app")
    assert _json(_fetch(default.address, "/echo"))["wsgi.multithread"] is False
    threaded = start_server("apps:app", env={"RAPIDWSGI_THREADS": "4"})
    assert _json(_fetch(threaded.address, "/echo"))["wsgi.multithread"] is True
    assert "4 application threads" in threaded.stderr


# ------------------------------------------------------------------ access log


def test_access_log_to_stdout_writes_combined_format_lines(start_server: Starter) -> None:
    server = start_server("apps:app", "--access-logfile", "-")
    _fetch(server.address, "/hello?x=1", headers="Referer: http://ref.example/\r\nUser-Agent: agent/1.0\r\n")
    _fetch(server.address, "/missing")
    line = server.wait_for_log(r".*GET /hello.*\n", stream="stdout").group(0)
    assert re.fullmatch(
        r"127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"GET /hello\?x=1 HTTP/1\.1" 200 13 "http://ref\.example/" "agent/1\.0"\n',
        line,
    ), line
    missing = server.wait_for_log(r".*GET /missing.*\n", stream="stdout").group(0)
    assert '"GET /missing HTTP/1.1" 404 ' in missing
    assert missing.endswith('"-" "-"\n')


def test_access_log_escapes_quotes_and_control_characters_in_the_user_agent(start_server: Starter) -> None:
    server = start_server("apps:app", "--access-logfile", "-")
    # HTAB is the one control character a field value may contain (RFC 9110 §5.5).
    response = _fetch(server.address, "/hello", headers='User-Agent: evil\t"agent" \\ end\r\n')
    assert response.status == 200
    line = server.wait_for_log(r".*GET /hello.*\n", stream="stdout").group(0)
    assert line.endswith('"-" "evil\\x09\\"agent\\" \\\\ end"\n'), line
    assert "\t" not in line


def test_access_log_never_contains_a_raw_escape_byte_from_the_user_agent(start_server: Starter) -> None:
    server = start_server("apps:app", "--access-logfile", "-")
    with RawConnection(server.address) as conn:
        response = conn.request(get("/hello", headers='User-Agent: x\x1b[31m"red"\r\n'))
    # The strict parser may refuse the control byte (400); if it logs, it must escape it.
    assert response.status in (200, 400)
    _fetch(server.address, "/hello?after=1")
    server.wait_for_log(r"after=1", stream="stdout")
    assert "\x1b" not in server.stdout
    if response.status == 200:
        assert '\\x1b[31m\\"red\\"' in server.stdout


def test_access_log_escapes_percent_decoded_control_bytes_in_the_path(start_server: Starter) -> None:
    server = start_server("apps:app", "--access-logfile", "-", "--access-logformat", "%(U)s|%(r)s")
    assert _fetch(server.address, "/echo/%1b%22x").status == 200
    line = server.wait_for_log(r"/echo.*\n", stream="stdout").group(0)
    assert line == '/echo/\\x1b\\"x|GET /echo/%1b%22x HTTP/1.1\n'


def test_access_log_escapes_c1_control_characters_that_could_split_lines(start_server: Starter) -> None:
    server = start_server("apps:app", "--access-logfile", "-", "--access-logformat", "%(s)s %(a)s")
    # obs-text bytes are legal in field values; 0x85 (NEL) and 0x9b (CSI) are C1 controls.
    with RawConnection(server.address) as conn:
        conn.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nUser-Agent: a\x85b\x9bc\r\n\r\n")
        assert conn.read_response().status == 200
    line = server.wait_for_log(r"200 .*\n", stream="stdout").group(0)
    assert len(line.splitlines()) == 1, repr(line)
    assert not re.search("[\x80-\x9f]", line), repr(line)


def test_custom_access_log_format_renders_the_requested_atoms(start_server: Starter) -> None:
    server = start_server(
        "apps:app", "--threads", "4", "--access-logfile", "-", "--access-logformat", "%(m)s %(U)s %(s)s %(D)s"
    )
    _fetch(server.address, "/hello?q=1")
    line = server.wait_for_log(r"GET /hello .*\n", stream="stdout").group(0)
    assert re.fullmatch(r"GET /hello 200 \d+\n", line), line


def test_access_log_can_be_written_to_a_file(start_server: Starter, tmp_path: Path) -> None:
    logfile = tmp_path / "access.log"
    server = start_server("apps:app", "--access-logfile", str(logfile))
    _fetch(server.address, "/hello")
    _fetch(server.address, "/echo")
    deadline = time.monotonic() + 10
    while logfile.read_text().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = logfile.read_text().splitlines()
    assert len(lines) == 2
    assert '"GET /hello HTTP/1.1" 200 13' in lines[0]
    assert '"GET /echo HTTP/1.1" 200 ' in lines[1]
    assert "GET /hello" not in server.stdout


# ------------------------------------------------------------------ HTTP settings


def test_root_path_sets_script_name_and_strips_it_from_path_info(start_server: Starter) -> None:
    server = start_server("apps:app", "--root-path", "/app")
    mounted = _json(_fetch(server.address, "/app/echo/x?y=1"))
    assert mounted["SCRIPT_NAME"] == "/app"
    assert mounted["PATH_INFO"] == "/echo/x"
    assert mounted["QUERY_STRING"] == "y=1"
    assert mounted["RAW_URI"] == "/app/echo/x?y=1"
    # A path that merely starts with the same letters is not under the prefix.
    other = _fetch(server.address, "/application")
    assert other.status == 404
    assert json.loads(other.body) == {"path": "/application"}


def test_server_and_date_headers_are_sent_by_default(start_server: Starter) -> None:
    server = start_server("apps:app")
    response = _fetch(server.address, "/hello")
    assert response.header("Server") == "rapidwsgi"
    date = response.header("Date")
    assert date is not None
    assert date.endswith(" GMT")


def test_no_server_header_and_no_date_header_flags_suppress_them(start_server: Starter) -> None:
    server = start_server("apps:app", "--no-server-header", "--no-date-header")
    response = _fetch(server.address, "/hello")
    assert response.status == 200
    assert response.header("Server") is None
    assert response.header("Date") is None
    # The application's own headers still go through.
    custom = _fetch(server.address, "/server-header")
    assert custom.header("Server") == "custom/1.0"
    assert custom.header("Date") == "Thu, 01 Jan 1970 00:00:00 GMT"


# ------------------------------------------------------------------ signals


def _start_slow_request(server: ServerProcess, seconds: float) -> RawConnection:
    conn = RawConnection(server.address, timeout=20)
    conn.send(get(f"/sleep?seconds={seconds}"))
    time.sleep(0.5)  # let the application thread pick it up
    return conn


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_signal_lets_the_in_flight_request_finish_then_exits_0(
    start_server: Starter, signum: int
) -> None:
    server = start_server("apps:app", "--threads", "4", "--graceful-timeout", "10")
    with _start_slow_request(server, 2) as conn:
        server.signal(signum)
        server.wait_for_log(rf"Shutting down \({signal.Signals(signum).name}\)")
        response = conn.read_response()
        assert (response.status, response.body) == (200, b"slept")
        assert response.header("Connection") == "close"
        assert conn.is_closed(wait=5)
    assert _exit_status_within(server, 10) == 0
    assert "Traceback" not in server.stderr


def test_sigterm_stops_accepting_new_connections_while_draining(start_server: Starter) -> None:
    server = start_server("apps:app", "--threads", "4")
    address = server.address
    assert isinstance(address, tuple)
    with _start_slow_request(server, 1.5) as conn:
        server.signal(signal.SIGTERM)
        server.wait_for_log(r"Shutting down \(SIGTERM\)")
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5).close()
        assert conn.read_response().status == 200
    assert _exit_status_within(server, 10) == 0


def test_sigterm_closes_an_idle_keep_alive_connection_with_a_clean_eof(start_server: Starter) -> None:
    server = start_server("apps:app", "--keep-alive", "30")
    sock = socket.create_connection(server.address, timeout=10)  # type: ignore[arg-type]
    try:
        sock.sendall(get("/hello"))
        received = b""
        while not received.endswith(b"Hello, world!"):
            received += sock.recv(65536)
        server.signal(signal.SIGTERM)
        try:
            tail = sock.recv(65536)
        except ConnectionResetError:
            pytest.fail("idle keep-alive connection was reset instead of closed")
        assert tail == b""
    finally:
        sock.close()
    assert _exit_status_within(server, 10) == 0


def test_sigquit_exits_immediately_without_waiting_for_the_application(start_server: Starter) -> None:
    server = start_server("apps:app", "--threads", "4", "--graceful-timeout", "30")
    with _start_slow_request(server, 6) as conn:
        server.signal(signal.SIGQUIT)
        assert conn.is_closed(wait=3), "the in-flight connection was not dropped"
        assert _exit_status_within(server, 3) is not None, "SIGQUIT did not stop the process promptly"


def test_sigterm_exits_once_the_graceful_timeout_expires_with_a_request_still_running(
    start_server: Starter,
) -> None:
    server = start_server("apps:app", "--threads", "4", "--graceful-timeout", "0.5")
    with _start_slow_request(server, 6) as conn:
        server.signal(signal.SIGTERM)
        assert conn.is_closed(wait=4), "the unfinished connection was not dropped"
        assert _exit_status_within(server, 3) == 0, "the process outlived its graceful timeout"


def _soft_open_files_limit_64() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))


def test_soft_open_files_limit_is_raised_so_more_clients_than_it_allows_are_served(
    start_server: Starter,
) -> None:
    """Started with a soft limit of 64 descriptors (hard 4096), the server still serves 300
    concurrent connections: it raises its soft limit to the hard one at start."""
    server = start_server("apps:app", preexec_fn=_soft_open_files_limit_64)
    host, port = server.address  # type: ignore[misc]
    conns = [socket.create_connection((host, port), timeout=10) for _ in range(300)]
    try:
        for conn in conns:  # every connection is open at once before any request
            conn.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [conn.recv(4096) for conn in conns]
    finally:
        for conn in conns:
            conn.close()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    with open(f"/proc/{server.worker_pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"]


def test_help_exits_0_and_lists_every_setting_with_its_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rapidwsgi", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for flag in ("--bind", "--workers", "--access-logformat", "--certfile", "--forwarded-allow-ips"):
        assert flag in result.stdout
    assert "%(h)s" in result.stdout  # the access-log atoms are shown as written, not expanded
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for default in (
        "(default: 127.0.0.1:8000)",
        "(default: 1)",
        "(default: 5)",
        "(default: 10)",
        "(default: x-forwarded-for, x-forwarded-proto, x-forwarded-host)",
        "(default: 0o0)",
    ):
        assert default in text, default
