# Every target sets itself up: a virtual environment in .venv, torch (CPU build) first where none is
# present, then this package with its dev extra. Works with no GPU and no network beyond PyPI/Debian.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-output
DEMO_ARGS ?=
SERVE_ARGS ?= --backend opencv

.PHONY: setup demo serve test lint format bench browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for the web page's browser tests (Debian's package; needs root to install).
browser:
	@bash scripts/ensure-chromium.sh

demo: setup
	$(VENV)/bin/batch-inpaint demo --output $(DEMO_OUT) $(DEMO_ARGS)

# A local page to try the model: http://127.0.0.1:7860 (opencv backend offline; SERVE_ARGS to change).
serve: setup
	$(VENV)/bin/batch-inpaint serve $(SERVE_ARGS)

test: setup browser
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m bench smoke

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
