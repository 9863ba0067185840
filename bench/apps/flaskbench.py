"""A Flask application for the benchmark: one Jinja2 template-rendered page.

The template is a file (templates/flaskbench/page.html), compiled once and cached by
Flask's Jinja2 environment, as in a real application.
"""

from __future__ import annotations

import datetime as dt

from flask import Flask, render_template

app = Flask(__name__)

ITEMS = [{"name": f"item number {i}", "price": i * 1.25} for i in range(20)]


@app.get("/")
def page() -> str:
    return render_template(
        "flaskbench/page.html",
        title="Flask benchmark page",
        now=dt.datetime.now(),
        visitor="anonymous",
        items=ITEMS,
    )
