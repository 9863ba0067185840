"""The peer servers: how each is installed, how each is started, in which modes.

The peers live in their own virtualenv (default ``bench/.venv-peers``), separate from the
project's; only what is missing is installed, and a peer that fails to install is
reported and skipped. Every command line below was checked against the peer's ``--help``
(or, for the servers without a CLI, its Python API): see bench/README.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from common import APPS_DIR, HOST, REPO_ROOT, VENV_DIR, last_line, log, run_capture, tail

PIP_TIMEOUT_S = 1800.0
APT_HINT = "apt-get install -y wrk apache2-utils nginx libev-dev"


@dataclass(frozen=True)
class Server:
    """A server and its command lines (argv templates, split before substitution).

    Placeholders: {py} {bin} (the peers venv), {apps}, {host} {port} {bind}, {sock} (a
    unix socket path), {target} (module:app) and {workers}.
    """

    name: str
    dists: tuple[str, ...]
    label: str
    http: str
    uwsgi: str = ""  # listening with the uwsgi protocol on unix:{sock}
    fastcgi: str = ""  # listening with FastCGI on {bind}
    keepalive: bool = True  # keeps client connections open (proxy-ka mode makes sense)
    multiprocess: bool = True  # honours {workers}; False: always one process
    note: str = ""

    def template(self, listener: str) -> str:
        return {"http": self.http, "uwsgi": self.uwsgi, "fastcgi": self.fastcgi}[listener]

    def supports(self, listener: str, front: str) -> bool:
        if not self.template(listener):
            return False
        return self.keepalive or front != "proxy-ka"


_RAPID = "{py} -m rapidwsgi --workers {workers} --threads 1 --log-level warning"
_GUNICORN = "{bin}/gunicorn -w {workers} -b {bind} --log-level warning"
_UWSGI = (
    "{bin}/uwsgi --master --processes {workers} --module {target} --pythonpath {apps} "
    "--disable-logging --need-app --die-on-term"
)
SERVERS = (
    Server(
        "rapidwsgi",
        ("rapidwsgi",),
        "rapidwsgi (uvloop + llhttp, mypyc)",
        f"{_RAPID} --bind {{bind}} {{target}}",
        uwsgi=f"{_RAPID} --bind unix:{{sock}} --protocol uwsgi {{target}}",
        fastcgi=f"{_RAPID} --bind {{bind}} --protocol fastcgi {{target}}",
    ),
    Server(
        "gunicorn",
        ("gunicorn",),
        "gunicorn sync",
        f"{_GUNICORN} -k sync {{target}}",
        keepalive=False,
        note="sync workers close the connection after each response",
    ),
    Server(
        "gunicorn-gthread",
        ("gunicorn",),
        "gunicorn gthread (4 threads)",
        f"{_GUNICORN} -k gthread --threads 4 {{target}}",
    ),
    Server(
        "gunicorn-gevent",
        ("gunicorn", "gevent"),
        "gunicorn gevent",
        f"{_GUNICORN} -k gevent {{target}}",
        note="default --worker-connections 1000",
    ),
    Server(
        "uwsgi",
        ("uwsgi",),
        "uWSGI",
        f"{_UWSGI} --http-socket {{bind}}",
        uwsgi=f"{_UWSGI} --socket {{sock}}",
        fastcgi=f"{_UWSGI} --fastcgi-socket {{bind}}",
        keepalive=False,
        note="--http-socket closes after each response; default listen queue (100)",
    ),
    Server(
        "gevent",
        ("gevent",),
        "gevent.pywsgi",
        "{py} {apps}/run_gevent.py {target} {host} {port}",
        multiprocess=False,
    ),
    Server(
        "bjoern",
        ("bjoern",),
        "bjoern (C, libev)",
        "{py} {apps}/run_bjoern.py {target} {host} {port}",
        multiprocess=False,
    ),
    Server(
        "granian",
        ("granian",),
        "granian WSGI (Rust)",
        "{bin}/granian --interface wsgi --host {host} --port {port} --workers {workers} "
        "--log-level warning {target}",
    ),
    Server(
        "waitress",
        ("waitress",),
        "waitress (4 threads)",
        "{bin}/waitress-serve --listen {bind} --threads 4 {target}",
        multiprocess=False,
    ),
    Server(
        "meinheld",
        ("meinheld",),
        "meinheld (C, picoev)",
        "{py} {apps}/run_meinheld.py {target} {host} {port}",
        multiprocess=False,
        note="installed --no-deps with a current greenlet: an unsupported mix; keep-alive set to 10 s",
    ),
    Server(
        "fastwsgi",
        ("fastwsgi",),
        "fastwsgi (C, libuv)",
        "{py} {apps}/run_fastwsgi.py {target} {host} {port}",
        multiprocess=False,
    ),
)
SERVER_BY_NAME = {s.name: s for s in SERVERS}
ALL_SERVERS = tuple(s.name for s in SERVERS)


@dataclass(frozen=True)
class Install:
    requirements: tuple[str, ...]
    modules: tuple[str, ...]  # must import afterwards
    pip_args: tuple[str, ...] = ()
    binary: str = ""  # must exist in the venv's bin afterwards


INSTALLS = {
    "gunicorn": Install(("gunicorn",), ("gunicorn",)),
    "gevent": Install(("gevent",), ("gevent", "gevent.pywsgi")),
    "granian": Install(("granian",), ("granian",)),
    "bjoern": Install(("bjoern",), ("bjoern",)),
    # fastwsgi 0.0.9 imports pkg_resources, gone from setuptools >= 81
    "fastwsgi": Install(("fastwsgi", "setuptools<81"), ("fastwsgi", "pkg_resources")),
    "waitress": Install(("waitress",), ("waitress",)),
    # builds from source (gcc and the Python headers)
    "uwsgi": Install(("uwsgi",), (), binary="uwsgi"),
    # meinheld 1.0.2 pins greenlet<0.5, which does not build on 3.11: no deps + greenlet
    "meinheld": Install(("meinheld", "greenlet"), ("meinheld.server",), pip_args=("--no-deps",)),
    # the apps and the charts
    "django": Install(("django",), ("django",)),
    # static files served inside the application (bench/static.py)
    "whitenoise": Install(("whitenoise",), ("whitenoise",)),
    "flask": Install(("flask",), ("flask",)),
    "matplotlib": Install(("matplotlib",), ("matplotlib",)),
}
VERSION_DISTS = (
    "rapidwsgi",
    "uvloop",
    "gunicorn",
    "gevent",
    "greenlet",
    "uwsgi",
    "granian",
    "bjoern",
    "waitress",
    "meinheld",
    "fastwsgi",
    "django",
    "flask",
    "whitenoise",
    "matplotlib",
    "setuptools",
)
COPY_SKIP_TOP = {"bench", "build", "dist", "node_modules"}
COPY_SKIP_ANY = {".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".tox", ".nox"}

_venv = [VENV_DIR]


def set_venv(path: Path) -> None:
    _venv[0] = path.resolve()


def venv_dir() -> Path:
    return _venv[0]


def venv_bin(name: str) -> Path:
    return venv_dir() / "bin" / name


def venv_python() -> Path:
    return venv_bin("python")


def argv_for(template: str, values: dict[str, str]) -> list[str]:
    """Split first, then substitute: paths with spaces stay one argument."""
    return [part.format(**values) for part in template.split()]


# --------------------------------------------------------------------------
# Installing
# --------------------------------------------------------------------------


def ensure_venv() -> None:
    if venv_python().exists():
        return
    log(f"creating peers virtualenv {venv_dir()}")
    subprocess.run([sys.executable, "-m", "venv", str(venv_dir())], check=True)
    code, out = run_capture(
        [str(venv_python()), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        PIP_TIMEOUT_S,
    )
    if code:
        log(f"  (pip upgrade failed, continuing with the bundled pip: {last_line(out)})")


def import_check(modules: Sequence[str]) -> dict[str, str]:
    """Try importing modules in the peers venv; return module -> error ('' = ok)."""
    if not modules:
        return {}
    script = (
        "import importlib, json, sys\n"
        "res = {}\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(m); res[m] = ''\n"
        "    except BaseException as e:\n"
        "        res[m] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps(res))\n"
    )
    code, out = run_capture(
        [str(venv_python()), "-c", script, *modules],
        120,
        cwd=Path(tempfile.gettempdir()),
    )
    if code:
        return {module: f"import check failed: {last_line(out)}" for module in modules}
    return cast(dict[str, str], json.loads(out.strip().splitlines()[-1]))


def pip_install(args: Sequence[str], label: str) -> str:
    """pip install into the peers venv; returns '' or a one-line reason."""
    log(f"  installing {label} ...")
    cmd = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", *args]
    code, out = run_capture(cmd, PIP_TIMEOUT_S)
    (venv_dir() / f"install-{label}.log").write_text(out)
    if code == 0:
        return ""
    log(tail(out))
    return f"pip install failed (exit {code}): {last_line(out)}"


def install_problems(spec: Install) -> str:
    broken = [f"import {m}: {e}" for m, e in import_check(spec.modules).items() if e]
    if spec.binary and not venv_bin(spec.binary).exists():
        broken.append(f"no {spec.binary} in {venv_dir() / 'bin'}")
    return "; ".join(broken)


def install_dist(dist: str) -> str:
    """Install one distribution if missing; returns '' or the skip reason."""
    spec = INSTALLS[dist]
    if not install_problems(spec):
        return ""
    if dist == "bjoern" and not Path("/usr/include/ev.h").exists():
        return f"libev headers missing (/usr/include/ev.h): {APT_HINT}"
    reason = pip_install([*spec.pip_args, *spec.requirements], dist)
    return reason or install_problems(spec)


def skip_copy(root: Path, directory: str, names: list[str]) -> set[str]:
    top = Path(directory).resolve() == root
    return {
        name
        for name in names
        if name in COPY_SKIP_ANY
        or name.startswith(".venv")
        or name.endswith(".egg-info")
        or (top and name in COPY_SKIP_TOP)
    }


def source_files(root: Path) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(set(dirs) - skip_copy(root, directory, dirs))
        for name in sorted(files):
            yield Path(directory) / name


def source_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for path in source_files(root):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def install_rapidwsgi() -> str:
    """(Re)install rapidwsgi, non-editable, when missing or its sources changed.

    pip builds from a copy of the repo so that no build/ or *.egg-info
    directory appears in the working tree outside bench/.
    """
    if not any((REPO_ROOT / f).exists() for f in ("pyproject.toml", "setup.py")):
        return f"no pyproject.toml or setup.py in {REPO_ROOT}: not installable yet"
    stamp = venv_dir() / "rapidwsgi-source.sha256"
    fingerprint = source_fingerprint(REPO_ROOT)
    current = stamp.read_text().strip() if stamp.exists() else ""
    if current == fingerprint and not import_check(["rapidwsgi.__main__"])["rapidwsgi.__main__"]:
        return ""
    run_capture([str(venv_python()), "-m", "pip", "uninstall", "-y", "rapidwsgi"], 300)
    with tempfile.TemporaryDirectory(prefix="rapidwsgi-src-") as tmp:
        src = Path(tmp) / "rapidwsgi"
        shutil.copytree(REPO_ROOT, src, ignore=lambda d, n: skip_copy(REPO_ROOT, d, n), symlinks=True)
        reason = pip_install([str(src)], "rapidwsgi")
    if reason:
        return reason
    error = import_check(["rapidwsgi.__main__"])["rapidwsgi.__main__"]
    if error:
        return f"import rapidwsgi: {error}"
    stamp.write_text(fingerprint + "\n")
    return ""


def prepare(servers: Sequence[str], extra: Sequence[str], rapidwsgi_python: str) -> dict[str, str]:
    """Install what the servers (and the extra dists: apps, charts) need.

    Returns dist -> skip reason ('' when usable). With rapidwsgi_python set, rapidwsgi
    runs under that interpreter and is not installed into the peers venv.
    """
    ensure_venv()
    log(f"checking peers in {venv_dir()} (installs only what is missing)")
    wanted = [d for s in servers for d in SERVER_BY_NAME[s].dists] + list(extra)
    reasons: dict[str, str] = {}
    for dist in dict.fromkeys(wanted):
        if dist == "rapidwsgi":
            reasons[dist] = "" if rapidwsgi_python else install_rapidwsgi()
        else:
            reasons[dist] = install_dist(dist)
        if reasons[dist]:
            log(f"  {dist} unavailable: {reasons[dist]}")
    return reasons


def server_skips(servers: Sequence[str], reasons: dict[str, str]) -> dict[str, str]:
    skipped: dict[str, str] = {}
    for name in servers:
        why = [f"{d}: {reasons[d]}" for d in SERVER_BY_NAME[name].dists if reasons.get(d)]
        if why:
            skipped[name] = "; ".join(why)
            log(f"  SKIP {name}: {skipped[name]}")
    return skipped


# --------------------------------------------------------------------------
# What is installed
# --------------------------------------------------------------------------


def peer_versions(rapidwsgi_python: str) -> dict[str, str]:
    script = (
        "import json, sys, platform\n"
        "from importlib import metadata\n"
        "out = {'python': platform.python_version()}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = metadata.version(d)\n"
        "    except metadata.PackageNotFoundError: out[d] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    versions: dict[str, str] = {}
    for python in filter(None, (str(venv_python()), rapidwsgi_python)):
        code, out = run_capture([python, "-c", script, *VERSION_DISTS], 60)
        if code:
            return {"error": last_line(out)}
        found = cast(dict[str, str], json.loads(out.strip().splitlines()[-1]))
        versions.update({k: v for k, v in found.items() if v != "not installed" or k not in versions})
    return versions


GRANIAN_DEFAULTS_SCRIPT = (
    "from granian import Granian\n"
    "g = Granian('hello:app', interface='wsgi', workers=1)\n"
    "print(f'{g.blocking_threads} blocking threads (default for --interface wsgi "
    "--workers 1), runtime threads {g.runtime_threads}, backpressure "
    "{g.backpressure}')\n"
)


def granian_defaults() -> str:
    """The blocking-threads default our granian command line ends up with, read from
    the installed granian (constructing the server does not start it)."""
    if not venv_bin("granian").exists():
        return "granian not installed"
    code, out = run_capture([str(venv_python()), "-c", GRANIAN_DEFAULTS_SCRIPT], 60)
    if code == 0:
        return last_line(out)
    _, out = run_capture([str(venv_bin("granian")), "--help"], 60)
    match = re.search(r"--blocking-threads.*?(?=\n\s+--|\Z)", out, re.DOTALL)
    return " ".join(match.group(0).split()) if match else "unknown"


def server_argv(server: Server, listener: str, values: dict[str, str], rapidwsgi_python: str) -> list[str]:
    values = {**values, "py": str(venv_python()), "bin": str(venv_dir() / "bin"), "apps": str(APPS_DIR)}
    if server.name == "rapidwsgi" and rapidwsgi_python:
        values["py"] = rapidwsgi_python
    values.setdefault("host", HOST)
    return argv_for(server.template(listener), values)
