# The front door: `make run`, `make test`, `make lint`, `make fmt`, `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint fmt bench assets clean-var

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $@

static_build/vendor/uplot.min.js: frontend/package.json frontend/package-lock.json
	bin/build-assets

# Front-end libraries come from npm at build time and are served as static files.
assets: static_build/vendor/uplot.min.js

install: $(VENV)/.installed assets

# Runs the whole platform on this machine: web, Celery worker and beat, gateway.
run: install
	@bin/kiln-run

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	SECRET_KEY=$${SECRET_KEY:-lint-only-key} $(BIN)/mypy .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The whole suite (lint first). PostgreSQL and Redis on 127.0.0.1 are required.
test: lint
	$(BIN)/pytest

# Without the docker, swarm and browser suites, for a quick loop.
test-fast: install
	$(BIN)/pytest -m "not docker and not swarm and not browser and not slow"

bench: install
	$(PY) bench/run_all.py
