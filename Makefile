# One command to set up and run, one to set up and test.  See README.md.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test setup test-deps wheel-smoke bench lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## run: set up, create ./demo (SQLite, outgoing mail as .eml files in demo/var/outgoing) and run the daemon
run: $(STAMP)
	@test -f demo/mailticket.toml || $(BIN)/mailticket init demo
	$(BIN)/mailticket --config demo/mailticket.toml run

## test-deps: what the tests talk to: Dovecot (IMAP) and a running PostgreSQL
test-deps:
	@bash scripts/test-deps.sh

## test: set up everything the tests need and run the whole suite (SQLite and PostgreSQL)
test: $(STAMP) test-deps
	$(BIN)/pytest -q -n 2 --dist loadgroup

## wheel-smoke: build the wheel, install it into a fresh venv, init + ingest + show one ticket
wheel-smoke: $(STAMP)
	VENV_PY=$(BIN)/python PY=$(PY) bash scripts/wheel-smoke.sh

## bench: the benchmarks, printing figures and ratios to their baselines
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

## lint: ruff (lint and format) and mypy on the package, at pinned versions
lint: $(STAMP)
	$(BIN)/pip install --quiet 'ruff==0.17.6' 'mypy==2.4.1'
	$(BIN)/ruff check mailticket
	$(BIN)/ruff format --check mailticket
	$(BIN)/mypy mailticket

clean:
	rm -rf $(VENV) demo .pytest_cache
