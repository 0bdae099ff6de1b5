"""Calibrated synthetic weights: fp16-safe activations, deterministic, labelled, round-trips."""

from __future__ import annotations

import torch

from edgesam_export.host.metadata import base_metadata
from edgesam_export.host.models import load_model
from edgesam_export.host.models.calibration import activation_peak, calibration_input

FP16_MAX = 65504.0


def test_raw_fixture_weights_overflow_fp16_and_calibrated_do_not():
    raw = load_model(None, synthetic="untrained")
    cal = load_model(None, synthetic="calibrated")
    assert activation_peak(raw.model, raw.spec) > FP16_MAX  # why calibration exists
    peak = activation_peak(cal.model, cal.spec)
    assert peak < FP16_MAX / 100, peak
    with torch.no_grad():
        emb = cal.model.image_encoder(calibration_input(cal.spec))
    assert torch.isfinite(emb.half().float()).all()


def test_calibration_changes_only_batchnorm_statistics_and_is_deterministic():
    raw = load_model(None, synthetic="untrained").model.state_dict()
    a = load_model(None, synthetic="calibrated")
    b = load_model(None, synthetic="calibrated")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    changed = {k for k in raw if not torch.equal(raw[k], sa[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_calibrated_weights_are_labelled():
    cal = load_model(None, synthetic="calibrated", seed=3)
    meta = base_metadata(cal, graph="encoder", use_stability_score=False)
    assert meta["weights"] == "synthetic-calibrated"
    assert meta["weights_source"] == "synthetic-calibrated(seed=3)"
    raw = load_model(None, synthetic="untrained", seed=2)
    assert (raw.weights, raw.source) == ("synthetic-untrained", "synthetic-untrained(seed=2)")


def test_one_default_and_one_set_of_names_in_library_and_cli():
    """The library once defaulted to untrained ("random") weights and the CLI to calibrated."""
    import inspect
    from typing import get_args

    from edgesam_export.cli import Synthetic, model_options
    from edgesam_export.host.config import ModelOptions, SyntheticKind

    names = {"untrained", "calibrated"}
    assert {s.value for s in Synthetic} == set(get_args(SyntheticKind)) == names
    assert inspect.signature(load_model).parameters["synthetic"].default == "calibrated"
    assert ModelOptions().synthetic == "calibrated"
    assert model_options(None, "edge_sam").synthetic == "calibrated"  # no --synthetic given
    assert model_options(None, "edge_sam", synthetic=Synthetic.untrained).synthetic == "untrained"


def test_parity_rebuilds_the_weights_the_artifacts_record():
    from types import SimpleNamespace

    from edgesam_export.host.pipeline import _model_options

    def sessions(weights: str, source: str) -> list:
        meta = {"model": "edge_sam", "graph": "encoder", "upsample_mode": "bicubic"}
        return [SimpleNamespace(metadata={**meta, "weights": weights, "weights_source": source})]

    cal = _model_options(None, sessions("synthetic-calibrated", "synthetic-calibrated(seed=4)"))
    assert (cal.synthetic, cal.seed) == ("calibrated", 4)
    raw = _model_options(None, sessions("synthetic-untrained", "synthetic-untrained(seed=2)"))
    assert (raw.synthetic, raw.seed) == ("untrained", 2)
