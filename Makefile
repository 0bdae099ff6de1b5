# edgesam-export: set-up, demo, tests, lint and benchmarks. Every target sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
OUT ?= artifacts/demo
CKPT ?=

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/edgesam-export onnx $(CKPT) --output $(OUT)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check edgesam_export tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/bench_latency.py
	$(BIN)/python benchmarks/bench_processing.py
	$(BIN)/python benchmarks/bench_vs_official.py
	$(BIN)/python benchmarks/bench_web.py

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache .mypy_cache
