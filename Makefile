# danesync: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need (Debian packages through .ci/install-deps, a
# venv with current PyPI releases in .venv).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PY := /usr/bin/python3
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all deps venv lint types test test-pypi test-debian demo deb deb-check bench clean

all: test

deps:
	$(SUDO) bash .ci/install-deps

$(VENV)/.installed: pyproject.toml
	$(DEBIAN_PY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,systemd]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check daemon tests $(wildcard bench)
	$(VENV)/bin/ruff format --check daemon tests $(wildcard bench)

types: venv
	$(VENV)/bin/mypy

# Lane 1: current PyPI releases of every library.
test-pypi: deps venv
	$(PY) -m pytest --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

# Lane 2: Debian 12's own python3-* packages (cryptography 38, dnspython 2.3,
# watchdog 2.2, structlog 22.3), as the .deb runs.
test-debian: deps
	$(DEBIAN_PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

test: deps lint types test-pypi test-debian deb-check

demo: deps venv
	$(PY) -m tests.demo

# The Debian package: build/danesync_<version>_all.deb (build tree in build/deb/).
deb: deps
	.ci/deb-build

# Build, lintian, install the .deb with apt here, run the installed danesync
# against generated lineages, check the unit, purge. Needs root.
deb-check: deps
	$(SUDO) .ci/deb-check

# The figures go to bench/results/ and (full runs only) docs/benchmarks.md.
# `make bench BENCH_ARGS=--quick` for a shorter run.
BENCH_ARGS ?=
bench: deps venv
	$(PY) -m bench --update-docs $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build dist *.egg-info daemon/*.egg-info
