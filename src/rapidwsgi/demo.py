"""The bundled demo application: ``rapidwsgi rapidwsgi.demo:app``.

Routes: ``/`` an HTML page, ``/hello`` plain text, ``/json`` a JSON document,
``/stream?n=N`` a chunked stream of N lines, ``/upload`` a file-upload form (GET), the
name, size and SHA-256 of the file a browser uploaded with it (a multipart POST), or an
echo of any other request body (POST, streamed back as it is read), ``/environ`` the WSGI environ
as JSON (handy when checking what a proxy passes through).
"""

from __future__ import annotations

import email.policy
import hashlib
import html
import json
import os
from collections.abc import Iterable, Iterator
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs

from . import __version__

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>rapidwsgi demo</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem}}
code{{background:#f3f3f3;padding:0 .25rem}}</style></head>
<body>
<h1>It works: rapidwsgi {version}</h1>
<p>This page is served by the bundled demo application (process {pid}).</p>
<ul>
<li><a href="/hello">/hello</a>: plain text</li>
<li><a href="/json">/json</a>: a JSON document</li>
<li><a href="/stream?n=10">/stream?n=10</a>: a chunked stream</li>
<li><a href="/upload">/upload</a>: upload a file, get it echoed back</li>
<li><a href="/environ">/environ</a>: the WSGI environ of your request</li>
</ul>
<p>You asked for <code>{path}</code> with <code>{method}</code>.</p>
</body></html>
"""

_FORM = b"""<!doctype html><html><head><meta charset="utf-8"><title>upload</title></head>
<body><h1>Upload a file</h1>
<form method="post" action="/upload" enctype="multipart/form-data">
<p><input type="file" name="file" required> <button type="submit">Upload</button></p>
</form>
<p>The page that comes back names the file, its size and its SHA-256. Any other POST body
is echoed back as it is read, e.g.
<code>curl --data-binary @file http://127.0.0.1:8000/upload</code></p>
</body></html>
"""

#: The demo reads a browser's multipart upload into memory: bounded.
MAX_FORM_UPLOAD = 16 << 20

_UPLOADED = """<!doctype html><html><head><meta charset="utf-8"><title>uploaded</title></head>
<body><h1>Uploaded</h1><table>
<tr><th>file</th><td>{name}</td></tr><tr><th>type</th><td>{ctype}</td></tr>
<tr><th>bytes</th><td>{size}</td></tr><tr><th>SHA-256</th><td><code>{digest}</code></td></tr>
</table><p><a href="/upload">Upload another</a></p></body></html>
"""


def _form_files(content_type: str, body: bytes) -> list[tuple[str, str, bytes]]:
    """(filename, content type, content) of each file in a multipart/form-data body."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    files = []
    for part in message.iter_parts():
        name = part.get_filename()
        if name is not None:
            payload = part.get_payload(decode=True)
            files.append((name, part.get_content_type(), payload if isinstance(payload, bytes) else b""))
    return files


def _upload_page(environ: Environ, start_response: Any) -> list[bytes]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or "0")
    except ValueError:
        length = -1
    if length < 0 or length > MAX_FORM_UPLOAD:
        return _respond(start_response, "413 Content Too Large", "text/plain", b"Upload up to 16 MiB here.\n")
    files = _form_files(environ.get("CONTENT_TYPE", ""), environ["wsgi.input"].read(length))
    if not files:
        return _respond(start_response, "400 Bad Request", "text/plain", b"No file in the form.\n")
    name, ctype, content = files[0]
    page = _UPLOADED.format(
        name=html.escape(name),
        ctype=html.escape(ctype),
        size=len(content),
        digest=hashlib.sha256(content).hexdigest(),
    )
    return _respond(start_response, "200 OK", "text/html; charset=utf-8", page.encode())


Environ = dict[str, Any]


def _respond(start_response: Any, status: str, ctype: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def _stream(count: int) -> Iterator[bytes]:
    for i in range(count):
        yield f"line {i + 1} of {count}\n".encode()


def _echo(stream: Any, size: int | None) -> Iterator[bytes]:
    remaining = size
    while remaining is None or remaining > 0:
        block = stream.read(65536 if remaining is None else min(65536, remaining))
        if not block:
            return
        if remaining is not None:
            remaining -= len(block)
        yield block


def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    method = environ["REQUEST_METHOD"]
    if path == "/":
        page = _PAGE.format(
            version=__version__,
            pid=os.getpid(),
            path=html.escape(path),
            method=html.escape(method),
        )
        return _respond(start_response, "200 OK", "text/html; charset=utf-8", page.encode())
    if path == "/hello":
        return _respond(start_response, "200 OK", "text/plain", b"Hello, world!")
    if path == "/json":
        doc = {"message": "Hello, world!", "server": environ.get("SERVER_SOFTWARE"), "pid": os.getpid()}
        return _respond(start_response, "200 OK", "application/json", json.dumps(doc).encode())
    if path == "/stream":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            count = max(0, min(int(query.get("n", ["10"])[0]), 100_000))
        except ValueError:
            count = 10
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return _stream(count)
    if path == "/upload":
        if method == "POST" and environ.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
            return _upload_page(environ, start_response)
        if method == "POST":
            length = environ.get("CONTENT_LENGTH")
            headers = [("Content-Type", environ.get("CONTENT_TYPE") or "application/octet-stream")]
            if length:
                headers.append(("Content-Length", length))
            start_response("200 OK", headers)
            return _echo(environ["wsgi.input"], int(length) if length else None)
        return _respond(start_response, "200 OK", "text/html; charset=utf-8", _FORM)
    if path == "/environ":
        doc = {k: v for k, v in environ.items() if isinstance(v, (str, int, bool))}
        return _respond(
            start_response, "200 OK", "application/json", json.dumps(doc, indent=1, sort_keys=True).encode()
        )
    return _respond(start_response, "404 Not Found", "text/plain", b"Not Found\n")


application = app
