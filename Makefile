# kestrelpy: `make serve` runs the server, `make test` runs the whole suite.
# Both create .venv on first use; `make test` also installs the Debian packages the tests
# drive (PHP with its memcached extension, memcached, prometheus, chromium and its
# driver, tmux, the STOMP brokers activemq and rabbitmq-server, redis-server and gcc for
# the bench's peers and C client): see .ci/system-deps.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck bench soak fuzz system-deps compiled test-compiled clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/kestrelpy serve --config server.conf

system-deps:
	@.ci/system-deps

test: $(VENV)/.installed-test system-deps
	$(BIN)/pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check kestrelpy tests loadtest examples
	$(BIN)/ruff format --check kestrelpy tests loadtest examples
	$(BIN)/mypy kestrelpy

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy kestrelpy

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

bench: $(VENV)/.installed-bench system-deps compiled
	$(BIN)/python -m loadtest.bench

# Long runs of tests/faults: the kill -9 crash loop (rounds per sync policy) and the live
# fuzz suite (hypothesis examples). SOAK_ROUNDS/FUZZ_EXAMPLES override the sizes.
SOAK_ROUNDS ?= 200
FUZZ_EXAMPLES ?= 5000

soak: $(VENV)/.installed-test
	KESTRELPY_SOAK_ROUNDS=$(SOAK_ROUNDS) $(BIN)/pytest -q -s tests/faults/test_crash_loop.py

fuzz: $(VENV)/.installed-test
	KESTRELPY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -s tests/faults/test_fuzz_live.py

# The optional compiled build (setup.py): the hot path's modules compiled with mypyc,
# installed (not editable: the install holds the built modules) into a venv of its own, so
# the default install and `make test` stay pure Python. `make test-compiled` runs the
# tests that drive real server processes against it; the bench's `-mypyc` columns use it.
COMPILED_VENV := .venv-compiled
COMPILED_BIN := $(COMPILED_VENV)/bin
# mypyc type-checks what it compiles: a new mypy with a new strict check must not break the
# build (and .ci/run) by itself, so the build's mypy is pinned
MYPYC_MYPY := mypy==2.4.1
PACKAGE_FILES := $(shell find kestrelpy -type f -not -path '*/__pycache__/*')

$(COMPILED_BIN)/python:
	$(PYTHON) -m venv $(COMPILED_VENV)
	$(COMPILED_BIN)/pip install -q --upgrade pip

# Dependencies first (mypyc reads their types), then kestrelpy itself, compiled. build/ is
# emptied first: setuptools never removes what an earlier build left there, and a module
# dropped from the list would ship its old compiled form.
$(COMPILED_VENV)/.installed: pyproject.toml setup.py $(PACKAGE_FILES) | $(COMPILED_BIN)/python
	rm -f $@
	$(COMPILED_BIN)/pip install -q 'setuptools>=68' wheel '$(MYPYC_MYPY)' '.[test]'
	rm -rf build
	KESTRELPY_MYPYC=1 $(COMPILED_BIN)/pip install -q --no-build-isolation --no-deps --force-reinstall .
	touch $@

compiled: system-deps $(COMPILED_VENV)/.installed

# The suites whose servers run the compiled request path (every test there starts real
# server processes); KPTEST_EXPECT_COMPILED makes tests/conftest.py refuse a pure install.
COMPILED_TESTS ?= tests/integration tests/faults

test-compiled: compiled
	KPTEST_EXPECT_COMPILED=1 $(COMPILED_BIN)/pytest -q $(COMPILED_TESTS)

clean:
	rm -rf $(VENV) $(COMPILED_VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
