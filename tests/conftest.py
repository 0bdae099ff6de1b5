"""Shared fixtures: golden files, loaded models and artifacts built once per test session.

Every `golden_*.npz` under tests/fixtures/edge_sam/ (and ../shared/fixtures/edge_sam/ when that
checkout sits beside this one) is a test case: golden tests are parametrised over the files and
read the weight seed, image and prompt sets from each file, so fixtures with other seeds, images
and prompts are checked by dropping them in.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.models import LoadedModel, load_model

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def _golden_files() -> list[Path]:
    found: dict[str, Path] = {}
    for directory in (FIXTURES / "edge_sam", SHARED / "edge_sam"):
        for path in sorted(directory.glob("golden_*.npz")):
            found.setdefault(path.name, path)  # the repo's copy wins over ../shared's
    return list(found.values())


GOLDEN_FILES = _golden_files()
GOLDEN = FIXTURES / "edge_sam" / "golden_seed0.npz"

torch.set_num_threads(2)


class Golden(dict):
    """The arrays of one golden file plus what the tests derive from them."""

    @property
    def seed(self) -> int:
        return int(json.loads(str(self["meta_json"]))["seed"])

    @property
    def original_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self["original_size"])  # type: ignore[return-value]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self["input_size"])  # type: ignore[return-value]

    def dec_sets(self) -> list[str]:
        """Prompt sets fed to the decoder wrapper: dec_<x>_point_coords/labels/masks/scores."""
        return sorted(
            k[4:-13] for k in self if k.startswith("dec_") and k.endswith("_point_coords")
        )

    def pred_sets(self) -> list[str]:
        """Prompt sets given to the official predictor (points and/or a box)."""
        names = {k.split("_")[1] for k in self if k.startswith("pred_")}
        return sorted(n for n in names if f"pred_{n}_single_masks" in self)

    def pred_prompt(self, name: str) -> dict[str, np.ndarray]:
        prompt = {}
        if f"pred_{name}_point_coords" in self:
            prompt["points"] = self[f"pred_{name}_point_coords"]
            prompt["labels"] = self[f"pred_{name}_point_labels"]
        if f"pred_{name}_box" in self:
            prompt["box"] = self[f"pred_{name}_box"]
        return prompt


def read_golden(path: Path) -> Golden:
    with np.load(path, allow_pickle=False) as data:
        return Golden({k: data[k] for k in data.files})


@pytest.fixture(scope="session", params=GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def golden(request: pytest.FixtureRequest) -> Golden:
    return read_golden(request.param)


@functools.cache
def model_for(seed: int, mode: str) -> LoadedModel:
    return load_model(None, upsample_mode=mode, seed=seed, synthetic="untrained")


@pytest.fixture(scope="session")
def bilinear_model(golden: Golden) -> LoadedModel:
    return model_for(golden.seed, "bilinear")


@pytest.fixture(scope="session")
def bicubic_model(golden: Golden) -> LoadedModel:
    return model_for(golden.seed, "bicubic")


@pytest.fixture(scope="session")
def default_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Default export (bicubic encoder + IoU decoder, seed 0) made through the pipeline."""
    from edgesam_export.host.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("default")
    export_artifacts(ModelOptions(synthetic="untrained"), "onnx", OnnxOptions(output=out))
    return out


@pytest.fixture(scope="session")
def bilinear_artifacts(
    tmp_path_factory: pytest.TempPathFactory, bilinear_model: LoadedModel, golden: Golden
) -> Path:
    """The official exports' flavour for the golden file's seed: bilinear encoder, plus IoU and
    stability decoders."""
    from edgesam_export.host.targets.onnx import export

    out = tmp_path_factory.mktemp(f"bilinear_seed{golden.seed}")
    export(bilinear_model, "encoder", OnnxOptions(output=out))
    export(bilinear_model, "decoder", OnnxOptions(output=out))
    export(bilinear_model, "decoder", OnnxOptions(output=out, use_stability_score=True))
    return out


@pytest.fixture(scope="session")
def bicubic_encoder_artifact(
    tmp_path_factory: pytest.TempPathFactory, bicubic_model: LoadedModel, golden: Golden
) -> Path:
    from edgesam_export.host.targets.onnx import export

    out = tmp_path_factory.mktemp(f"bicubic_seed{golden.seed}")
    return export(bicubic_model, "encoder", OnnxOptions(output=out)).path


@pytest.fixture(scope="session")
def family_artifacts(tmp_path_factory: pytest.TempPathFactory):
    """`family_artifacts(model, reference_outputs=True)`: a folder with the ONNX encoder and
    decoder of a registered variant (synthetic untrained weights, seed 0), exported once per
    session. With `reference_outputs` through the pipeline (reference outputs and manifest too);
    without, the two graphs alone (half the time). Shared by the web, report and TensorRT tests
    (EfficientViT-SAM-L0: 512 encoder input, prompts in the 1024 frame, /255 normalisation)."""
    from edgesam_export.host.pipeline import export_artifacts
    from edgesam_export.host.targets.onnx import export

    cache: dict[tuple[str, bool], Path] = {}

    def get(model: str, reference_outputs: bool = True) -> Path:
        if (model, True) in cache:
            return cache[(model, True)]
        if (model, reference_outputs) not in cache:
            out = tmp_path_factory.mktemp(model)
            if reference_outputs:
                options = ModelOptions(model=model, synthetic="untrained")
                export_artifacts(options, "onnx", OnnxOptions(output=out))
            else:
                loaded = load_model(None, model=model, synthetic="untrained")
                for graph in ("encoder", "decoder"):
                    export(loaded, graph, OnnxOptions(output=out))
            cache[(model, reference_outputs)] = out
        return cache[(model, reference_outputs)]

    return get


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (Playwright over the system's executable) for every browser test
    module; skips with the reason where Chromium or Playwright is missing."""
    from edgesam_export.web.browser import Chromium, browser_unavailable

    missing = browser_unavailable()
    if missing is not None:
        pytest.skip(missing)
    with Chromium() as chromium:
        yield chromium
