"""Settings of the test project.

The SQLite database lives in the directory named by ``DJANGOPROJ_DB_DIR`` (a temporary
directory created by the tests), never in the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_db_dir = os.environ.get("DJANGOPROJ_DB_DIR")
if not _db_dir:
    raise ImproperlyConfigured("set DJANGOPROJ_DB_DIR to a directory for the SQLite database")

SECRET_KEY = "insecure-test-only-key-for-the-rapidwsgi-test-suite"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["catalog"]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "djproj.urls"
WSGI_APPLICATION = "djproj.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": Path(_db_dir) / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Uploads larger than this go to a temporary file (the 3 MB test upload does).
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# With DEBUG off Django only mails errors; print them to stderr (the server's error log).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False}},
}
