# evio for Python: the two commands a new user needs are `make run` and
# `make test`. Both set up .venv first; it is reinstalled only when
# pyproject.toml changes (the stamp file records the last install).

PYTHON ?= python3
PORT   ?= 5000
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp

# Material for MkDocs prints a banner about MkDocs 2.0 on every build.
export NO_MKDOCS_2_WARNING := 1

.PHONY: venv sysdeps run run-redis run-http bench test conformance conformance-results docs docs-serve clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test,docs]'
	touch $@

run: venv
	$(BIN)/python examples/echo_server.py --port $(PORT)

# The Redis clone on 127.0.0.1:6380; try `redis-cli -p 6380 ping`.
run-redis: venv
	$(BIN)/python examples/redis_server.py --port 6380

# The HTTP server on 127.0.0.1:8080 (and HTTPS on 4443 with a throwaway certificate).
run-http: venv
	$(BIN)/python examples/http_server.py --port 8080

# The system programs the tests drive (curl, wrk, redis-tools, openssl, ps,
# chromium, python3-venv): installed with apt-get when run as root on
# Debian, otherwise a stop that names the command to run.
sysdeps:
	bash tools/sysdeps.sh

# Each step must pass before the next one starts.
test: sysdeps venv
	$(BIN)/ruff check evio examples spec_tests tools tutorial bench conformance
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/python -m pytest
	$(BIN)/python tools/conformance_run.py
	$(BIN)/mkdocs build --strict --site-dir site

# Every committed API conformance target (conformance/targets/*/manifest.toml,
# the reference aside) run on its [run] subset, and checked: red when a run
# differs from what its manifest declares. `make conformance-results`
# rewrites the committed results (every poller and family).
conformance: venv
	$(BIN)/python tools/conformance_run.py

conformance-results: venv
	$(BIN)/python tools/conformance_run.py --full --write

# The docs site, as published (see .github/workflows/docs.yml).
docs: venv
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: venv
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

clean:
	rm -rf $(VENV) site build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
