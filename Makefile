# genaug: two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

demo: install
	$(VENV)/bin/genaug quickstart

bench: install
	$(PY) -m benchmarks.run

lint: install
	$(VENV)/bin/ruff check models jobs cluster tests benchmarks
	$(VENV)/bin/ruff format --check models jobs cluster tests benchmarks

format: install
	$(VENV)/bin/ruff format models jobs cluster tests benchmarks
	$(VENV)/bin/ruff check --fix models jobs cluster tests benchmarks

clean:
	rm -rf $(VENV) genaug-data .pytest_cache
