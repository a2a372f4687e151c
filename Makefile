# Every check is one command, the same here and in CI (.ci/run calls `make test`).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTHON  ?= python3
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all install system-deps lint format test test-unit demo bench clean lock

all: test

# Debian packages the tests use: redis-server (a real broker), prometheus (promtool and a real
# server that scrapes the workers) and docker-compose (validates docker-compose.yml), chromium and
# chromium-driver (the review app's real-browser test). Installed only where missing.
APT_INSTALL := $(SUDO) apt-get install -y -qq --no-install-recommends
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; fi

# The virtualenv, pinned to exactly what CI tested (requirements.lock).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

install: system-deps $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The unit tier: in-process, no servers, no subprocesses (tests/unit/conftest.py refuses
# them); what a developer runs in a loop, in seconds.
test-unit: install
	$(PY) -m pytest -p no:xdist tests/unit

# Lint, the unit tier, then everything else two test files at a time (each file's fixtures
# stay in one process): the end-to-end tests mostly wait on worker processes, so this halves
# the wall time on 2 cores.
test: lint test-unit
	$(PY) -m pytest -n 2 --dist loadfile --ignore=tests/unit

demo: install
	$(VENV)/bin/labeler demo

bench: install
	$(PY) -m bench.inference
	$(PY) -m bench.retrain
	$(PY) -m bench.review

# Re-pin after changing dependencies in pyproject.toml.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^labeler' > requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
