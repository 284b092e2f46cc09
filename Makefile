# pollcast — the front door: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The suite starts a hundred Python processes: they share compiled bytecode even
# where the environment says not to write it (an empty value lets Python write).
export PYTHONDONTWRITEBYTECODE =

.PHONY: demo test test-py test-passes test-js system-deps lint typecheck check-ruff check-mypy-gateway check-mypy-client compile-tests bench bench-quick bench-redis-ops lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Exactly what CI tested: every dependency pinned in requirements.lock (`make lock`
# refreshes it from pyproject.toml), then the two packages themselves without
# resolving anything else. pip installs only uv, at the version the lock pins;
# uv installs the rest (seconds where pip takes half a minute).
UV_PIN := $(shell grep -m1 '^uv==' requirements.lock | cut -d' ' -f1)

$(STAMP): requirements.lock pyproject.toml clients/python/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(UV_PIN)"
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -r requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e . -e clients/python
	touch $(STAMP)

lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml clients/python/pyproject.toml \
	  --extra dev --extra bench --python-version 3.11 --no-header \
	  --annotation-style line -o requirements.lock

demo: $(STAMP)
	$(VENV)/bin/pollcast demo

system-deps:
	scripts/ensure-system-deps.sh

# The checks, and one collection that compiles the tests (pytest rewrites their
# asserts) so that the workers do not each compile them again at once, side by
# side on both cores; then the suite.
test: $(STAMP) system-deps
	@$(MAKE) --no-print-directory -j 4 --output-sync=target \
	  check-ruff check-mypy-gateway check-mypy-client compile-tests
	@$(MAKE) --no-print-directory test-passes

check-ruff: $(STAMP)
	$(VENV)/bin/ruff check gateway tests clients/python

# Each check its own cache: two mypy processes starting side by side on one empty
# cache can crash (an INTERNAL ERROR seen on a fresh clone).
check-mypy-gateway: $(STAMP)
	$(VENV)/bin/mypy --strict --cache-dir .mypy_cache/gateway gateway

check-mypy-client: $(STAMP)
	$(VENV)/bin/mypy --strict --cache-dir .mypy_cache/client clients/python/pollcast_client

compile-tests: $(STAMP)
	@$(PY) -m pytest -p no:xdist --collect-only -qq > /dev/null || true

# Two passes: the suite on $(PYTEST_WORKERS) xdist workers (most of its time is
# spent waiting on timelines and live servers, not on CPU), then the tests marked
# `solo` (bounds on latency, memory or request rates that need a quiet machine)
# on $(SOLO_WORKERS): each of them leaves most of a core idle. Both always run;
# either failing fails the target. tests/scheduling.py orders the collection
# so that the workers finish together.
PYTEST_WORKERS ?= 6
SOLO_WORKERS ?= 2

test-py: compile-tests
	@$(MAKE) --no-print-directory test-passes

test-passes: $(STAMP)
	@status=0; \
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -m "not solo" || status=$$?; \
	$(PY) -m pytest -n $(SOLO_WORKERS) --dist worksteal -m solo || status=$$?; \
	exit $$status

# The Node tests need a live gateway and simulator: pytest starts them and runs
# `node --test` (tests/clients/js/test_node.py), so `make test-py` already covers this.
test-js: $(STAMP)
	$(PY) -m pytest tests/clients/js

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway tests clients/python
	$(VENV)/bin/ruff format --check gateway tests clients/python

typecheck: check-mypy-gateway check-mypy-client

bench: $(STAMP)
	$(PY) -m tests.bench

bench-quick: $(STAMP)
	$(PY) -m tests.bench --quick

# Redis commands per poll, per commit, per subscribe (README, Scaling)
bench-redis-ops: $(STAMP)
	$(PY) -m tests.bench.redis_ops

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
