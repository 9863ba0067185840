# Quick start: `make serve` runs the demo app, `make test` runs every check.
# Both create .venv on first use (Python >= 3.10 as $(PYTHON)); the package is
# installed compiled with mypyc (pure Python where no C compiler is available).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve
SOURCES := $(shell find src -name '*.py' -o -name '*.pyi' -o -name '*.c') pyproject.toml setup.py

.PHONY: serve test test-fast lint typecheck unit unit-compiled unit-mypyc unit-source asan valgrind fuzz-c \
	docs bench bench-quick bench-selftest bench-instructions bench-leak bench-rss bench-static bench-metrics bench-overload bench-adaptive \
	cluster clean

$(VENV)/bin/python:
	@echo "make: creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalled whenever a source file changes, so tests never run a stale build.
$(STAMP): $(VENV)/bin/python $(SOURCES)
	@echo "make: installing rapidwsgi (compiled with mypyc) and the test tools into $(VENV) ..."
	rm -rf build
	$(BIN)/pip install --quiet '.[test]'
	rm -rf build
	touch $(STAMP) $(SERVE_STAMP)

# Serving needs only rapidwsgi itself (httptools, uvloop): not the test toolchain.
$(SERVE_STAMP): $(VENV)/bin/python $(SOURCES)
	@echo "make: installing rapidwsgi into $(VENV): dependencies, then compiling the hot path with mypyc (about a minute) ..."
	rm -rf build
	$(BIN)/pip install --progress-bar on .
	rm -rf build
	touch $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	@echo "make: serving the demo app on http://127.0.0.1:8000 (Ctrl-C stops it)"
	$(BIN)/rapidwsgi --bind 127.0.0.1:8000 --access-logfile - rapidwsgi.demo:app

test: lint typecheck unit asan

# For development (CI runs `make test`): the checks and one pass of the suite, against the
# installed build only, without the benchmark self-test (RAPIDWSGI_SKIP_BENCH=1) or asan.
test-fast: export RAPIDWSGI_SKIP_BENCH = 1
test-fast: lint typecheck unit-compiled

lint: $(STAMP)
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/rapidwsgi bench/hotpath.py bench/leak.py bench/parser.py bench/strictness.py
	$(BIN)/mypy --strict bench/run.py bench/common.py bench/peers.py bench/front.py bench/probe.py \
		bench/report.py bench/charts.py bench/modes.py bench/instructions.py bench/static.py bench/metrics_cost.py bench/overload.py bench/adaptive.py bench/rss.py tests/test_bench.py \
		tests/test_bench_instructions.py tests/test_kubernetes.py tests/test_cluster.py \
		tests/test_exchange_unit.py tests/test_connection_unit.py tests/test_master_unit.py
	cd bench/apps && ../../$(BIN)/mypy --strict hello.py big.py flaskbench.py djbench _target.py \
		run_bjoern.py run_fastwsgi.py run_gevent.py run_meinheld.py uvloop_floor.py static_whitenoise.py sleepy.py
	cd bench/cluster && ../../$(BIN)/mypy --strict cluster.py bed.py load.py

# Every build: the C request path (with the mypyc-compiled modules), the mypyc modules
# alone (RAPIDWSGI_NO_C=1), and the pure-Python sources.
unit: unit-compiled unit-mypyc unit-source

unit-compiled: $(STAMP)
	$(BIN)/python -m pytest -q

unit-mypyc: $(STAMP)
	RAPIDWSGI_NO_C=1 $(BIN)/python -m pytest -q

unit-source: $(STAMP)
	RAPIDWSGI_TEST_SOURCE=1 $(BIN)/python -m pytest -q

# The C path built with AddressSanitizer (and UBSan) in a copy of the sources; the
# differential tests and the server tests run against it (servers inherit LD_PRELOAD).
# (Not the RSS bound of a large upload: ASan's quarantine keeps freed memory resident.)
ASAN_DIR := build/asan
PY_INCLUDE = $(shell $(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
PY_EXT = $(shell $(BIN)/python -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
asan: $(STAMP)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR) && cp -r src/rapidwsgi $(ASAN_DIR)/
	rm -rf $(ASAN_DIR)/rapidwsgi/__pycache__
	gcc -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
		-Wall -Wextra -Werror -fPIC -shared -I$(PY_INCLUDE) src/rapidwsgi/_cfast.c \
		-o $(ASAN_DIR)/rapidwsgi/_cfast$(PY_EXT)
	RAPIDWSGI_TEST_SOURCE=1 RAPIDWSGI_TEST_SRC=$(ASAN_DIR) RAPIDWSGI_REQUIRE_C=1 PYTHONMALLOC=malloc \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_cpath.py tests/test_cparser_fuzz.py \
		tests/test_server_http.py tests/test_server_wsgi.py tests/test_server_timeouts.py \
		tests/test_static_cpath.py tests/test_static_server.py tests/test_metrics.py tests/test_metrics_server.py tests/test_ops.py \
		-k "not behind_nginx and not test_curl" \
		--deselect tests/test_server_wsgi.py::test_large_upload_to_an_app_that_never_reads_is_not_buffered

docs: $(STAMP)
	$(BIN)/python -m rapidwsgi.config > docs/settings.md

# The benchmark installs the peers (and a compiled rapidwsgi) into bench/.venv-peers and
# needs wrk, ab (apache2-utils), nginx and libev-dev: see bench/README.md.
bench:
	$(PYTHON) bench/run.py

bench-quick:
	$(PYTHON) bench/run.py --quick

bench-selftest:
	$(PYTHON) bench/run.py --selftest --servers rapidwsgi,waitress

# Instructions per request under callgrind (valgrind needed): rapidwsgi as installed in $(VENV), the
# uvloop floor, and bjoern, fastwsgi and granian from bench/.venv-peers (about 4 minutes once installed).
bench-instructions: $(STAMP)
	$(BIN)/python bench/instructions.py --breakdown

clean:
	rm -rf $(VENV) build src/*.egg-info

# RSS over 1M keep-alive requests and 100k new connections through the request path.
bench-leak: $(STAMP)
	cd bench && ../$(BIN)/python leak.py

# Master and worker memory (RSS, PSS, USS) of --workers 2, idle and after wrk (bench/rss.py; ~40 s).
bench-rss: $(STAMP)
	$(BIN)/python bench/rss.py --python $(BIN)/python

# Static files against nginx, uWSGI, granian and WhiteNoise (bench/static.py; ~15 min).
bench-static:
	python3 bench/static.py

# What --metrics-bind costs: hello world with metrics on vs off (bench/metrics_cost.py; ~5 min).
bench-metrics:
	python3 bench/metrics_cost.py

# Load shedding under wrk -c500 against a 0.5 s application (bench/overload.py; ~1 min).
bench-overload: $(STAMP)
	python3 bench/overload.py

# The multi-host test bed, full size (root: network namespaces): every scenario behind
# HAProxy and nginx, 3 runs of the rolling upgrade and restart. About 8 minutes.
cluster: $(STAMP)
	$(BIN)/python bench/cluster/cluster.py

# Adaptive worker count under a stepped load, c=2 -> 20 -> 2 against a 50 ms application
# (bench/adaptive.py; about 1 min).
bench-adaptive: $(STAMP)
	python3 bench/adaptive.py
