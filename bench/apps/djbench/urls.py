# mypy: disable-error-code="import-untyped, misc"
"""Routes and views: ``/`` renders a template, ``/db/`` renders 20 rows of a query."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

from djbench.models import Entry

FEATURES = [
    {"name": "template inheritance", "done": True},
    {"name": "loops and filters", "done": True},
    {"name": "URL reversing", "done": True},
    {"name": "a database query", "done": False},
]


def index(request: HttpRequest) -> HttpResponse:
    context = {"title": "It worked!", "features": FEATURES, "visitor": request.GET.get("name", "anonymous")}
    return render(request, "djbench/index.html", context)


def db(request: HttpRequest) -> HttpResponse:
    entries = list(Entry.objects.filter(score__gte=10)[:20])
    return render(request, "djbench/db.html", {"title": "Top entries", "entries": entries})


urlpatterns = [
    path("", index, name="index"),
    path("db/", db, name="db"),
]
