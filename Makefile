# The two commands of the README: `make demo` and `make test` (`make test-fast`: no Ray).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# Ray's token authentication on for every cluster these targets start (set explicitly: left
# unset, it depends on whether ~/.ray/auth_token exists). The tests bring a token of their own
# (tests/conftest.py); `make demo` uses ~/.ray/auth_token, which Ray writes when missing.
export RAY_AUTH_MODE ?= token
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: test test-fast demo lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check clinfo_ray jobs tests benchmarks
	$(BIN)/ruff format --check clinfo_ray jobs tests benchmarks
	$(BIN)/mypy clinfo_ray jobs

test: lint
	$(BIN)/python -m pytest -q

# The inner loop: lint, then the unit tests only (the tests that need Ray are marked `ray`).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not ray"

demo: $(STAMP)
	$(BIN)/clinfo-ray demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
