"""The settings table (CLI, environment, config files, docs), bind addresses and app loading.

Everything here runs in-process: no server is started.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from rapidwsgi.config import Config, build_parser, settings_markdown, values_from_env, values_from_file
from rapidwsgi.errors import AppLoadError, BindError, ConfigError
from rapidwsgi.loader import load_app
from rapidwsgi.sockets import DEFAULT_PORT, parse_address
from tests.conftest import ROOT
from tests.loader_fixtures import named

#: The settings with a flag and a variable (the server hooks are a config file's functions:
#: tests/test_hooks.py).
FIELDS = tuple(f for f in dataclasses.fields(Config) if not f.metadata["hook"])
HOOK_FIELDS = tuple(f for f in dataclasses.fields(Config) if f.metadata["hook"])
FIXTURES = "tests.loader_fixtures"


def _flag(f: dataclasses.Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def _sample(f: dataclasses.Field[Any]) -> tuple[str, Any]:
    """A valid textual value for ``f`` and the typed value it must parse to."""
    by_name: dict[str, tuple[str, Any]] = {
        "loop": ("asyncio", "asyncio"),
        "log_level": ("debug", "debug"),
        "umask": ("027", 0o27),
        "bind": ("unix:/run/app.sock", ["unix:/run/app.sock"]),
        "protocol": ("uwsgi", ["uwsgi"]),
        "forwarded_allow_ips": ("10.0.0.0/8,unix", ["10.0.0.0/8", "unix"]),
        "trusted_proxy_headers": ("x-real-ip,forwarded", ["x-real-ip", "forwarded"]),
        "cert_reqs": ("2", "required"),  # gunicorn's number, parsed to the name
        "static": ("/static/=/srv/static", ["/static/=/srv/static"]),
        "static_sendfile": ("off", "off"),
        "metrics_bind": ("unix:/run/metrics.sock", "unix:/run/metrics.sock"),
        "statsd_host": ("127.0.0.1:8125", "127.0.0.1:8125"),
        "error_log_format": ("json", "json"),
        "request_id_header": ("X-Request-ID", "X-Request-ID"),
        "health_path": ("/healthz", "/healthz"),
        "reload_extra_files": ("settings.ini,templates/base.html", ["settings.ini", "templates/base.html"]),
        "reload_include": ("*.html", ["*.html"]),
        "pythonpath": ("lib, vendor/lib", ["lib", "vendor/lib"]),
    }
    if f.name in by_name:
        return by_name[f.name]
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        return ("false", False) if default else ("true", True)
    if isinstance(default, float):
        return "2.5", 2.5
    if isinstance(default, int):
        return "7", 7
    return "some-value", "some-value"


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------ the table itself


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_setting_has_help_and_a_section(field: dataclasses.Field[Any]) -> None:
    assert field.metadata["help"].strip(), f"{field.name} has no help"
    assert field.metadata["section"].strip(), f"{field.name} has no section"


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_setting_is_read_from_its_environment_variable(field: dataclasses.Field[Any]) -> None:
    text, expected = _sample(field)
    env_name = "RAPIDWSGI_" + field.name.upper()
    assert values_from_env({env_name: text}) == {field.name: expected}
    assert f"`{env_name}`" in settings_markdown()


@pytest.mark.parametrize("field", [f for f in FIELDS if not f.metadata["positional"]], ids=lambda f: f.name)
def test_every_setting_has_a_generated_command_line_flag(field: dataclasses.Field[Any]) -> None:
    parser = build_parser()
    text, expected = _sample(field)
    if isinstance(expected, bool):
        positive = vars(parser.parse_args([_flag(field)]))
        negative = vars(parser.parse_args(["--no-" + _flag(field)[2:]]))
        assert positive == {field.name: True}
        assert negative == {field.name: False}
    else:
        assert vars(parser.parse_args([_flag(field), text])) == {field.name: expected}


def test_unset_command_line_options_are_absent_so_lower_layers_show_through() -> None:
    assert vars(build_parser().parse_args([])) == {}


def test_command_line_values_are_parsed_into_typed_settings() -> None:
    config = Config.load(
        ["--keep-alive", "3", "--threads", "4", "-b", "a:1", "-b", "b:2", "--no-date-header", "mod:app"],
        environ={},
    )
    assert config.keep_alive == 3.0
    assert isinstance(config.keep_alive, float)
    assert config.threads == 4
    assert config.bind == ["a:1", "b:2"]
    assert config.date_header is False
    assert config.server_header is True
    assert config.app == "mod:app"


def test_short_flags_and_aliases_set_the_same_settings(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "conf.py", "threads = 3\n")
    config = Config.load(["-c", cfg, "-b", "unix:/x.sock", "--log-file", "/dev/null"], environ={})
    assert config.threads == 3
    assert config.bind == ["unix:/x.sock"]
    assert config.error_logfile == "/dev/null"


def test_defaults_apply_when_nothing_is_given() -> None:
    config = Config.load([], environ={})
    assert config == Config()
    assert config.bind == ["127.0.0.1:8000"]
    assert config.threads == 1
    assert config.app is None


# ------------------------------------------------------------------ environment


def test_environment_values_are_parsed_by_type() -> None:
    values = values_from_env(
        {
            "RAPIDWSGI_THREADS": "8",
            "RAPIDWSGI_KEEP_ALIVE": "0.25",
            "RAPIDWSGI_SERVER_HEADER": "no",
            "RAPIDWSGI_DATE_HEADER": "On",
            "RAPIDWSGI_BIND": "127.0.0.1:1, unix:/a.sock ,,fd://3",
            "RAPIDWSGI_UMASK": "007",
            "RAPIDWSGI_APP": "pkg.mod:app",
            "UNRELATED": "1",
        }
    )
    assert values == {
        "threads": 8,
        "keep_alive": 0.25,
        "server_header": False,
        "date_header": True,
        "bind": ["127.0.0.1:1", "unix:/a.sock", "fd://3"],
        "umask": 0o007,
        "app": "pkg.mod:app",
    }


@pytest.mark.parametrize(
    ("text", "expected"), [("1", True), ("true", True), ("YES", True), ("0", False), ("off", False)]
)
def test_environment_booleans_accept_the_documented_spellings(text: str, expected: bool) -> None:
    assert values_from_env({"RAPIDWSGI_SERVER_HEADER": text}) == {"server_header": expected}


@pytest.mark.parametrize(("text", "expected"), [("007", 0o7), ("022", 0o22), ("0o077", 0o77), ("0", 0)])
def test_umask_is_read_as_octal(text: str, expected: int) -> None:
    assert values_from_env({"RAPIDWSGI_UMASK": text}) == {"umask": expected}
    assert Config.load(["--umask", text], environ={}).umask == expected


@pytest.mark.parametrize(
    ("name", "text"),
    [("RAPIDWSGI_THREADS", "many"), ("RAPIDWSGI_KEEP_ALIVE", "1s"), ("RAPIDWSGI_DATE_HEADER", "maybe")],
)
def test_unparsable_environment_value_is_a_config_error_naming_the_variable(name: str, text: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.load([], environ={name: text})


# ------------------------------------------------------------------ precedence


PY_CONFIG = """\
import os  # a gunicorn-style file may import and compute things

threads = 2
keep_alive = 7.0
backlog = 100
bind = "unix:/from-file.sock"
_helper = os.sep
"""

TOML_TOP_LEVEL = """\
threads = 2
keep-alive = 7.0
backlog = 100
bind = "unix:/from-file.sock"
"""

TOML_TABLE = """\
[rapidwsgi]
threads = 2
keep_alive = 7.0
backlog = 100
bind = ["unix:/from-file.sock"]

[tool.other]
ignored = true
"""


@pytest.mark.parametrize(
    ("filename", "text"),
    [("conf.py", PY_CONFIG), ("conf.toml", TOML_TOP_LEVEL), ("table.toml", TOML_TABLE)],
)
def test_precedence_is_cli_then_environment_then_config_file_then_default(
    tmp_path: Path, filename: str, text: str
) -> None:
    cfg = _write(tmp_path / filename, text)
    file_only = Config.load(["--config", cfg], environ={})
    assert (file_only.threads, file_only.keep_alive, file_only.backlog) == (2, 7.0, 100)
    assert file_only.bind == ["unix:/from-file.sock"]

    env = {"RAPIDWSGI_THREADS": "3", "RAPIDWSGI_KEEP_ALIVE": "8"}
    config = Config.load(["--config", cfg, "--threads", "4"], environ=env)
    assert config.threads == 4  # command line beats environment and file
    assert config.keep_alive == 8.0  # environment beats file
    assert config.backlog == 100  # file beats default
    assert config.header_timeout == Config().header_timeout  # default


def test_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "conf.toml", "threads = 6\n")
    assert Config.load([], environ={"RAPIDWSGI_CONFIG": cfg}).threads == 6


def test_python_config_file_keeps_only_setting_names(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "conf.py", PY_CONFIG)
    assert values_from_file(cfg) == {
        "threads": 2,
        "keep_alive": 7.0,
        "backlog": 100,
        "bind": ["unix:/from-file.sock"],
    }


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found"):
        Config.load(["--config", str(tmp_path / "absent.toml")], environ={})


def test_python_config_file_that_raises_is_a_config_error(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "conf.py", "raise ValueError('bad config')\n")
    with pytest.raises(ConfigError, match=r"bad config"):
        Config.load(["--config", cfg], environ={})


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--keep-alive", "-1"], "--keep-alive"),
        (["--graceful-timeout", "-0.5"], "--graceful-timeout"),
        (["--header-timeout", "0"], "--header-timeout"),
        (["--threads", "0"], "--threads"),
        (["--backlog", "-5"], "--backlog"),
        (["--limit-request-body", "-1"], "--limit-request-body"),
        (["--umask", "01000"], "--umask"),
    ],
)
def test_out_of_range_command_line_value_is_a_config_error_naming_the_flag(
    argv: list[str], flag: str
) -> None:
    with pytest.raises(ConfigError, match=flag):
        Config.load(argv, environ={})


def test_invalid_loop_choice_on_the_command_line_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--loop"):
        Config.load(["--loop", "twisted"], environ={})


def test_invalid_loop_choice_from_the_environment_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--loop.*twisted"):
        Config.load([], environ={"RAPIDWSGI_LOOP": "twisted"})


def test_unparsable_command_line_number_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--threads"):
        Config.load(["--threads", "four"], environ={})


def test_unknown_key_in_a_toml_config_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "conf.toml", "threads = 2\nthread_count = 4\n")
    with pytest.raises(ConfigError, match="thread_count"):
        Config.load(["--config", cfg], environ={})


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ('threads = "4"', "threads"),
        ("threads = true", "threads"),
        ('keep_alive = "fast"', "keep_alive"),
        ('date_header = "yes"', "date_header"),
        ("bind = [8000]", "bind"),
    ],
)
def test_wrong_type_in_a_toml_config_file_is_a_config_error_naming_the_setting(
    tmp_path: Path, line: str, name: str
) -> None:
    cfg = _write(tmp_path / "conf.toml", line + "\n")
    with pytest.raises(ConfigError, match=name):
        Config.load(["--config", cfg], environ={})


def test_empty_bind_list_in_a_config_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "conf.toml", "bind = []\n")
    with pytest.raises(ConfigError, match="--bind"):
        Config.load(["--config", cfg], environ={})


def test_integer_is_accepted_for_a_float_setting_in_a_config_file(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "conf.toml", "keep_alive = 3\n")
    assert Config.load(["--config", cfg], environ={}).keep_alive == 3


# ------------------------------------------------------------------ generated docs


def test_docs_settings_md_is_exactly_the_generated_reference() -> None:
    # Regenerate with `python -m rapidwsgi.config > docs/settings.md` (make docs).
    assert (ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == settings_markdown()


def test_generated_reference_documents_every_setting_flag_and_default() -> None:
    text = settings_markdown()
    for f in FIELDS:
        assert f"### `{f.name}`" in text
        if not f.metadata["positional"]:
            assert f"`{_flag(f)}`" in text
    assert "`--no-date-header`" in text
    assert "`0o0`" in text  # the umask default is shown in octal
    for f in HOOK_FIELDS:
        assert f"### `{f.metadata['signature']}`" in text


def test_hooks_have_no_flag_or_variable_and_come_from_a_python_config_file(tmp_path: Path) -> None:
    from rapidwsgi.hooks import HOOKS

    assert sorted(f.name for f in HOOK_FIELDS) == sorted(HOOKS)
    assert not any(f"--{name.replace('_', '-')}" in build_parser().format_help() for name in HOOKS)
    assert values_from_env({"RAPIDWSGI_ON_EXIT": "x"}) == {}
    conf = tmp_path / "c.py"
    conf.write_text("def on_exit(server):\n    pass\nworkers = 3\n")
    config = Config.load(["-c", str(conf), "app:app"], environ={})
    assert config.on_exit is not None and config.on_exit.__name__ == "on_exit"
    assert config.workers == 3


# ------------------------------------------------------------------ bind addresses


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9000", "127.0.0.1", 9000),
        ("localhost:0", "localhost", 0),
        ("[::1]:8080", "::1", 8080),
        ("[::]:65535", "::", 65535),
        ("example.org", "example.org", DEFAULT_PORT),
        ("10.1.2.3", "10.1.2.3", 8000),
        (":9001", "0.0.0.0", 9001),
    ],
)
def test_parse_address_tcp_forms(text: str, host: str, port: int) -> None:
    address = parse_address(text)
    assert (address.kind, address.host, address.port) == ("tcp", host, port)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("unix:/run/app.sock", "/run/app.sock"),
        ("unix:app.sock", "app.sock"),
        ("unix:///run/a.sock", "/run/a.sock"),
    ],
)
def test_parse_address_unix_paths(text: str, path: str) -> None:
    address = parse_address(text)
    assert (address.kind, address.path) == ("unix", path)


def test_parse_address_inherited_file_descriptor() -> None:
    address = parse_address("fd://3")
    assert (address.kind, address.fd) == ("fd", 3)


@pytest.mark.parametrize(
    "text",
    [
        "unix:",
        "fd://",
        "fd://three",
        "fd://-1",
        "::1:8000",
        "[::1",
        "[::1]8000",
        "[::1]:",
        "host:http",
        "host:",
        "host:65536",
        "host:-1",
    ],
)
def test_parse_address_rejects_malformed_input(text: str) -> None:
    with pytest.raises(BindError) as info:
        parse_address(text)
    assert repr(text) in str(info.value)


# ------------------------------------------------------------------ application loading


def _call(app: Any, path: str = "/") -> tuple[str, bytes]:
    captured: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        captured.append(status)

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return captured[0], body


def test_load_app_module_colon_name() -> None:
    assert load_app(f"{FIXTURES}.named:app") is named.app
    assert load_app(f"{FIXTURES}.named:application") is named.application


def test_load_app_module_colon_attribute_path() -> None:
    app = load_app(f"{FIXTURES}.named:holder.wsgi")
    assert _call(app) == ("200 OK", b'{"name": "holder.wsgi"}')


def test_load_app_bare_module_prefers_application_then_app() -> None:
    assert load_app(f"{FIXTURES}.named") is named.application
    from tests.loader_fixtures import only_app

    assert load_app(f"{FIXTURES}.only_app") is only_app.app


def test_load_app_bare_module_without_default_names_says_how_to_name_it() -> None:
    with pytest.raises(AppLoadError, match=r"no 'application' or 'app'"):
        load_app(f"{FIXTURES}.no_default")
    assert callable(load_app(f"{FIXTURES}.no_default:handler"))


def test_load_app_calls_a_factory_without_arguments() -> None:
    app = load_app(f"{FIXTURES}.named:create_app()")
    assert (app.label, app.n) == ("default", 1)  # type: ignore[attr-defined]


def test_load_app_passes_literal_factory_arguments() -> None:
    app = load_app(f"{FIXTURES}.named:create_app('x', n=2)")
    assert (app.label, app.n) == ("x", 2)  # type: ignore[attr-defined]
    assert _call(app) == ("200 OK", b'{"label": "x", "n": 2, "name": "factory"}')


@pytest.mark.parametrize(
    "expression",
    [
        "create_app(NOT_CALLABLE)",
        "create_app(__import__('os').getcwd())",
        "create_app('a' + 'b')",
        "create_app(n=len('abc'))",
        "create_app(*['x'])",
    ],
)
def test_load_app_refuses_non_literal_factory_arguments_without_calling_it(expression: str) -> None:
    calls = len(named.FACTORY_CALLS)
    with pytest.raises(AppLoadError, match="literal"):
        load_app(f"{FIXTURES}.named:{expression}")
    assert len(named.FACTORY_CALLS) == calls


def test_load_app_does_not_silently_drop_double_star_factory_arguments() -> None:
    try:
        app = load_app(f"{FIXTURES}.named:create_app(**{{'n': 2}})")
    except AppLoadError:
        return  # refusing non-literal syntax is fine
    assert app.n == 2  # type: ignore[attr-defined]


def test_load_app_reports_a_failing_factory_with_its_traceback() -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(f"{FIXTURES}.named:failing_factory()")
    assert "LookupError" in str(info.value)
    assert "Traceback" in info.value.detail
    assert "factory could not find its configuration" in info.value.detail


def test_load_app_missing_module_is_a_one_line_error_without_traceback() -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(f"{FIXTURES}.does_not_exist:app")
    message = str(info.value)
    assert message.startswith(f"cannot import module '{FIXTURES}.does_not_exist'")
    assert "\n" not in message
    assert info.value.detail == ""


def test_load_app_missing_top_level_package_is_reported_as_missing_module() -> None:
    with pytest.raises(AppLoadError, match=r"cannot import module 'nosuchpackage_rw\.sub'"):
        load_app("nosuchpackage_rw.sub:app")


def test_load_app_module_importing_a_missing_dependency_is_an_import_failure_with_traceback() -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(f"{FIXTURES}.missing_dependency:app")
    message = str(info.value)
    assert message.startswith(f"error while importing '{FIXTURES}.missing_dependency'")
    assert "rapidwsgi_fixture_absent_dependency" in message
    assert "Traceback" in info.value.detail
    assert "missing_dependency.py" in info.value.detail


def test_load_app_module_raising_during_import_is_an_import_failure_with_traceback() -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(f"{FIXTURES}.raises_on_import:app")
    message = str(info.value)
    assert message.startswith(f"error while importing '{FIXTURES}.raises_on_import'")
    assert "RuntimeError: fixture exploded while importing" in message
    assert "\n" not in message
    assert "Traceback" in info.value.detail
    assert "_configure" in info.value.detail


def test_load_app_missing_attribute_names_module_and_attribute() -> None:
    with pytest.raises(AppLoadError, match=r"module '.*named' has no attribute 'nope'"):
        load_app(f"{FIXTURES}.named:nope")
    with pytest.raises(AppLoadError, match=r"holder\.nope"):
        load_app(f"{FIXTURES}.named:holder.nope")


def test_load_app_refuses_a_non_callable_object() -> None:
    with pytest.raises(AppLoadError, match=r"not callable \(got int\)"):
        load_app(f"{FIXTURES}.named:NOT_CALLABLE")


@pytest.mark.parametrize("spec", ["", ":app", "not-a-module:app", "mod.:app", f"{FIXTURES}.named:app[0]"])
def test_load_app_refuses_malformed_specs(spec: str) -> None:
    with pytest.raises(AppLoadError, match="invalid application"):
        load_app(spec)


def test_pythonpath_is_a_list_setting_like_the_others(tmp_path: Path) -> None:
    # Command line: comma-separated and repeatable (gunicorn's --pythonpath a,b).
    config = Config.load(["--pythonpath", "lib, vendor", "--pythonpath", "extra", "mod:app"], environ={})
    assert config.pythonpath == ["lib", "vendor", "extra"]
    assert Config.load(["mod:app"], environ={"RAPIDWSGI_PYTHONPATH": "a,b"}).pythonpath == ["a", "b"]
    assert Config.load(["mod:app"], environ={}).pythonpath == []
    # A config file gives a list, as for every list setting; a string is refused.
    assert Config.from_values({"pythonpath": ["lib", "vendor"]}).pythonpath == ["lib", "vendor"]
    with pytest.raises(ConfigError, match="'pythonpath': expected list"):
        Config.from_values({"pythonpath": "lib,vendor"})
    with pytest.raises(ConfigError, match="an empty directory names nothing"):
        Config.from_values({"pythonpath": ["lib", " "]})
