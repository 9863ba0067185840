"""URL routes of the test project."""

from __future__ import annotations

from catalog import views
from django.urls import path

urlpatterns = [
    path("page/", views.page, name="page"),
    path("items/", views.items, name="items"),
    path("form/", views.form, name="form"),
    path("upload/", views.upload, name="upload"),
    path("stream/", views.stream, name="stream"),
    path("whoami/", views.whoami, name="whoami"),
]
