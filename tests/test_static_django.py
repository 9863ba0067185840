"""A real Django project's static files, served by rapidwsgi alone, in a real browser.

``collectstatic`` (ManifestStaticFilesStorage: fingerprinted names) fills a directory
that rapidwsgi serves with ``--static /static/=DIR:immutable``; headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, driven by selenium) loads the admin's
login page, and the test checks that the admin's stylesheets were fetched and applied:
the computed style of the page header is the one ``admin/css/base.css`` gives it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TESTS, ServerProcess
from tests.rawhttp import RawConnection

PROJECT = TESTS / "djangoadmin"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# base.css: #header { background: var(--header-bg) }, --header-bg: var(--secondary),
# --secondary: #417690 (the light theme, which headless Chromium uses).
HEADER_BACKGROUND = "rgb(65, 118, 144)"


def _browser_missing() -> str | None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return "chromium and chromedriver are not installed (Debian: chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    base = tmp_path_factory.mktemp("djangoadmin")
    static_root = base / "static"
    env = {
        "DJANGOADMIN_STATIC_ROOT": str(static_root),
        "DJANGOADMIN_DB_DIR": str(base),
        "PYTHONPATH": str(PROJECT),
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=PROJECT,
        env={**os.environ, **env},
        check=True,
        timeout=120,
    )
    server = ServerProcess(
        "djadmin.wsgi:application",
        "--static",
        f"/static/={static_root}:immutable",
        cwd=PROJECT,
        env=env,
    )
    yield server, static_root
    server.stop()


def _get(server: ServerProcess, path: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    with RawConnection(server.address) as conn:
        response = conn.request(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    return response.status, {k.lower(): v for k, v in response.headers}, response.body


def test_collectstatic_output_is_served_with_fingerprinted_names(project: tuple[ServerProcess, Path]) -> None:
    server, static_root = project
    status, _, page = _get(server, "/admin/login/")
    assert status == 200
    links = re.findall(rb'href="(/static/admin/css/[^"]+\.css)"', page)
    assert b"/static/admin/css/base.css" not in links  # the manifest's names, not the originals
    base_css = next(link.decode() for link in links if re.search(rb"/base\.[0-9a-f]{12}\.css$", link))
    status, headers, body = _get(server, base_css)
    assert status == 200
    assert body == (static_root / base_css.removeprefix("/static/")).read_bytes()
    assert headers["content-type"] == "text/css; charset=utf-8"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    status, _, _ = _get(server, base_css, f"If-None-Match: {headers['etag']}\r\n")
    assert status == 304


def test_admin_page_loads_its_css_in_chromium(project: tuple[ServerProcess, Path]) -> None:
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("RAPIDWSGI_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    server, _ = project
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
    ):
        options.add_argument(arg)
    # Offline: selenium must not look for drivers or browsers on the network.
    os.environ["SE_OFFLINE"] = "true"
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"http://127.0.0.1:{server.port}/admin/login/")
        sheets = driver.execute_script(
            "return Array.from(document.styleSheets).map(s => [s.href, s.cssRules.length])"
        )
        background = driver.execute_script(
            "return getComputedStyle(document.getElementById('header')).backgroundColor"
        )
        statuses = driver.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter(e => e.name.includes('/static/')).map(e => [e.name, e.responseStatus])"
        )
    finally:
        driver.quit()
    css = [(href, rules) for href, rules in sheets if href and "/static/admin/css/" in href]
    assert any("/static/admin/css/base." in href for href, _ in css), sheets
    assert all(rules > 0 for _, rules in css), css  # every stylesheet parsed with its rules
    assert background == HEADER_BACKGROUND
    assert statuses and all(status == 200 for _, status in statuses), statuses
