# mypy: disable-error-code="import-untyped, misc"
"""WSGI entry point; creates and fills the SQLite table on first import if missing."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djbench.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()

ROWS = 200


def ensure_database() -> None:
    from django.db import connection, transaction

    from djbench.models import Entry

    if Entry._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(Entry)
    with transaction.atomic():
        if not Entry.objects.exists():
            Entry.objects.bulk_create(Entry(title=f"entry {i}", score=(i * 37) % 101) for i in range(ROWS))


ensure_database()
