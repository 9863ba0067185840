"""Several ways to name a WSGI application in one module."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]

#: Every call of :func:`create_app`, so tests can tell whether a factory ran.
FACTORY_CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

NOT_CALLABLE = 42


def _reply(start_response: StartResponse, doc: object) -> list[bytes]:
    body = json.dumps(doc, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    return _reply(start_response, {"name": "application"})


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    return _reply(start_response, {"name": "app"})


class Holder:
    """An object with the application as an attribute (``MODULE:holder.wsgi``)."""

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return _reply(start_response, {"name": "holder.wsgi"})


holder = Holder()


def create_app(label: str = "default", n: int = 1) -> Callable[..., Iterable[bytes]]:
    """An application factory; the application reports the arguments it was built with."""
    FACTORY_CALLS.append(((label,), {"n": n}))

    def built(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return _reply(start_response, {"name": "factory", "label": label, "n": n})

    built.label = label  # type: ignore[attr-defined]
    built.n = n  # type: ignore[attr-defined]
    return built


def failing_factory() -> Callable[..., Iterable[bytes]]:
    raise LookupError("factory could not find its configuration")
