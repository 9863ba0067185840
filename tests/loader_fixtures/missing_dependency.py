"""A module that exists but imports a module that does not."""

from __future__ import annotations

import rapidwsgi_fixture_absent_dependency  # type: ignore[import-not-found]  # noqa: F401

app = None
