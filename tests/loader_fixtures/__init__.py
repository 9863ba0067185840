"""Modules that ``rapidwsgi.loader.load_app`` is pointed at by test_config and test_cli."""
