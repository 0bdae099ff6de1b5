"""Shared fixtures: the golden file, loaded models and artifacts built once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam_export.config import ModelOptions, OnnxOptions
from edgesam_export.models import LoadedModel, load_model

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "edge_sam" / "golden_seed0.npz"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def bilinear_model() -> LoadedModel:
    return load_model(None, upsample_mode="bilinear")


@pytest.fixture(scope="session")
def bicubic_model() -> LoadedModel:
    return load_model(None, upsample_mode="bicubic")


@pytest.fixture(scope="session")
def default_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Default export (bicubic encoder + IoU decoder) made through the library pipeline."""
    from edgesam_export.pipeline import export_artifacts

    out = tmp_path_factory.mktemp("default")
    export_artifacts(ModelOptions(), "onnx", OnnxOptions(output=out))
    return out


@pytest.fixture(scope="session")
def bilinear_artifacts(
    tmp_path_factory: pytest.TempPathFactory, bilinear_model: LoadedModel
) -> Path:
    """The official exports' flavour: bilinear encoder, plus IoU and stability decoders."""
    from edgesam_export.targets.onnx import export

    out = tmp_path_factory.mktemp("bilinear")
    export(bilinear_model, "encoder", OnnxOptions(output=out))
    export(bilinear_model, "decoder", OnnxOptions(output=out))
    export(bilinear_model, "decoder", OnnxOptions(output=out, use_stability_score=True))
    return out
