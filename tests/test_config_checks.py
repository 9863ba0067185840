"""``--check-config``, ``--print-config`` and ``--reload-extra-files`` / ``--reload-include``.

The command-line checks run ``python -m rapidwsgi`` to completion; the reloader is
tested in-process with both backends (watchfiles, and the stat() scan with watchfiles
made unimportable) and end to end through a real server on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rapidwsgi.config import Config
from rapidwsgi.errors import ConfigError
from rapidwsgi.reloader import Reloader, glob_regex
from tests.conftest import SRC, TESTS, ServerProcess
from tests.rawhttp import RawConnection, get

Starter = type[ServerProcess]
FIELD_NAMES = [f.name for f in dataclasses.fields(Config)]


def _run(
    *args: str, cwd: Path = TESTS, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RAPIDWSGI_")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(SRC)])
    return subprocess.run(
        [sys.executable, "-m", "rapidwsgi", *args],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def held_port() -> Iterator[int]:
    """A 127.0.0.1 port this test listens on: a server that binds it fails with EADDRINUSE."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# ------------------------------------------------------------------ --check-config


def test_check_config_of_a_good_app_prints_one_line_and_binds_nothing(held_port: int) -> None:
    result = _run("--check-config", "--bind", f"127.0.0.1:{held_port}", "apps:app")
    assert (result.returncode, result.stdout, result.stderr) == (0, "rapidwsgi: configuration OK\n", "")


def test_the_held_port_really_makes_a_server_fail(held_port: int) -> None:
    # The control experiment of the test above: binding that port is an error (exit 5).
    result = _run("--bind", f"127.0.0.1:{held_port}", "apps:app")
    assert result.returncode == 5
    assert "Address already in use" in result.stderr


def test_check_config_of_an_unimportable_app_exits_4_with_one_line(held_port: int) -> None:
    result = _run("--check-config", "--bind", f"127.0.0.1:{held_port}", "nosuchmodule:app")
    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "rapidwsgi: error: cannot import module 'nosuchmodule': No module named 'nosuchmodule' "
        f"(sys.path[0] is {str(TESTS)!r})"
    ]


def test_check_config_of_an_app_raising_on_import_adds_its_traceback() -> None:
    result = _run("--check-config", "loader_fixtures.raises_on_import:app")
    assert result.returncode == 4
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "rapidwsgi: error: error while importing 'loader_fixtures.raises_on_import': "
        "RuntimeError: fixture exploded while importing"
    )
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: fixture exploded while importing"
    assert "rapidwsgi" + os.sep + "loader.py" not in result.stderr


def test_check_config_imports_the_app_from_chdir_as_a_worker_would(tmp_path: Path) -> None:
    (tmp_path / "onlyhere.py").write_text("def app(environ, start_response):\n    return [b'']\n")
    result = _run("--check-config", "--chdir", str(tmp_path), "onlyhere:app")
    assert (result.returncode, result.stdout, result.stderr) == (0, "rapidwsgi: configuration OK\n", "")
    assert _run("--check-config", "onlyhere:app").returncode == 4  # not importable from tests/


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--certfile", "/nonexistent/cert.pem"),
            "--certfile /nonexistent/cert.pem: cannot load the certificate and key: "
            "No such file or directory",
        ),
        (
            ("--static", "/s/=/nonexistent/dir"),
            "static mount '/s/=/nonexistent/dir': '/nonexistent/dir' is not a directory",
        ),
        (("--chdir", "/nonexistent"), "cannot change directory to '/nonexistent': No such file or directory"),
        (("--user", "no-such-user-x"), "unknown user or group: getpwnam(): name not found: 'no-such-user-x'"),
        ((), "the application (MODULE:APP) is required"),
    ],
)
def test_check_config_reports_what_the_server_checks_before_binding(
    args: tuple[str, ...], message: str
) -> None:
    app = () if not args else ("apps:app",)
    result = _run("--check-config", *args, *app)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"rapidwsgi: error: {message}"


def test_check_config_of_a_malformed_bind_address_exits_5() -> None:
    result = _run("--check-config", "--bind", "127.0.0.1:notaport", "apps:app")
    assert result.returncode == 5
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("rapidwsgi: error: ")


# ------------------------------------------------------------------ --print-config


@pytest.mark.parametrize(("name", "text"), [("conf.py", "threads = 2\n"), ("conf.toml", "threads = 2\n")])
def test_print_config_names_every_setting_with_its_value_and_source(
    tmp_path: Path, name: str, text: str
) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    result = _run("--print-config", "--config", str(cfg), "-w", "4", env={"RAPIDWSGI_KEEP_ALIVE": "8"})
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert [line.split(" = ", 1)[0] for line in lines] == FIELD_NAMES  # every one, in table order
    assert "threads = 2  # file" in lines
    assert "keep_alive = 8.0  # env" in lines
    assert "workers = 4  # cli" in lines
    assert "backlog = 2048  # default" in lines
    assert "app = None  # default" in lines
    assert f"config = {str(cfg)!r}  # cli" in lines
    assert "bind = ['127.0.0.1:8000']  # default" in lines
    assert "print_config = True  # cli" in lines


def test_print_config_does_not_serve_or_need_the_app(held_port: int) -> None:
    result = _run("--print-config", "--bind", f"127.0.0.1:{held_port}", "apps:app")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == "app = 'apps:app'  # cli"
    assert f"bind = ['127.0.0.1:{held_port}']  # cli" in lines


def test_load_with_sources_names_the_layer_that_won(tmp_path: Path) -> None:
    cfg = tmp_path / "conf.py"
    cfg.write_text("threads = 2\nbacklog = 100\nbind = 'unix:/from-file.sock'\n")
    config, sources = Config.load_with_sources(
        ["--config", str(cfg), "--backlog", "7"], environ={"RAPIDWSGI_THREADS": "3"}
    )
    assert (config.threads, config.backlog, config.bind) == (3, 7, ["unix:/from-file.sock"])
    assert (sources["threads"], sources["backlog"], sources["bind"]) == ("env", "cli", "file")
    assert sources["keep_alive"] == "default"
    assert set(sources) == set(FIELD_NAMES)
    assert (
        Config.load(["--config", str(cfg)], environ={})
        == Config.load_with_sources(["--config", str(cfg)], {})[0]
    )


# ------------------------------------------------------------------ reload options: validation


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reload-include", "*.html"], "--reload-include needs --reload (nothing is watched without it)"),
        (
            ["--reload-extra-file", "a.toml"],
            "--reload-extra-files needs --reload (nothing is watched without it)",
        ),
        (
            ["--reload-extra-files", "a,b", "--reload-include", "*.txt"],
            "--reload-extra-files and --reload-include need --reload (nothing is watched without it)",
        ),
        (
            ["--reload", "--reload-include", ""],
            "--reload-include: an empty pattern names nothing; give e.g. *.html",
        ),
        (
            ["--reload", "--reload-include", "  "],
            "--reload-include: an empty pattern names nothing; give e.g. *.html",
        ),
    ],
)
def test_reload_options_are_validated(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.load(argv, environ={})
    assert str(info.value) == message


def test_reload_extra_file_alias_and_comma_lists_accumulate() -> None:
    config = Config.load(
        [
            "--reload",
            "--reload-extra-file",
            "a.toml",
            "--reload-extra-files",
            "b.yaml,c.ini",
            "--reload-include",
            "*.html",
            "--reload-include",
            "*.txt",
        ],
        environ={},
    )
    assert config.reload_extra_files == ["a.toml", "b.yaml", "c.ini"]
    assert config.reload_include == ["*.html", "*.txt"]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.html", "page.html", True),
        ("*.html", "templates/deep/page.html", True),  # no slash: the name at any depth
        ("*.html", "page.htm", False),
        ("templates/**/*.txt", "templates/a.txt", True),
        ("templates/**/*.txt", "templates/x/y/a.txt", True),
        ("templates/**/*.txt", "other/templates/a.txt", False),
        ("templates/*.txt", "templates/x/a.txt", False),  # * never crosses a slash
        ("./conf/?.ini", "conf/a.ini", True),
        ("conf/?.ini", "conf/ab.ini", False),
        ("data/[!_]*.json", "data/x.json", True),
        ("data/[!_]*.json", "data/_x.json", False),
        ("static/**", "static/css/site.css", True),
    ],
)
def test_include_globs_match_paths_relative_to_the_root(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


# ------------------------------------------------------------------ Reloader.changes, both backends


@pytest.fixture(params=["stat", "watchfiles"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "stat":
        monkeypatch.setitem(sys.modules, "watchfiles", None)  # import watchfiles -> ImportError
    else:
        pytest.importorskip("watchfiles")
    return str(request.param)


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    project = tmp_path / "project"
    (project / "templates").mkdir(parents=True)
    (project / "node_modules").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(project)  # the watched root
    return project, outside


def _changes_until(reloader: Reloader, expected: set[str], timeout: float = 10.0) -> set[str]:
    """Every change reported until ``expected`` has been (or ``timeout`` seconds pass)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        seen.update(reloader.changes())
        if expected <= seen or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def _bump(path: Path, text: str) -> None:
    """Modify ``path`` with an mtime surely different from the last one (coarse clocks)."""
    before = path.stat().st_mtime
    path.write_text(text)
    os.utime(path, (before + 5, before + 5))


def _ready(reloader: Reloader, path: Path, reported: str, backend: str) -> None:
    """watchfiles watches from a thread: wait until it reports a change to ``path``
    (as ``reported``), then drain what it reported."""
    if backend == "stat":
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        path.write_text(str(time.monotonic()))
        if reported in _changes_until(reloader, {reported}, timeout=0.5):
            time.sleep(0.3)
            reloader.changes()
            return
    raise AssertionError("watchfiles never reported a change")


def test_include_glob_changes_are_reported_and_other_files_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    project, _ = _project(tmp_path, monkeypatch)
    config = Config.from_values({"reload": True, "reload_include": ["*.html"]})
    reloader = Reloader(config)
    try:
        _ready(reloader, project / "sentinel.py", "sentinel.py", backend)
        assert reloader.changes() == []
        (project / "notes.txt").write_text("not watched")
        (project / "node_modules" / "skipped.html").write_text("skipped directory")
        page = project / "templates" / "page.html"
        page.write_text("<p>created</p>")
        assert _changes_until(reloader, {"templates/page.html"}) == {"templates/page.html"}
        _bump(page, "<p>modified</p>")
        assert _changes_until(reloader, {"templates/page.html"}) == {"templates/page.html"}
        page.unlink()
        assert _changes_until(reloader, {"templates/page.html"}) == {"templates/page.html"}
        (project / "app.py").write_text("# .py files are still watched\n")
        assert _changes_until(reloader, {"app.py"}) == {"app.py"}
    finally:
        reloader.close()


def test_extra_file_outside_the_roots_is_watched_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    project, outside = _project(tmp_path, monkeypatch)
    extra = outside / "settings.toml"
    extra.write_text("a = 1\n")
    (outside / "neighbour.toml").write_text("b = 1\n")
    inside = project / "templates" / "base.txt"
    config = Config.from_values(
        {"reload": True, "reload_extra_files": [str(extra), os.path.join("templates", "base.txt")]}
    )
    reloader = Reloader(config)
    try:
        _ready(reloader, project / "sentinel.py", "sentinel.py", backend)
        _ready(reloader, extra, str(extra), backend)  # its own (non-recursive) watcher
        assert reloader.changes() == []
        (outside / "neighbour.toml").write_text("b = 2\n")  # the same directory, not asked for
        _bump(extra, "a = 2\n")
        assert _changes_until(reloader, {str(extra)}) == {str(extra)}
        extra.unlink()
        assert _changes_until(reloader, {str(extra)}) == {str(extra)}
        inside.write_text("created: a relative extra file, in the root\n")
        assert _changes_until(reloader, {"templates/base.txt"}) == {"templates/base.txt"}
    finally:
        reloader.close()


def test_an_absent_extra_file_that_appears_is_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    _, outside = _project(tmp_path, monkeypatch)
    extra = outside / "later.toml"
    reloader = Reloader(Config.from_values({"reload": True, "reload_extra_files": [str(extra)]}))
    assert reloader.changes() == []
    extra.write_text("x = 1\n")
    assert reloader.changes() == [str(extra)]
    assert reloader.changes() == []


# ------------------------------------------------------------------ end to end


PIDAPP = """\
import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


def _pid_of(server: ServerProcess) -> int:
    with RawConnection(server.address, timeout=5) as conn:
        response = conn.request(get("/"))
    assert response.status == 200
    return int(response.body)


@pytest.mark.parametrize("reloader_backend", ["stat", "watchfiles"])
def test_touching_an_included_html_file_reloads_a_real_server(
    tmp_path: Path, start_server: Starter, reloader_backend: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pidapp.py").write_text(PIDAPP)
    page = project / "page.html"
    page.write_text("<p>1</p>")
    env: dict[str, str] = {}
    if reloader_backend == "stat":
        blocker = tmp_path / "no-watchfiles" / "watchfiles"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('watchfiles disabled by the test')\n")
        env["PYTHONPATH"] = str(blocker.parent)
    else:
        pytest.importorskip("watchfiles")
    server = start_server("pidapp:app", "--reload", "--reload-include", "*.html", cwd=project, env=env)
    shown = "watchfiles" if reloader_backend == "watchfiles" else "a stat() scan once a second"
    server.wait_for_log(re.escape(f"Reloading on changes ({shown})"))
    first = _pid_of(server)
    (project / "notes.txt").write_text("not watched\n")
    time.sleep(1.5)  # a scan (once a second) or a watchfiles batch later: no reload for it
    assert _pid_of(server) == first
    deadline = time.monotonic() + 30
    pid = first
    while pid == first and time.monotonic() < deadline:
        page.write_text(f"<p>{time.monotonic()}</p>")
        changed = time.monotonic() + 5
        while pid == first and time.monotonic() < changed:
            time.sleep(0.1)
            pid = _pid_of(server)
    assert pid != first, server.stderr[-2000:]
    server.wait_for_log(r"Changed: page\.html; reloading")
    assert "notes.txt" not in server.stderr
