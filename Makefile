# Everything a newcomer needs: `make demo` and `make test` install what they use.
VENV := .venv
PY := $(VENV)/bin/python
# The Python minor version the app runs on in Azure (infra/main.bicep, pythonVersion); the tests
# check the two agree. .ci/run installs it when the machine lacks it.
PYTHON ?= python3.11
# checkov lives in its own venv: it pins its own versions of libraries the app uses too.
CHECKOV_VENV := .venv-checkov
# make bench BENCH_PROFILES=5000000 BENCH_WORKERS=2 BENCH_LATENCY_MS=50
BENCH_PROFILES ?= 1000000
BENCH_WORKERS ?= 2
BENCH_LATENCY_MS ?= 50

.PHONY: install demo test lint format bench stop clean

install: $(VENV)/.installed $(CHECKOV_VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: install
	$(PY) -m devtools.demo

test: install lint
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/sandbox_bench.py
	$(PY) bench/client_bench.py
	$(PY) bench/export_bench.py --profiles $(BENCH_PROFILES) --workers $(BENCH_WORKERS) --latency-ms $(BENCH_LATENCY_MS)
	$(PY) bench/export_bench.py --profiles $(BENCH_PROFILES) --workers $(BENCH_WORKERS) --latency-ms $(BENCH_LATENCY_MS) --source cdm
	$(PY) bench/memory_bench.py --profiles 1000000 5000000
	$(PY) bench/stage_bench.py --profiles 1000000
	$(PY) bench/stage_bench.py --profiles 1000000 --delta

stop:
	$(PY) -m devtools.services stop

clean: stop
	rm -rf .local .devhost.log
