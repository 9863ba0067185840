"""Real Django and Flask applications served end to end by ``python -m rapidwsgi``.

The Django project is tests/djangoproj (SQLite database in a temporary directory,
tables created with ``migrate --run-syncdb``); the Flask application is
tests/flaskapp.py. Each is served inline and with ``--threads 4``.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, TESTS, ServerProcess

DJANGO_DIR = TESTS / "djangoproj"
ITEMS = [("anvil", 2500), ("bucket", 400), ("compass", 1299)]
MODES = {"inline": (), "threads": ("--threads", "4")}


def _upload_payload() -> bytes:
    return os.urandom(3 * 1024 * 1024)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stream_lines(prefix: str, n: int) -> str:
    return "".join(f"{prefix} {i:05d} " + "." * 90 + "\n" for i in range(n))


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def django_db_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database with the catalog table (created by Django) and three rows."""
    db_dir = tmp_path_factory.mktemp("djangodb")
    env = {
        **os.environ,
        "DJANGOPROJ_DB_DIR": str(db_dir),
        "PYTHONPATH": os.pathsep.join([str(DJANGO_DIR), str(ROOT / "src")]),
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--run-syncdb", "--verbosity", "0"],
        cwd=DJANGO_DIR,
        env=env,
        check=True,
        timeout=60,
    )
    with sqlite3.connect(db_dir / "db.sqlite3") as db:
        db.executemany("INSERT INTO catalog_item (name, price_cents) VALUES (?, ?)", ITEMS)
    return db_dir


@pytest.fixture(scope="module", params=list(MODES))
def django_server(request: pytest.FixtureRequest, django_db_dir: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        "djproj.wsgi:application",
        "--chdir",
        str(DJANGO_DIR),
        *MODES[request.param],
        env={"DJANGOPROJ_DB_DIR": str(django_db_dir)},
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=list(MODES))
def flask_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    server = ServerProcess("flaskapp:app", *MODES[request.param])
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ Django


def test_django_page_is_rendered_from_its_template_as_html(django_server: ServerProcess) -> None:
    response = requests.get(f"{django_server.url}/page/", params={"name": "<b>Ann</b>"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>Catalog</title>" in response.text
    assert "<h1>Hello, &lt;b&gt;Ann&lt;/b&gt;</h1>" in response.text  # autoescaped by the engine
    assert "<ul><li>1</li><li>2</li><li>3</li></ul>" in response.text
    assert "<p>Path: /page/</p>" in response.text


def test_django_orm_query_returns_rows_from_sqlite(django_server: ServerProcess) -> None:
    everything = requests.get(f"{django_server.url}/items/", timeout=10).json()
    assert everything == {
        "items": [{"name": name, "price_cents": price} for name, price in ITEMS],
        "total": 3,
    }
    filtered = requests.get(f"{django_server.url}/items/", params={"min_price": 1000}, timeout=10).json()
    assert [row["name"] for row in filtered["items"]] == ["anvil", "compass"]


def test_django_csrf_exempt_form_post_echoes_urlencoded_fields(django_server: ServerProcess) -> None:
    fields = [("name", "Ann Example"), ("tags", "a"), ("tags", "b&c"), ("note", "1 + 1 = 2 ✓")]
    response = requests.post(f"{django_server.url}/form/", data=fields, timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "fields": {"name": ["Ann Example"], "tags": ["a", "b&c"], "note": ["1 + 1 = 2 ✓"]},
        "content_type": "application/x-www-form-urlencoded",
    }


def test_django_upload_view_without_csrf_token_is_forbidden(django_server: ServerProcess) -> None:
    # csrf_exempt is on the form view only: the upload view stays protected.
    response = requests.post(f"{django_server.url}/upload/", files={"file": ("a.txt", b"tiny")}, timeout=10)
    assert response.status_code == 403


def test_django_multipart_upload_of_3mb_reports_size_and_sha256(django_server: ServerProcess) -> None:
    data = _upload_payload()
    with requests.Session() as session:
        form_page = session.get(f"{django_server.url}/upload/", timeout=10)
        assert form_page.status_code == 200
        token = session.cookies["csrftoken"]
        assert 'name="csrfmiddlewaretoken"' in form_page.text
        response = session.post(
            f"{django_server.url}/upload/",
            data={"csrfmiddlewaretoken": token, "note": "three megabytes"},
            files={"file": ("payload.bin", data, "application/octet-stream")},
            timeout=30,
        )
    assert response.status_code == 200, response.text[:500]
    assert response.json() == {
        "name": "payload.bin",
        "size": len(data),
        "reported_size": len(data),
        "sha256": _sha(data),
        "note": "three megabytes",
    }


def test_django_streaming_response_arrives_in_full_and_chunked(django_server: ServerProcess) -> None:
    with requests.get(
        f"{django_server.url}/stream/", params={"n": 2000}, stream=True, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        body = b"".join(response.iter_content(chunk_size=None))
    assert body.decode() == _stream_lines("line", 2000)


def test_django_unknown_path_is_404(django_server: ServerProcess) -> None:
    response = requests.get(f"{django_server.url}/no/such/page/", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")


def test_django_build_absolute_uri_reflects_the_host_header(django_server: ServerProcess) -> None:
    response = requests.get(
        f"{django_server.url}/whoami/?a=1&b=two", headers={"Host": "localhost:8123"}, timeout=10
    )
    assert response.json() == {
        "absolute_uri": "http://localhost:8123/whoami/?a=1&b=two",
        "host": "localhost:8123",
        "is_secure": False,
    }
    default = requests.get(f"{django_server.url}/whoami/", timeout=10).json()
    assert default["absolute_uri"] == f"{django_server.url}/whoami/"


def test_django_rejects_a_host_header_outside_allowed_hosts(django_server: ServerProcess) -> None:
    response = requests.get(f"{django_server.url}/whoami/", headers={"Host": "evil.example"}, timeout=10)
    assert response.status_code == 400


# ------------------------------------------------------------------ Flask


def test_flask_page_is_rendered_from_its_template_as_html(flask_server: ServerProcess) -> None:
    response = requests.get(f"{flask_server.url}/page", params={"name": "<i>Bo</i>"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>Flask page</title>" in response.text
    assert "<h1>Hello, &lt;i&gt;Bo&lt;/i&gt;</h1>" in response.text
    assert "<ul><li>1</li><li>2</li><li>3</li></ul>" in response.text


def test_flask_form_post_echoes_urlencoded_fields(flask_server: ServerProcess) -> None:
    fields = [("name", "Bo Example"), ("tags", "x"), ("tags", "y=z"), ("note", "naïve café")]
    response = requests.post(f"{flask_server.url}/form", data=fields, timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "fields": {"name": ["Bo Example"], "tags": ["x", "y=z"], "note": ["naïve café"]},
        "content_type": "application/x-www-form-urlencoded",
    }


def test_flask_multipart_upload_of_3mb_reports_size_and_sha256(flask_server: ServerProcess) -> None:
    data = _upload_payload()
    response = requests.post(
        f"{flask_server.url}/upload",
        data={"note": "three megabytes"},
        files={"file": ("payload.bin", data, "application/octet-stream")},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:500]
    assert response.json() == {
        "name": "payload.bin",
        "size": len(data),
        "sha256": _sha(data),
        "note": "three megabytes",
    }


def test_flask_stream_with_context_response_arrives_in_full_and_chunked(flask_server: ServerProcess) -> None:
    with requests.get(
        f"{flask_server.url}/stream", params={"n": 2000, "prefix": "row"}, stream=True, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        body = b"".join(response.iter_content(chunk_size=None))
    assert body.decode() == _stream_lines("row", 2000)


def test_flask_unknown_path_is_404(flask_server: ServerProcess) -> None:
    response = requests.get(f"{flask_server.url}/no/such/page", timeout=10)
    assert response.status_code == 404
    assert "Not Found" in response.text


def test_flask_request_url_reflects_the_host_header(flask_server: ServerProcess) -> None:
    response = requests.get(
        f"{flask_server.url}/whoami?q=1", headers={"Host": "example.test:9090"}, timeout=10
    )
    assert response.json() == {
        "url": "http://example.test:9090/whoami?q=1",
        "host": "example.test:9090",
        "url_root": "http://example.test:9090/",
    }
