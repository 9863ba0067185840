"""Locating the WSGI application from a ``MODULE:APP`` string.

Contract: :func:`load_app` returns a callable or raises
:class:`~rapidwsgi.errors.AppLoadError` whose message is one line fit for a terminal
and whose ``detail`` is the traceback of the underlying error, if any.

Accepted forms: ``module``, ``module:name``, ``module:obj.attr``, ``module:factory()``
and ``module:factory('literal', key=1)``: a factory is called with literal
arguments only (parsed with :mod:`ast`, never evaluated as code).
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import traceback
from typing import Any

from .errors import AppLoadError
from .wsgi import WSGIApp

_DEFAULT_NAMES = ("application", "app")


def load_app(spec: str) -> WSGIApp:
    module_name, _, expression = spec.partition(":")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"invalid application {spec!r}: expected MODULE:APP")
    module = _import(module_name)
    if not expression:
        for name in _DEFAULT_NAMES:
            if hasattr(module, name):
                expression = name
                break
        else:
            raise AppLoadError(
                f"module {module_name!r} has no 'application' or 'app'; name it: {module_name}:NAME"
            )
    app = _evaluate(module, module_name, expression)
    if not callable(app):
        raise AppLoadError(f"{spec!r} is not callable (got {type(app).__name__})")
    return app  # type: ignore[no-any-return]


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"cannot import module {module_name!r}: {exc} (sys.path[0] is {sys.path[0]!r})"
            ) from None
        raise AppLoadError(f"error while importing {module_name!r}: {exc}", app_traceback(exc)) from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(
            f"error while importing {module_name!r}: {type(exc).__name__}: {exc}",
            app_traceback(exc),
        ) from None


# Frames that are the loading machinery, not the application: rapidwsgi's own modules
# and importlib's (``<frozen importlib._bootstrap>``, ``importlib/__init__.py``).
_MACHINERY = (os.path.dirname(os.path.abspath(__file__)) + os.sep, "<frozen importlib.")
_IMPORTLIB = os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep


def _is_machinery(filename: str) -> bool:
    return filename.startswith(_MACHINERY) or os.path.abspath(filename).startswith(_IMPORTLIB)


def app_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` with only the application's frames (and its chained
    exceptions'): what the user can act on, without the loader and importlib."""
    summary = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    pending = [summary]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not _is_machinery(frame.filename)]
        )
        pending += [chained for chained in (current.__cause__, current.__context__) if chained is not None]
    return "".join(summary.format())


def _evaluate(module: Any, module_name: str, expression: str) -> Any:
    try:
        node = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        raise AppLoadError(f"invalid application expression {expression!r}") from None
    if isinstance(node, ast.Call):
        target = _resolve(module, module_name, node.func, expression)
        if any(kw.arg is None for kw in node.keywords) or any(
            isinstance(arg, ast.Starred) for arg in node.args
        ):
            raise AppLoadError(
                f"factory arguments in {expression!r} must be literals, without * or ** unpacking"
            )
        try:
            args = [ast.literal_eval(arg) for arg in node.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            raise AppLoadError(
                f"factory arguments in {expression!r} must be literals (strings, numbers, ...)"
            ) from None
        if not callable(target):
            raise AppLoadError(f"{module_name}:{ast.unparse(node.func)} is not callable")
        try:
            return target(*args, **kwargs)
        except Exception as exc:
            raise AppLoadError(
                f"application factory {module_name}:{expression} failed: {type(exc).__name__}: {exc}",
                app_traceback(exc),
            ) from None
    return _resolve(module, module_name, node, expression)


def _resolve(module: Any, module_name: str, node: ast.expr, expression: str) -> Any:
    if isinstance(node, ast.Name):
        try:
            return getattr(module, node.id)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {node.id!r}") from None
    if isinstance(node, ast.Attribute):
        base = _resolve(module, module_name, node.value, expression)
        try:
            return getattr(base, node.attr)
        except AttributeError:
            raise AppLoadError(f"{module_name}:{ast.unparse(node)} does not exist") from None
    raise AppLoadError(f"invalid application expression {expression!r}")
