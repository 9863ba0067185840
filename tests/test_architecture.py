"""The layering rules of docs/architecture.md, held by a test.

Imports point one way: protocols -> wsgi -> bridge -> connection -> worker -> cli.
Leaf modules (events, errors, _bounded, config, log, sockets, loader) may be imported by any
layer above them but import no layer themselves.
"""

from __future__ import annotations

import ast
import importlib
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, SOURCE_MODE, SRC

PACKAGE = ROOT / "src" / "rapidwsgi"

# Lower rank = lower layer; a module may import only modules of strictly lower rank
# (or equal rank inside the same sub-package).
RANKS = {
    "rapidwsgi": 0,
    "rapidwsgi.errors": 0,
    "rapidwsgi.supervision": 0,  # the heartbeat messages (master and worker read them)
    "rapidwsgi._bounded": 0,  # the memo caches' eviction rule (imports nothing)
    "rapidwsgi.events": 1,
    "rapidwsgi.protocols": 2,
    "rapidwsgi.wsgi": 3,
    "rapidwsgi.forwarded": 2.5,  # the trust model (below wsgi, whose last environ stage applies it)
    "rapidwsgi.log": 3,
    "rapidwsgi.bridge": 4,
    "rapidwsgi.hooks": 4,  # the server hooks (events and the log only)
    "rapidwsgi.static": 4,  # the --static responder (beside the exchange it feeds)
    "rapidwsgi._cfast": 4.5,  # the C request path (a C extension: imports nothing)
    "rapidwsgi.metrics": 4.6,  # the shared counter slots (its C meter is in _cfast)
    "rapidwsgi.sockets": 4.8,  # addresses and binding (config validates with it)
    "rapidwsgi.connection": 5,
    "rapidwsgi.config": 5,
    "rapidwsgi.loader": 5,
    "rapidwsgi.tls": 5.5,  # above config, below worker and cli
    "rapidwsgi.worker": 6,
    "rapidwsgi.reloader": 6,
    "rapidwsgi.exporter": 6.5,  # the master's metrics endpoint and statsd
    "rapidwsgi.processes": 6.6,  # fork/kill/waitpid for the master (its test seam)
    "rapidwsgi.zygote": 6.8,  # the --preload zygote and the master's record of it
    "rapidwsgi.supervisor": 7,
    "rapidwsgi.stats": 7.5,  # the `rapidwsgi stats` subcommand
    "rapidwsgi.cli": 8,
    "rapidwsgi.__main__": 9,
    "rapidwsgi.demo": 9,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _rank(module: str) -> int:
    while module not in RANKS:
        module = module.rsplit(".", 1)[0]
    return RANKS[module]


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("rapidwsgi"):
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("rapidwsgi"))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_module_imports_only_lower_layers(path: Path) -> None:
    module = _module_name(path)
    rank = _rank(module)
    for target in _imports(path, module):
        if target == "rapidwsgi" and module != "rapidwsgi":
            continue  # the package root only holds __version__
        same_subpackage = target.startswith("rapidwsgi.protocols") and module.startswith(
            "rapidwsgi.protocols"
        )
        assert _rank(target) < rank or same_subpackage, f"{module} (layer {rank}) imports {target}"


def test_protocol_layer_has_no_io_threads_or_logging() -> None:
    forbidden = {"socket", "asyncio", "threading", "logging", "selectors", "time", "os"}
    for path in (PACKAGE / "protocols").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module.split(".")[0]]
            assert not forbidden.intersection(names), f"{path.name} imports {names}"


def _hot_modules() -> list[str]:
    """The modules setup.py compiles with mypyc (its HOT_MODULES list)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "HOT_MODULES" for t in node.targets
        ):
            paths = ast.literal_eval(node.value)
            assert isinstance(paths, list)
            return [str(p) for p in paths]
    raise AssertionError("setup.py has no HOT_MODULES")


def test_every_compiled_module_exists() -> None:
    # A moved module left in HOT_MODULES makes mypyc fail and the build fall back to
    # pure Python silently; this catches it in both test runs.
    for path in _hot_modules():
        assert (ROOT / path).is_file(), path


@pytest.mark.skipif(SOURCE_MODE, reason="source mode tests the pure-Python fallback")
def test_installed_hot_path_is_compiled_when_a_compiler_exists() -> None:
    if not (shutil.which("cc") or shutil.which("gcc")) or os.environ.get("RAPIDWSGI_PURE_PYTHON") == "1":
        pytest.skip("no C compiler: the pure-Python fallback is expected")
    for path in _hot_modules():
        name = path.removeprefix("src/").removesuffix(".py").replace("/", ".")
        module = importlib.import_module(name)
        assert module.__file__ is not None and not module.__file__.endswith(".py"), module.__file__


@pytest.mark.skipif(not SOURCE_MODE, reason="only meaningful when testing the sources")
def test_source_mode_runs_the_pure_python_sources() -> None:
    import rapidwsgi.connection

    assert rapidwsgi.connection.__file__ == str(PACKAGE / "connection.py")


def test_each_build_runs_the_request_path_it_names() -> None:
    """The three builds the suite runs against (Makefile ``unit``): the installed one with
    the C request path, the same with ``RAPIDWSGI_NO_C=1`` (mypyc only), and the
    sources (pure Python; ``make asan`` builds a C path into a copy of them)."""
    from rapidwsgi import connection

    no_c = os.environ.get("RAPIDWSGI_NO_C") == "1"
    if os.environ.get("RAPIDWSGI_REQUIRE_C") == "1":
        expected = True
    elif SOURCE_MODE:
        expected = (ROOT / "src").resolve() != SRC
    elif not (shutil.which("cc") or shutil.which("gcc")) or os.environ.get("RAPIDWSGI_PURE_PYTHON") == "1":
        pytest.skip("no C compiler: the Python path serves every request")
    else:
        expected = True
    assert (expected, expected and not no_c) == (connection.C_PATH_AVAILABLE, connection.C_PATH_DEFAULT)
