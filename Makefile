# Two commands do everything: `make run` and `make test`.
# Both create .venv when it is missing and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := logplex drains shims

.PHONY: run test lint types unit peers fuzz perf clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py logplex/codecs/_syslogscan.c logplex/codecs/_cframes.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(VENV): $(STAMP)

run: $(STAMP)
	$(BIN)/logplex serve

# Real peers the interop tests talk to (rsyslog with its TLS driver, util-linux logger,
# nats-server for the cluster tests).
peers:
	@sh tests/install-peers.sh

lint: $(STAMP)
	$(BIN)/ruff check $(PACKAGES) tests perf
	$(BIN)/ruff format --check $(PACKAGES) tests perf

types: $(STAMP)
	$(BIN)/mypy --strict $(PACKAGES)

unit: $(STAMP) peers
	rm -f .coverage .coverage.*
	env -u PYTHONUNBUFFERED $(BIN)/coverage run -m pytest
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --include='logplex/codecs/*' --fail-under=100
	$(BIN)/coverage report --fail-under=0 > /dev/null

test: lint types unit

fuzz: $(STAMP)
	$(BIN)/python perf/fuzz_codecs.py --seconds $${SECONDS_TOTAL:-60}

clean:
	rm -rf $(VENV) .coverage .coverage.* *.egg-info build logplex/_syslogscan.*.so logplex/codecs/_cframes.*.so
