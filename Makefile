# The two commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE :=

.DEFAULT_GOAL := help
.PHONY: help setup run run-celery test test-fast lint stop status clean lock lock-side loadtest
# the one command that writes requirements.lock (every pinned version, with hashes)
LOCK_CMD := $(PY) -m uv pip compile pyproject.toml --extra dev --extra serving --extra airflow \
	--extra stack --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--custom-compile-command "make lock" --quiet -o requirements.lock
# the side venvs' locks (scripts/setup.sh): MLflow's server, MLServer (what decides a forecast
# constrained to requirements.lock's versions), the KServe SDK wheel the manifest checks read
LOCK_SIDE := $(PY) -m uv pip compile --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --custom-compile-command "make lock" --quiet
FORECAST_PINS := numpy|scipy|scikit-learn|skops|treelite|pandas|pyarrow|joblib|threadpoolctl|pandera|pyyaml|prometheus-client
SIDE_LOCKS := requirements-mlflow.lock requirements-mlserver.lock requirements-schemas.lock

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock $(SIDE_LOCKS) scripts/setup.sh
	./scripts/setup.sh
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install everything (Debian packages when missing)

run: $(STAMP) ## set up, start the local stack and run the whole pipeline on the default data
	./scripts/run.sh

run-celery: $(STAMP) ## `make run` with Airflow on PostgreSQL + CeleryExecutor, two workers
	AQ_AIRFLOW_PROFILE=celery ./scripts/run.sh

# `make test` runs on TEST_WORKERS pytest-xdist workers: many tests wait on services (Airflow,
# Prometheus, gunicorn), so three workers keep 2 cores busy; a unit (a file, or a directory
# sharing a dear session fixture) stays on one worker, longest first (tests/scheduling.py).
# TEST_WORKERS=0: serial.
TEST_WORKERS ?= 3

test: $(STAMP) ## set up and run the whole test suite (no network)
	$(PY) -m pytest -m "not network" -n $(TEST_WORKERS) $(PYTEST_ARGS)

# the fast tier: tests that start no process (no service, no browser, no CLI) and fit no model;
# tests/tiers.py fails a test outside these markers that starts or fits one anyway
# CPU-bound, so one xdist worker per core (a third only adds its start-up)
FAST_WORKERS ?= 2
FAST_TIER := not network and not slow and not stack and not airflow and not process and not service and not browser and not train

test-fast: $(STAMP) ## pure logic and single steps in-process: no process, no training (under a minute)
	$(PY) -m pytest -m "$(FAST_TIER)" -n $(FAST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, and the layering contracts of pyproject.toml (import-linter)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-logo

loadtest: $(STAMP) ## Locust load test of the running serving app, with the SLO gate
	@if [ -f .stack/env ]; then source .stack/env; fi; $(PY) -m serving.loadtest $(LOADTEST_ARGS)

stop: ## stop the local services `make run` (or run-celery) started (supervisord and all it runs)
	@if [ -x $(PY) ]; then $(PY) -m stack stop; fi

status: ## the local services and their state (supervisorctl status)
	@if [ -x $(PY) ]; then $(PY) -m stack status; else echo "not set up: make run"; fi

lock: ## re-resolve requirements.lock from pyproject.toml (after changing dependencies), then install it
	@[ -x $(PY) ] || ./scripts/setup.sh
	$(LOCK_CMD) --upgrade
	$(MAKE) --no-print-directory lock-side
	./scripts/setup.sh
	@touch $(STAMP)

lock-side: ## re-resolve the side venvs' locks (MLflow server, MLServer, KServe schemas)
	$(LOCK_SIDE) requirements-mlflow.in -o requirements-mlflow.lock
	grep -E '^($(FORECAST_PINS))==' requirements.lock | sed 's/ \\$$//' > .forecast-pins.txt
	$(LOCK_SIDE) requirements-mlserver.in -c .forecast-pins.txt -o requirements-mlserver.lock
	@rm -f .forecast-pins.txt
	$(LOCK_SIDE) --no-deps requirements-schemas.in -o requirements-schemas.lock

clean: stop ## remove generated outputs (keeps data/ and the venv)
	rm -rf build reports predictions models metrics.json .stack
