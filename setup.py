"""Build script: the C request path, and the hot-path modules compiled with mypyc.

``src/rapidwsgi/_cfast.c`` (hand-written against the CPython C API) takes over the
common HTTP/1.1 request path; it is built whenever a C compiler is present, with
``-Wall -Wextra -Werror``. Without it (or with ``RAPIDWSGI_NO_C=1`` at run time) the
Python modules serve every request; they are the reference the C path is tested against.

The package is plain, fully typed Python; mypyc compiles the modules on the request
path to C extensions (about 2x fewer instructions per request, see
docs/benchmarks.md). When mypyc or a C compiler is missing, or
``RAPIDWSGI_PURE_PYTHON=1`` is set, the build silently produces the pure-Python
package instead; both behave identically (the test suite runs against both).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_EXTENSION = "rapidwsgi._cfast"

HOT_MODULES = [
    "src/rapidwsgi/_bounded.py",
    "src/rapidwsgi/events.py",
    "src/rapidwsgi/protocols/_grammar.py",
    "src/rapidwsgi/protocols/_state.py",
    "src/rapidwsgi/protocols/base.py",
    "src/rapidwsgi/protocols/cgi.py",
    "src/rapidwsgi/protocols/uwsgi.py",
    "src/rapidwsgi/protocols/fastcgi.py",
    "src/rapidwsgi/protocols/http1/_semantics.py",
    "src/rapidwsgi/protocols/http1/_tokenizer.py",
    "src/rapidwsgi/protocols/http1/_connection.py",
    "src/rapidwsgi/wsgi.py",
    "src/rapidwsgi/forwarded.py",
    "src/rapidwsgi/bridge.py",
    "src/rapidwsgi/connection.py",
    "src/rapidwsgi/log.py",
    "src/rapidwsgi/static.py",
    "src/rapidwsgi/metrics.py",
]


class OptionalBuildExt(build_ext):
    """Build the compiled modules if possible; otherwise ship pure Python only."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fall_back(exc)

    def build_extension(self, ext: Any) -> None:
        if ext.name == C_EXTENSION:
            # Independent of mypyc: without it the package still works (the Python path).
            try:
                super().build_extension(ext)
            except Exception as exc:
                print(f"rapidwsgi: building the C request path failed ({exc}); skipped", file=sys.stderr)
            return
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fall_back(exc)
            raise

    def _fall_back(self, exc: BaseException) -> None:
        # The compiled modules share one runtime library: all or nothing.
        for ext in self.extensions:
            if ext.name == C_EXTENSION:
                continue
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)
        self.extensions = [ext for ext in self.extensions if ext.name == C_EXTENSION]
        print(f"rapidwsgi: compiling with mypyc failed ({exc}); installing pure Python", file=sys.stderr)


def c_extension() -> list[Any]:
    if os.environ.get("RAPIDWSGI_PURE_PYTHON") == "1" or sys.implementation.name != "cpython":
        return []
    flags = ["-O2", "-Wall", "-Wextra", "-Werror"]
    flags += os.environ.get("RAPIDWSGI_CFLAGS", "").split()  # e.g. -fsanitize=address (make asan)
    return [Extension(C_EXTENSION, ["src/rapidwsgi/_cfast.c"], extra_compile_args=flags)]


def ext_modules() -> list[Any]:
    if os.environ.get("RAPIDWSGI_PURE_PYTHON") == "1":
        return []
    if sys.implementation.name != "cpython":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("rapidwsgi: mypyc not available; installing pure Python", file=sys.stderr)
        return []
    try:
        return list(mypycify(HOT_MODULES, opt_level="3", group_name="rapidwsgi_native"))
    except (Exception, SystemExit) as exc:  # mypyc exits on type errors
        print(f"rapidwsgi: mypyc failed ({exc!r}); installing pure Python", file=sys.stderr)
        return []


setup(ext_modules=c_extension() + ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
