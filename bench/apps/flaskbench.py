"""A Flask application for the benchmark: one Jinja2 template-rendered page."""

from __future__ import annotations

import datetime as dt

from flask import Flask, render_template_string

app = Flask(__name__)

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title }}</title></head>
<body>
<h1>{{ title }}</h1>
<p>Rendered at {{ now.strftime("%Y-%m-%d %H:%M:%S") }} for {{ visitor|e }}.</p>
<ul>{% for item in items %}<li class="{{ loop.cycle('odd', 'even') }}">{{ item.name|title }}:
{{ "%.2f"|format(item.price) }}</li>{% endfor %}</ul>
</body>
</html>
"""
ITEMS = [{"name": f"item number {i}", "price": i * 1.25} for i in range(20)]


@app.get("/")
def page() -> str:
    return render_template_string(
        PAGE, title="Flask benchmark page", now=dt.datetime.now(), visitor="anonymous", items=ITEMS
    )
