# danesync: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need (Debian packages through .ci/install-deps, a
# venv with current PyPI releases in .venv).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PY := /usr/bin/python3
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
PYTEST_ARGS ?=
# The lanes run pytest in TEST_WORKERS processes (pytest-xdist), a test file
# per worker at a time (--dist loadfile: a module's fixtures, such as its
# Postfix instance, start once). Most integration tests wait on TTLs and
# polls, not on the CPU, so 4 workers overlap their waits on 2 cores.
# `make test TEST_WORKERS=0` runs everything in one process. See docs/ci.md.
TEST_WORKERS ?= 4
XDIST = $$($(1) -c 'import xdist' 2>/dev/null && [ "$(TEST_WORKERS)" != 0 ] && echo "-n $(TEST_WORKERS) --dist loadfile")

.PHONY: all deps venv lint types test test-pypi test-debian test-trixie trixie-root-prefetch demo deb deb-check bench soak clean

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
	$(PY) -m pytest $(call XDIST,$(PY)) --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

# Lane 2: Debian 12's own python3-* packages (cryptography 38, dnspython 2.3,
# watchdog 2.2, structlog 22.3), as the .deb runs.
# The simulation (tests/sim) runs its 2,000 examples in the PyPI lane; the
# Debian lane runs a few hundred of the same (same machine, older Hypothesis).
# It runs every unit test and the integration tests of the code that goes
# through those libraries (DNS, the watcher and the daemon, chains, ARI); the
# tests of Postfix's and BIND's behaviour run once, in the PyPI lane, on the
# same programs. `make test-debian DEBIAN_TESTS=tests` runs everything.
DEBIAN_TESTS ?= -m "not slow" tests/unit tests/sim \
	tests/integration/test_address_fallback.py tests/integration/test_ari.py \
	tests/integration/test_cli_check.py tests/integration/test_daemon.py \
	tests/integration/test_dns_actions.py tests/integration/test_dns_check.py \
	tests/integration/test_dns_rollover.py tests/integration/test_dns_servers.py \
	tests/integration/test_dns_status.py tests/integration/test_find_zone.py \
	tests/integration/test_postfix_actions.py tests/integration/test_watcher.py
test-debian: deps
	DANESYNC_SIM_EXAMPLES=$${DANESYNC_SIM_EXAMPLES:-300} $(DEBIAN_PY) -m pytest -p no:cacheprovider $(call XDIST,$(DEBIAN_PY)) $(DEBIAN_TESTS) $(PYTEST_ARGS)

# Lane 3: Debian 13 (trixie) in a container on a cached debootstrapped root:
# its python3-* packages, Postfix 3.10, BIND 9.20, OpenSSL 3.5; the demo; the
# .deb built and linted there; the unit booted under its systemd 257.
# Needs root. TRIXIE_STEPS="tests deb" runs a subset (tests demo deb lab).
test-trixie: deps
	$(SUDO) env TEST_WORKERS=$(TEST_WORKERS) .ci/trixie-lane $(PYTEST_ARGS)

# A missing trixie root (the first run on a machine, or a changed
# .ci/install-deps) takes minutes to build, mostly downloading and
# unpacking: `make test` starts it in the background first, and test-trixie
# waits for it (.ci/trixie-root holds a lock while it builds).
trixie-root-prefetch: deps
	mkdir -p build
	$(SUDO) setsid .ci/trixie-root >build/trixie-root.log 2>&1 </dev/null &

test: deps trixie-root-prefetch lint types test-pypi test-debian deb-check test-trixie

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

# The rollover simulation with fresh random seeds for as long as asked:
# `make soak SOAK_SECONDS=3600`. A failure prints the shrunk sequence of events.
SOAK_SECONDS ?= 600
soak: venv
	DANESYNC_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -p no:cacheprovider -s tests/sim/test_soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* build dist *.egg-info daemon/*.egg-info
