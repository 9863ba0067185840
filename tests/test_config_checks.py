"""``--check-config``, ``--print-config``, ``--reload-extra-files`` and
``--reload-include``: exact output and exit statuses of the real command, and the
reloader's changes for extra files and globs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rapidwsgi.config import Config
from rapidwsgi.errors import ConfigError
from rapidwsgi.reloader import Reloader
from tests.conftest import SOURCE_MODE, SRC, TESTS, ServerProcess
from tests.rawhttp import RawConnection, get, wait_until

Start = type[ServerProcess]


def rapidwsgi(
    *args: str, env: dict[str, str] | None = None, cwd: Path = TESTS
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("RAPIDWSGI_") or k == "RAPIDWSGI_NO_C"
    }
    paths = [str(TESTS), str(SRC) if SOURCE_MODE else ""]
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "rapidwsgi", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------- --check-config


def test_check_config_imports_the_app_binds_nothing_and_says_ok() -> None:
    # A port we hold: serving would fail with "address in use"; checking binds nothing.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = rapidwsgi("--check-config", "--bind", f"127.0.0.1:{port}", "--threads", "4", "apps:app")
    assert (done.returncode, done.stdout) == (0, "rapidwsgi: configuration OK\n")
    assert "Listening" not in done.stderr and "Booting" not in done.stderr


def test_check_config_of_an_app_that_does_not_import_exits_4_with_its_error() -> None:
    done = rapidwsgi("--check-config", "no_such_module_here:app")
    assert done.returncode == 4
    assert done.stdout == ""
    assert "No module named 'no_such_module_here'" in done.stderr.splitlines()[0]


def test_check_config_of_a_bad_setting_exits_2_with_one_line() -> None:
    done = rapidwsgi("--check-config", "--workers", "many", "apps:app")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "rapidwsgi: error: --workers: 'many' is not an integer or 'auto'\n"


def test_check_config_of_a_missing_static_directory_exits_2(tmp_path: Path) -> None:
    done = rapidwsgi("--check-config", "--static", f"/s/={tmp_path / 'nope'}", "apps:app")
    assert done.returncode == 2 and done.stdout == ""
    assert "nope" in done.stderr


# ---------------------------------------------------------------------- --print-config


def test_print_config_shows_every_setting_with_where_it_came_from(tmp_path: Path) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 3\nthreads = 2\ndef on_exit(server):\n    pass\n")
    done = rapidwsgi("--print-config", "-c", str(conf), "--threads", "8", env={"RAPIDWSGI_KEEP_ALIVE": "7"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "workers = 3  # file" in lines
    assert "threads = 8  # cli" in lines  # the command line wins over the file
    assert "keep_alive = 7.0  # env" in lines
    assert "backlog = 2048  # default" in lines
    assert "app = None  # default" in lines
    assert "on_exit = <function on_exit>  # file" in lines
    assert f"config = {str(conf)!r}  # cli" in lines
    import dataclasses

    assert [line.split(" = ")[0] for line in lines] == [f.name for f in dataclasses.fields(Config)]


def test_load_with_sources_names_the_highest_layer(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[rapidwsgi]\nworkers = 2\nkeep-alive = 9\n")
    config, sources = Config.load_with_sources(
        ["-c", str(conf), "app:app"], environ={"RAPIDWSGI_WORKERS": "5"}
    )
    assert (config.workers, sources["workers"]) == (5, "env")
    assert (config.keep_alive, sources["keep_alive"]) == (9, "file")
    assert (config.app, sources["app"]) == ("app:app", "cli")
    assert sources["threads"] == "default"


# ---------------------------------------------------------------------- reload extras


def test_reload_extras_need_reload() -> None:
    with pytest.raises(ConfigError, match="^--reload-extra-files and --reload-include need --reload$"):
        Config.load(["--reload-include", "*.html", "app:app"], environ={})


def _config(root: Path, *args: str) -> Config:
    return Config.load(["--reload", "--chdir", str(root), *args, "app:app"], environ={})


def _changes(reloader: Reloader, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = reloader.changes()
        if found:
            return found
        time.sleep(0.05)
    return []


@pytest.fixture
def stat_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stat() scan (watchfiles made unimportable)."""
    monkeypatch.setitem(sys.modules, "watchfiles", None)


def test_reloader_sees_include_globs_and_extra_files_and_ignores_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stat_backend: None
) -> None:
    root = tmp_path / "project"
    (root / "templates" / "blog").mkdir(parents=True)
    page = root / "templates" / "blog" / "post.html"
    page.write_text("v1")
    notes = root / "notes.txt"
    notes.write_text("v1")
    outside = tmp_path / "settings.ini"
    outside.write_text("v1")
    monkeypatch.chdir(root)
    reloader = Reloader(_config(root, "--reload-include", "*.html", "--reload-extra-files", str(outside)))
    assert reloader.changes() == []
    time.sleep(0.01)
    page.write_text("v2")
    os.utime(page, (time.time() + 5, time.time() + 5))
    assert _changes(reloader) == [os.path.join("templates", "blog", "post.html")]
    notes.write_text("v2")  # neither .py nor included
    os.utime(notes, (time.time() + 5, time.time() + 5))
    assert reloader.changes() == []
    outside.write_text("v2")
    os.utime(outside, (time.time() + 5, time.time() + 5))
    assert _changes(reloader) == [str(outside)]
    outside.unlink()  # a deleted extra file is a change too
    assert _changes(reloader) == [str(outside)]
    reloader.close()


def test_a_template_change_reloads_a_real_server(start_server: Start, tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text("<p>v1</p>")
    (tmp_path / "tplsite.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    body = open('page.html', 'rb').read() + b' ' + str(os.getpid()).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    server = start_server("tplsite:app", "--reload", "--reload-include", "*.html", cwd=tmp_path)

    def body() -> bytes:
        with RawConnection(server.address) as conn:
            return conn.request(get("/")).body

    first = body()
    assert first.startswith(b"<p>v1</p> ")
    (tmp_path / "page.html").write_text("<p>v2</p>")
    assert wait_until(
        lambda: body().startswith(b"<p>v2</p> ") and body().split()[-1] != first.split()[-1], 15.0
    )
    assert "page.html" in server.stderr
