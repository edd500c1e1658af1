# treeship: `make demo` and `make test` install everything they need, then run.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.treeship-installed

.PHONY: setup demo test lint bench clean help

help:
	@echo "make demo   install, then release a sample tree into ./releases, signed, and show it"
	@echo "make test   install, then run ruff and the whole test suite"
	@echo "make bench  install, then time treeship release against ostree commit"
	@echo "make setup  only install (Debian packages if missing, the venv at $(VENV))"

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	@touch $@

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check src tests $(wildcard bench)

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/release_bench.py

clean:
	rm -rf $(VENV) releases demo .pytest_cache .ruff_cache .cache
