"""A Django project with the admin, for the static-files tests (tests/test_static_django.py).

``collectstatic`` writes to ``DJANGOADMIN_STATIC_ROOT`` with ManifestStaticFilesStorage
(fingerprinted names, as production uses them); rapidwsgi serves that directory with
``--static /static/=...:immutable``. The SQLite database lives in
``DJANGOADMIN_DB_DIR``; neither is ever in the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

for _name in ("DJANGOADMIN_STATIC_ROOT", "DJANGOADMIN_DB_DIR"):
    if not os.environ.get(_name):
        raise ImproperlyConfigured(f"set {_name} to a directory")

SECRET_KEY = "insecure-test-only-key-for-the-rapidwsgi-static-tests"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "djadmin.urls"
WSGI_APPLICATION = "djadmin.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": Path(os.environ["DJANGOADMIN_DB_DIR"]) / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = os.environ["DJANGOADMIN_STATIC_ROOT"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}
