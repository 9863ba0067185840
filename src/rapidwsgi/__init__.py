"""rapidwsgi: a fast, strict HTTP/1.1 server for WSGI applications."""

__version__ = "0.1.0"
