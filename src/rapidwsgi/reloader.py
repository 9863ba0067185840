"""``--reload``: notice changed Python files (and the files asked for), for development.

Contract: :meth:`Reloader.changes` returns the paths (relative to the watched roots;
absolute for a ``--reload-extra-files`` file outside them) of the files created,
modified or deleted since the previous call: ``.py`` files and files matching a
``--reload-include`` glob under the watched roots, and the ``--reload-extra-files``
wherever they are. It uses watchfiles (inotify) in background threads when that
package is installed, and a stat() scan otherwise; the caller polls it from its loop.
Both backends report the same files.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence

from .config import Config

_SKIP_DIRS = frozenset(
    {".git", ".hg", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache", ".tox"}
)


def watched_roots(config: Config) -> list[str]:
    roots = [os.getcwd(), *(os.path.abspath(path) for path in config.pythonpath)]
    unique: list[str] = []
    for root in roots:
        if not any(root == r or root.startswith(r + os.sep) for r in unique):
            unique.append(root)
    return unique


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A ``--reload-include`` glob as a regex matched against a path relative to a root
    (``/``-separated). Without a slash the pattern matches the file name at any depth;
    ``*`` and ``?`` never match ``/``; ``**`` matches any number of directories."""
    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    if "/" not in pattern:
        pattern = "**/" + pattern
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            else:
                out.append(".*")
                i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            if not negate and body.startswith("^"):
                body = "\\" + body
            out.append("[" + ("^/" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _skipped(relative_dir_parts: Sequence[str]) -> bool:
    return any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in relative_dir_parts)


class Reloader:
    def __init__(self, config: Config) -> None:
        self.roots = watched_roots(config)
        self.extra_files = sorted({os.path.abspath(p) for p in config.reload_extra_files})
        self._extra = frozenset(self.extra_files) | {os.path.realpath(p) for p in self.extra_files}
        self._include = [glob_regex(p) for p in config.reload_include]
        self._lock = threading.Lock()
        self._changed: set[str] = set()
        self._stop = threading.Event()
        self._mtimes: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        try:
            import watchfiles  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            self.backend = "a stat() scan once a second"
            self._mtimes = dict(self._scan())
        else:
            self.backend = "watchfiles"
            # The roots recursively; the directories of the extra files outside them
            # (only those files: never a whole home directory's tree) non-recursively.
            outside = {
                os.path.dirname(p)
                for p in self.extra_files
                if self._root_of(p) is None and os.path.isdir(os.path.dirname(p))
            }
            self._start(watchfiles, self.roots, recursive=True)
            if outside:
                self._start(watchfiles, sorted(outside), recursive=False)

    # ------------------------------------------------------------------ what counts

    def _root_of(self, path: str) -> str | None:
        for root in self.roots:
            if path.startswith(root + os.sep):
                return root
        return None

    def _matches(self, relative: str) -> bool:
        """A file under a root (``relative`` to it) that is watched: .py or an include glob."""
        if relative.endswith(".py"):
            return True
        posix = relative.replace(os.sep, "/")
        return any(regex.fullmatch(posix) for regex in self._include)

    def wanted(self, path: str) -> bool:
        """Whether a change to ``path`` (absolute) triggers a reload."""
        if path in self._extra:
            return True
        root = self._root_of(path)
        if root is None:
            return False
        relative = os.path.relpath(path, root)
        return not _skipped(relative.split(os.sep)[:-1]) and self._matches(relative)

    # ------------------------------------------------------------------ stat() scan

    def _scan(self) -> Iterator[tuple[str, float]]:
        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not _skipped((d,))]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if self._matches(os.path.relpath(path, root)):
                        try:
                            yield path, os.stat(path).st_mtime
                        except OSError:
                            continue
        for path in self.extra_files:
            try:
                yield path, os.stat(path).st_mtime
            except OSError:  # absent (yet): its creation is a change
                continue

    # ------------------------------------------------------------------ watchfiles

    def _start(self, watchfiles: object, paths: Sequence[str], *, recursive: bool) -> None:
        thread = threading.Thread(
            target=self._watch,
            args=(watchfiles, list(paths), recursive),
            name="rapidwsgi-reloader",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _watch(self, watchfiles: object, paths: list[str], recursive: bool) -> None:
        watch: Callable[..., Iterator[set[tuple[object, str]]]] = getattr(watchfiles, "watch")  # noqa: B009
        wanted = self.wanted
        for changes in watch(
            *paths,
            watch_filter=lambda _change, path: wanted(path),
            stop_event=self._stop,
            recursive=recursive,
        ):
            with self._lock:
                self._changed.update(path for _, path in changes)

    # ------------------------------------------------------------------ polling

    def changes(self) -> list[str]:
        if not self._threads:
            current = dict(self._scan())
            changed = {p for p, m in current.items() if self._mtimes.get(p) != m}
            changed |= set(self._mtimes) - set(current)
            self._mtimes = current
        else:
            with self._lock:
                changed, self._changed = self._changed, set()
        return sorted({self._relative(p) for p in changed})

    def _relative(self, path: str) -> str:
        root = self._root_of(path)
        return path if root is None else os.path.relpath(path, root)

    def close(self) -> None:
        self._stop.set()
