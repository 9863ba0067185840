"""Build script: pure Python by default (see pyproject.toml)."""

from setuptools import setup

setup()
