# mypy: disable-error-code="import-untyped, misc"
"""The one table of the benchmark project (created by djbench.wsgi.ensure_database)."""

from __future__ import annotations

from django.db import models


class Entry(models.Model):
    title = models.CharField(max_length=100)
    score = models.IntegerField()

    class Meta:
        app_label = "djbench"
        ordering = ["-score"]

    def __str__(self) -> str:
        return str(self.title)
