# Every target sets itself up: a virtual environment in .venv, torch and a matching torchvision
# first where they are not both present, then this package with its dev extra. Works with no GPU
# and no network beyond PyPI/Debian.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-output
DEMO_ARGS ?=
SERVE_ARGS ?= --backend opencv
# The lama backend's spandrel needs torchvision, and PyPI's torchvision only imports beside the
# torch it was built for: a matching pair (on x86_64 a CUDA build, which runs on the CPU too).
ifeq ($(shell uname -m),aarch64)
TORCH_PAIR ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: setup demo serve test lint format bench browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for the web page's browser tests (Debian's package; needs root to install).
browser:
	@bash scripts/ensure-chromium.sh

# The job on the bundled samples with the best backend that runs here (SD2 with a GPU and its
# weights, else LaMa with big-lama weights, else OpenCV); it says which, and why.
# DEMO_ARGS="--model DIR" picks local weights; --backend tiny is random weights (noise).
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

# Wheels the GPU machine lacks (diffusers, spandrel) for scripts/gpu-check.sh: docs/benchmarks.md.
.PHONY: gpu-wheels
gpu-wheels:
	bash scripts/prepare-gpu-wheels.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
