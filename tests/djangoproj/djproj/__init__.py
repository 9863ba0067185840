"""A minimal Django project that tests/test_frameworks.py serves with rapidwsgi."""
