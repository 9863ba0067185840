"""The catalog's one table (created with ``migrate --run-syncdb``: there are no migrations)."""

from __future__ import annotations

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100, unique=True)
    price_cents = models.PositiveIntegerField()

    class Meta:
        app_label = "catalog"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
