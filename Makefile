# Quick start: `make serve` runs the demo app, `make test` runs every check.
# Both create .venv on first use (Python >= 3.10 as $(PYTHON)); the package is
# installed compiled with mypyc (pure Python where no C compiler is available).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := $(shell find src -name '*.py') pyproject.toml setup.py

.PHONY: serve test lint typecheck unit unit-compiled unit-source docs bench bench-quick clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalled whenever a source file changes, so tests never run a stale build.
$(STAMP): $(VENV)/bin/python $(SOURCES)
	rm -rf build
	$(BIN)/pip install --quiet '.[test]'
	rm -rf build
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/rapidwsgi --bind 127.0.0.1:8000 --access-logfile - rapidwsgi.demo:app

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/rapidwsgi bench/run.py bench/hotpath.py bench/parser.py bench/strictness.py bench/modes.py

unit: unit-compiled unit-source

unit-compiled: $(STAMP)
	$(BIN)/python -m pytest -q

unit-source: $(STAMP)
	RAPIDWSGI_TEST_SOURCE=1 $(BIN)/python -m pytest -q

docs: $(STAMP)
	$(BIN)/python -m rapidwsgi.config > docs/settings.md

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) build src/*.egg-info
