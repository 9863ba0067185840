"""``--reload``: notice changed Python files, for development.

Contract: :meth:`Reloader.changes` returns the paths (relative to the watched roots)
of the files created, modified or deleted since the previous call: ``.py`` files and
files matching a ``--reload-include`` glob under the watched roots, and the
``--reload-extra-files`` (wherever they are; they are stat()ed at each call). It uses
watchfiles (inotify) in a background thread when that package is installed, and a
stat() scan of the watched trees otherwise; the caller polls it from its loop.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Iterator

from .config import Config

_SKIP_DIRS = frozenset(
    {".git", ".hg", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache", ".tox"}
)


def watched_roots(config: Config) -> list[str]:
    roots = [os.getcwd()]
    if config.pythonpath:
        roots += [os.path.abspath(p.strip()) for p in config.pythonpath.split(",") if p.strip()]
    unique: list[str] = []
    for root in roots:
        if not any(root == r or root.startswith(r + os.sep) for r in unique):
            unique.append(root)
    return unique


class Reloader:
    def __init__(self, config: Config) -> None:
        self.roots = watched_roots(config)
        #: --reload-include: globs matched against the path relative to its root (``*``
        #: also crosses ``/``, so ``*.html`` is any HTML file) and against the file name.
        self.include = list(config.reload_include)
        self.extra = [os.path.abspath(p) for p in config.reload_extra_files]
        self._extra_mtimes = {p: _mtime(p) for p in self.extra}
        self._lock = threading.Lock()
        self._changed: set[str] = set()
        self._stop = threading.Event()
        self._mtimes: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        try:
            import watchfiles  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            self._mtimes = dict(self._scan())
        else:
            self._thread = threading.Thread(
                target=self._watch, args=(watchfiles,), name="rapidwsgi-reloader", daemon=True
            )
            self._thread.start()

    def _scan(self) -> Iterator[tuple[str, float]]:
        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if self.wanted(path, root):
                        try:
                            yield path, os.stat(path).st_mtime
                        except OSError:
                            continue

    def wanted(self, path: str, root: str) -> bool:
        """A file whose change reloads: ``.py``, or matching a --reload-include glob."""
        if path.endswith(".py"):
            return True
        if not self.include:
            return False
        rel = os.path.relpath(path, root)
        name = os.path.basename(path)
        return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g) for g in self.include)

    def _watch(self, watchfiles: object) -> None:
        watch = getattr(watchfiles, "watch")  # noqa: B009 - optional dependency
        default_filter = getattr(watchfiles, "DefaultFilter")()  # noqa: B009

        def keep(change: object, path: str) -> bool:
            # watchfiles' default filter skips .git, __pycache__, editors' swap files...
            if not default_filter(change, path):
                return False
            root = next((r for r in self.roots if path.startswith(r + os.sep)), None)
            return root is not None and self.wanted(path, root)

        for changes in watch(*self.roots, watch_filter=keep, stop_event=self._stop):
            with self._lock:
                self._changed.update(path for _, path in changes)

    def changes(self) -> list[str]:
        if self._thread is None:
            current = dict(self._scan())
            changed = {p for p, m in current.items() if self._mtimes.get(p) != m}
            changed |= set(self._mtimes) - set(current)
            self._mtimes = current
        else:
            with self._lock:
                changed, self._changed = self._changed, set()
        for path in self.extra:
            mtime = _mtime(path)
            if mtime != self._extra_mtimes[path]:
                self._extra_mtimes[path] = mtime
                changed.add(path)
        return sorted(self._relative(p) for p in changed)

    def _relative(self, path: str) -> str:
        for root in self.roots:
            if path.startswith(root + os.sep):
                return os.path.relpath(path, root)
        return path

    def close(self) -> None:
        self._stop.set()


def _mtime(path: str) -> float | None:
    """The modification time of ``path``, None if it does not exist."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
