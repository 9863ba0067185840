"""A small Flask application that tests/test_frameworks.py serves with rapidwsgi.

Routes: a rendered template page, a urlencoded form POST, a multipart file upload, a
streamed response whose generator reads the request (``stream_with_context``) and a
route reporting how Flask sees the request URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from flask import Flask, Response, jsonify, render_template_string, request, stream_with_context

app = Flask(__name__)

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title }}</title></head>
<body>
<h1>Hello, {{ visitor }}</h1>
<ul>{% for n in numbers %}<li>{{ n }}</li>{% endfor %}</ul>
</body>
</html>
"""


@app.get("/page")
def page() -> str:
    return render_template_string(
        PAGE, title="Flask page", visitor=request.args.get("name", "anonymous"), numbers=range(1, 4)
    )


@app.post("/form")
def form() -> Response:
    return jsonify(fields=request.form.to_dict(flat=False), content_type=request.mimetype)


@app.post("/upload")
def upload() -> Response:
    uploaded = request.files["file"]
    digest = hashlib.sha256()
    size = 0
    while True:
        block = uploaded.stream.read(65536)
        if not block:
            break
        digest.update(block)
        size += len(block)
    return jsonify(
        name=uploaded.filename, size=size, sha256=digest.hexdigest(), note=request.form.get("note", "")
    )


@app.get("/stream")
def stream() -> Response:
    def lines() -> Iterator[str]:
        # Reading request.args inside the generator needs the request context kept alive.
        count = request.args.get("n", 10, type=int)
        prefix = request.args.get("prefix", "line")
        for i in range(count):
            yield f"{prefix} {i:05d} " + "." * 90 + "\n"

    return Response(stream_with_context(lines()), mimetype="text/plain")


@app.get("/whoami")
def whoami() -> Response:
    return jsonify(url=request.url, host=request.host, url_root=request.url_root)
