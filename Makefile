# pollcast — the front door: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-py test-js system-deps lint typecheck bench bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml clients/python/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e clients/python
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pollcast demo

system-deps:
	scripts/ensure-system-deps.sh

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check gateway tests clients/python
	$(VENV)/bin/mypy --strict gateway
	$(VENV)/bin/mypy --strict clients/python/pollcast_client
	$(MAKE) --no-print-directory test-py

test-py: $(STAMP)
	$(PY) -m pytest

# The Node tests need a live gateway and simulator: pytest starts them and runs
# `node --test` (tests/clients/js/test_node.py), so `make test-py` already covers this.
test-js: $(STAMP)
	$(PY) -m pytest tests/clients/js

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests clients/python
	$(VENV)/bin/ruff format --check gateway tests clients/python

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict gateway
	$(VENV)/bin/mypy --strict clients/python/pollcast_client

bench: $(STAMP)
	$(PY) -m tests.bench

bench-quick: $(STAMP)
	$(PY) -m tests.bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
