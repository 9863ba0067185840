"""A small Django project for the benchmark: a template page and a SQLite query page."""
