"""WSGI entry point of the admin test project."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djadmin.settings")
application = get_wsgi_application()
