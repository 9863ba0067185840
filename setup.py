"""Build script: the hot-path modules are compiled with mypyc when possible.

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

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_MODULES = [
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
]


class OptionalBuildExt(build_ext):
    """Build the compiled modules if possible; otherwise ship pure Python only."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fall_back(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fall_back(exc)
            raise

    def _fall_back(self, exc: BaseException) -> None:
        # The compiled modules share one runtime library: all or nothing.
        for path in self.get_outputs():
            if os.path.exists(path):
                os.remove(path)
        self.extensions = []
        print(f"rapidwsgi: compiling with mypyc failed ({exc}); installing pure Python", file=sys.stderr)


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


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
