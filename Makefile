# edgesam-export: set-up, demo, tests, lint and benchmarks. Every target sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build. Where pip has no
# local wheel of it, take it from PyTorch's CPU index:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
OUT ?= artifacts/demo
CKPT ?=
# `make artifacts`: build, check and fingerprint every recipe, then verify (what CI runs).
RECIPES ?= recipes/ci-smoke.yaml recipes/edge_sam.yaml recipes/edge_sam_3x.yaml
BUILD ?= artifacts/build
JOBS ?= 1

# The device install (no torch) and the artifacts it is tested on (exported by $(VENV)).
DEVICE_VENV ?= .venv-device
DEVICE_ART ?= artifacts/device-check
DEVICE_BUILD ?= artifacts/device-build

.PHONY: setup demo test test-heavy test-extended test-device test-coreml71 lint bench clean artifacts

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(DEVICE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEVICE_VENV)/bin/python -m pip install --quiet -e ".[onnxruntime,coreml]"
	touch $@

demo: setup
	$(BIN)/edgesam-export onnx $(CKPT) --output $(OUT)

test: setup
	$(BIN)/python -m pytest -q

# Every row marked `heavy` (large encoders: EfficientViT-SAM L1-XL1, SAM ViT-B/L/H, SlimSAM-50;
# minutes and GBs each): the one marker is the only gate.
test-heavy: setup
	$(BIN)/python -m pytest -q -m heavy

test-extended: setup
	$(BIN)/python -m pytest -q -m "extended and not heavy"

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

# The device path where torch is not installed at all: export with $(VENV), then run the
# predictor, edgesam-bench and parity (against the shipped golden outputs) from $(DEVICE_VENV).
test-device: setup $(DEVICE_VENV)/.installed
	rm -rf $(DEVICE_ART)
	$(BIN)/edgesam-export onnx --output $(DEVICE_ART)
	$(DEVICE_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
		|| (echo "$(DEVICE_VENV) has torch: not a device install" && false)
	$(DEVICE_VENV)/bin/python tests/device_check.py $(DEVICE_ART)
	rm -rf $(DEVICE_BUILD)
	$(BIN)/edgesam-export build recipes/device-check.yaml --output $(DEVICE_BUILD)
	for target in onnx coreml-decoder; do \
		$(DEVICE_VENV)/bin/edgesam-export parity $(DEVICE_BUILD)/device-check/$$target \
			--reference outputs --json $(DEVICE_BUILD)/parity-$$target.json || exit 1; \
	done

lint: setup
	$(BIN)/ruff check edgesam_export tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/bench_latency.py
	$(BIN)/python benchmarks/bench_processing.py
	$(BIN)/python benchmarks/bench_vs_official.py
	$(BIN)/python benchmarks/bench_web.py

artifacts: setup
	$(BIN)/edgesam-export build $(RECIPES) --output $(BUILD) --jobs $(JOBS) \
		$(if $(CKPT),--checkpoint $(CKPT)) --json $(BUILD)/build-report.json
	$(BIN)/edgesam-export verify $(BUILD)

clean:
	rm -rf $(VENV) $(DEVICE_VENV) $(CT71_VENV) artifacts .pytest_cache .ruff_cache .mypy_cache
