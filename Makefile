# edgesam-export: set-up, demo, tests, lint and benchmarks. Every target sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
OUT ?= artifacts/demo
CKPT ?=
# `make artifacts`: build, check and fingerprint every recipe, then verify (what CI runs).
RECIPES ?= recipes/ci-smoke.yaml recipes/edge_sam.yaml recipes/edge_sam_3x.yaml
BUILD ?= artifacts/build
JOBS ?= 1

.PHONY: setup demo test test-coreml71 lint bench clean artifacts

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

# The coremltools patches against coremltools 7.1 (EdgeSAM's version) in an environment of its own:
# 7.1 needs numpy < 2 and has wheels up to Python 3.11.
PYTHON311 ?= python3.11
CT71_VENV ?= .venv-ct71

test-coreml71: $(CT71_VENV)/.installed
	$(CT71_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_coreml_patches.py

$(CT71_VENV)/.installed: pyproject.toml
	$(PYTHON311) -m venv $(CT71_VENV)
	$(CT71_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CT71_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)" "coremltools==7.1" "numpy<2" "pytest>=8"
	$(CT71_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(CT71_VENV)/bin/python -m pip install --quiet "typer>=0.12" "rich>=13" "pydantic>=2.5" "pyyaml>=6"
	touch $@

lint: setup
	$(BIN)/ruff check edgesam_export tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/bench_latency.py
	$(BIN)/python benchmarks/bench_processing.py
	$(BIN)/python benchmarks/bench_vs_official.py

artifacts: setup
	$(BIN)/edgesam-export build $(RECIPES) --output $(BUILD) --jobs $(JOBS) \
		$(if $(CKPT),--checkpoint $(CKPT)) --json $(BUILD)/build-report.json
	$(BIN)/edgesam-export verify $(BUILD)

clean:
	rm -rf $(VENV) $(CT71_VENV) artifacts .pytest_cache .ruff_cache .mypy_cache
