# genaug: two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install datasets test test-fast demo bench lint format clean

install: $(STAMP) datasets

# The real Fashion-MNIST from Debian's dataset-fashion-mnist (30 MB, /usr/share/datasets/fashion-mnist),
# where this is root with apt; elsewhere the tests that need it skip and say why. Nothing else downloads.
FASHION_DIR := /usr/share/datasets/fashion-mnist
datasets:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "note: apt-get could not install dataset-fashion-mnist; its tests will skip"; \
	else echo "note: not root with apt: Fashion-MNIST tests will skip (apt-get install dataset-fashion-mnist)"; fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q --durations=25 tests

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
