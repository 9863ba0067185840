"""Views covering the kinds of request a Django site handles.

A rendered template, an ORM query, a CSRF-exempt form POST, a CSRF-protected file
upload, a streaming response and URL building from the Host header.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .models import Item


@require_GET
def page(request: HttpRequest) -> HttpResponse:
    context = {
        "title": "Catalog",
        "visitor": request.GET.get("name", "anonymous"),
        "numbers": range(1, 4),
    }
    return render(request, "catalog/page.html", context)


@require_GET
def items(request: HttpRequest) -> JsonResponse:
    min_price = int(request.GET.get("min_price", "0"))
    rows = Item.objects.filter(price_cents__gte=min_price).values("name", "price_cents")
    return JsonResponse({"items": list(rows), "total": Item.objects.count()})


@csrf_exempt
@require_POST
def form(request: HttpRequest) -> JsonResponse:
    fields = {key: request.POST.getlist(key) for key in request.POST}
    return JsonResponse({"fields": fields, "content_type": request.content_type})


@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        # Renders a form with {% csrf_token %}, which also sets the csrftoken cookie.
        return render(request, "catalog/upload.html")
    uploaded = request.FILES["file"]
    digest = hashlib.sha256()
    size = 0
    for chunk in uploaded.chunks():
        digest.update(chunk)
        size += len(chunk)
    return JsonResponse(
        {
            "name": uploaded.name,
            "size": size,
            "reported_size": uploaded.size,
            "sha256": digest.hexdigest(),
            "note": request.POST.get("note", ""),
        }
    )


@require_GET
def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = int(request.GET.get("n", "10"))

    def lines() -> Iterator[str]:
        for i in range(count):
            yield f"line {i:05d} " + "." * 90 + "\n"

    return StreamingHttpResponse(lines(), content_type="text/plain; charset=utf-8")


@require_GET
def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "absolute_uri": request.build_absolute_uri(),
            "host": request.get_host(),
            "is_secure": request.is_secure(),
        }
    )
