# Two commands do all set-up on a fresh machine:
#   make demo   - install everything, start a private Dovecot, fill a shared inbox, run keepword
#   make test   - install everything, then lint, type-check and run every test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

system-deps:
	$(PYTHON) scripts/mailserver install
	$(PYTHON) scripts/pgserver install

demo: $(STAMP) system-deps
	$(PY) scripts/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) system-deps
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest

test: lint typecheck pytest

bench: $(STAMP) system-deps
	$(PY) bench/import.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
