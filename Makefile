# make run   - start the whole portal on its embedded defaults (SQLite, local folders, file broker)
# make test  - install test dependencies, start the services the tests use, run the test suite
# make test-fast - the same without the browser tests and the slow ones (the lane to run while working)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: install install-test ohif nginx run test test-fast lint check bench bench-orthanc clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test
	bin/install-system-packages

# The diagnostic viewer (OHIF): its prebuilt dist/ from the npm registry, pinned by ohif/package-lock.json.
OHIF_DIST := ohif/node_modules/@ohif/app/dist/index.html

$(OHIF_DIST): ohif/package.json ohif/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 18 or later (Debian: apt-get install nodejs npm) to get the OHIF viewer."; exit 1; }
	npm ci --prefix ohif --ignore-scripts --no-audit --no-fund
	touch $@

# Its files as the portal serves them (rewritten for the portal's prefixes, gzipped ahead), for nginx
# and the portal to serve without per-request work (studies/viewer/ohif.py).
OHIF_PREPARED := ohif/prepared/.prepared.json

$(OHIF_PREPARED): $(OHIF_DIST) $(VENV)/.installed
	$(BIN)/python manage.py ohif_prepare

ohif: $(OHIF_PREPARED)

# nginx, the web front of `make run` (Debian's nginx-light; bin/install-system-packages installs it).
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || bin/install-system-packages --run

run: install ohif nginx
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo --port $(PORT)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start -f Procfile -p $(PORT)

# The suite runs on one pytest-xdist worker per core (at most 4), each test file on one worker: most of
# a test's time is spent waiting on peers, workers and browsers. PYTEST_PARALLEL= runs it in one process.
PYTEST_PARALLEL ?= -n auto --maxprocesses 4 --dist loadfile

test: install-test ohif
	PATH=$(CURDIR)/$(BIN):$$PATH bin/with-test-services $(BIN)/pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: install-test ohif
	PATH=$(CURDIR)/$(BIN):$$PATH bin/with-test-services $(BIN)/pytest $(PYTEST_PARALLEL) -m "not browser and not slow" $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: install-test ohif
	PATH=$(CURDIR)/$(BIN):$$PATH bin/with-test-services $(BIN)/python bench/run_all.py $(BENCH_ARGS)

# Side by side with a private Orthanc (Debian's orthanc + orthanc-dicomweb); prints the ratios.
bench-orthanc: install-test
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/bench_orthanc.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
