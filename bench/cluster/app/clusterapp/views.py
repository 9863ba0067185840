"""``GET /``: which host and version answered, and the newest row's id (a read).
``POST /items`` (form field ``token``, a UUID the client made): one row inserted, 201.
The token makes a POST applied twice visible: the bed counts rows per token."""

import os

from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed

from clusterapp.version import VERSION

HOST = os.environ.get("CLUSTER_HOST", "?")


def index(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM items")
        (newest,) = cursor.fetchone()
    return HttpResponse(f"host={HOST} version={VERSION} newest={newest}\n", content_type="text/plain")


def items(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    token = request.POST["token"]
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO items (token, host) VALUES (%s, %s) RETURNING id", [token, HOST])
        (row,) = cursor.fetchone()
    return HttpResponse(f"host={HOST} version={VERSION} id={row}\n", status=201, content_type="text/plain")
