"""The bundled demo app (``make serve``), through a real server, as a browser and curl use it."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def demo() -> Iterator[ServerProcess]:
    server = ServerProcess("rapidwsgi.demo:app")
    yield server
    server.stop()


def test_home_page_links_every_route(demo: ServerProcess) -> None:
    response = requests.get(demo.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    links = re.findall(r'<a href="([^"]+)">', response.text)
    assert links == ["/hello", "/json", "/stream?n=10", "/upload", "/environ"]


def test_upload_page_is_a_form_a_browser_can_submit_a_file_with(demo: ServerProcess) -> None:
    page = requests.get(demo.url + "/upload", timeout=10).text
    form = re.search(r"<form ([^>]*)>(.*?)</form>", page, re.S)
    assert form is not None
    assert 'method="post"' in form.group(1) and 'action="/upload"' in form.group(1)
    assert 'enctype="multipart/form-data"' in form.group(1)
    assert '<input type="file" name="file"' in form.group(2)
    assert '<button type="submit">' in form.group(2)


def test_file_uploaded_with_the_form_is_named_sized_and_hashed(demo: ServerProcess) -> None:
    content = bytes(range(256)) * 4000 + b"end"
    response = requests.post(
        demo.url + "/upload",
        files={"file": ("report <1>.pdf", content, "application/pdf")},
        timeout=10,
    )
    assert response.status_code == 200
    cells = [
        html.unescape(cell) for cell in re.findall(r"<td>(?:<code>)?(.*?)(?:</code>)?</td>", response.text)
    ]
    assert cells == [
        "report <1>.pdf",
        "application/pdf",
        str(len(content)),
        hashlib.sha256(content).hexdigest(),
    ]


def test_form_post_without_a_file_is_400(demo: ServerProcess) -> None:
    response = requests.post(demo.url + "/upload", files={"note": (None, "no file here")}, timeout=10)
    assert (response.status_code, response.text) == (400, "No file in the form.\n")


def test_raw_body_posted_like_curl_data_binary_is_echoed_back(demo: ServerProcess) -> None:
    body = b"\x00binary\xffbody" * 10000
    response = requests.post(
        demo.url + "/upload", data=body, headers={"Content-Type": "application/octet-stream"}, timeout=10
    )
    assert response.status_code == 200
    assert response.content == body
    assert response.headers["Content-Type"] == "application/octet-stream"


def test_hello_and_json(demo: ServerProcess) -> None:
    assert requests.get(demo.url + "/hello", timeout=10).text == "Hello, world!"
    doc = requests.get(demo.url + "/json", timeout=10).json()
    assert doc["message"] == "Hello, world!"
    assert doc["pid"] == demo.worker_pid
