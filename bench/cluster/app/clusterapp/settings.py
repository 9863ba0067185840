"""Settings: the database is the test bed's PostgreSQL, reached through its Unix socket
directory (a filesystem path crosses network namespaces; the hosts have no route to it
otherwise). Nothing else: no sessions, no CSRF (the load generator is not a browser)."""

import os

SECRET_KEY = "cluster-test-bed-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "clusterapp.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["CLUSTER_PG_SOCKET_DIR"],
        "PORT": os.environ.get("CLUSTER_PG_PORT", "5432"),
        "NAME": "cluster",
        "USER": "postgres",
        # One connection per worker thread, kept across requests, checked before reuse
        # (a restarted database must not fail the first request after it).
        "CONN_MAX_AGE": 600,
        "CONN_HEALTH_CHECKS": True,
    }
}
