"""Nothing ships untested: every registered variant has a golden test and an export test.

The tables below are derived-against, not hand-waved: `test_every_registered_variant_is_tested`
compares them with the registry, so registering a variant (any family) fails this module until
the variant is added to both tables, and every table entry names a test that exists. The
export table drives `test_export_and_parity` itself: "default" rows run in `make test`,
"heavy" rows (large encoders: minutes and hundreds of MB each on 2 cores) run with
`pytest -m heavy`. `COREML` is the CoreML column (its rows run in test_coreml_families.py), and
`test_verified_targets_match_the_test_tables` ties each spec's `verified_targets` to these
per-target tables in both directions, so `edgesam-export models` claims exactly what is tested.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgesam_export.host.config import ModelOptions, OnnxOptions
from edgesam_export.host.models import list_specs, load_model
from edgesam_export.host.pipeline import export_artifacts, verify_artifacts

# variant -> (test module, test function) of its golden test. Variants without an official
# fixture are pinned by their layout test (built model == official configuration's layout and
# parameter count) and exported below.
_EVIT_GOLDEN = ("test_efficientvit", "test_predictor_matches_golden_at_the_original_size")
GOLDEN: dict[str, tuple[str, str]] = {
    "edge_sam": ("test_models", "test_encoder_matches_golden"),
    "efficientvit_sam_l0": _EVIT_GOLDEN,
    "efficientvit_sam_xl0": _EVIT_GOLDEN,
    "efficientvit_sam_l1": ("test_efficientvit", "test_layout_matches_built_model"),
    "efficientvit_sam_l2": ("test_efficientvit", "test_layout_matches_built_model"),
    "efficientvit_sam_xl1": ("test_efficientvit", "test_layout_matches_built_model"),
    "sam_vit_b": ("test_sam_families", "test_encoder_matches_golden"),
    "mobile_sam": ("test_sam_families", "test_encoder_matches_golden"),
    "slimsam_77": ("test_sam_families", "test_encoder_matches_golden"),
    "sam_vit_l": ("test_sam_families", "test_layout_matches_built_model"),
    "sam_vit_h": ("test_sam_families", "test_layout_matches_built_model"),
    "slimsam_50": ("test_sam_families", "test_layout_matches_built_model"),
    "edgetam": ("test_edgetam", "test_encoder_matches_golden"),
}  # fmt: skip

# variant -> where its ONNX export + parity test runs: "default" / "heavy" (this module), or
# (module, function) of an existing test.
_SAM_HEAVY = (
    "test_sam_families",
    "test_heavy_variant_loads_its_checkpoint_exports_and_passes_parity",
)
EXPORT: dict[str, str | tuple[str, str]] = {
    "edge_sam": ("test_targets_onnx", "test_encoder_on_onnxruntime_matches_golden"),
    "efficientvit_sam_l0": "default",
    "efficientvit_sam_l1": "heavy",
    "efficientvit_sam_l2": "heavy",
    "efficientvit_sam_xl0": "heavy",
    "efficientvit_sam_xl1": "heavy",
    # SAM, MobileSAM, SlimSAM: their export tests live in test_sam_families.py (the large
    # encoders marked `heavy` there).
    "mobile_sam": ("test_sam_families", "test_onnx_export_passes_parity"),
    "slimsam_77": ("test_sam_families", "test_onnx_export_passes_parity"),
    "sam_vit_b": _SAM_HEAVY,
    "sam_vit_l": _SAM_HEAVY,
    "sam_vit_h": _SAM_HEAVY,
    "slimsam_50": _SAM_HEAVY,
    "edgetam": ("test_edgetam", "test_device_predictor_reproduces_goldens_without_torch"),
}

# variant -> where its CoreML (fp32) export + parity test runs: "default" / "heavy" rows run in
# tests/test_coreml_families.py, or (module, function) of an existing test. A variant without a
# row is not CoreML-verified (its spec's verified_targets must not say "coreml").
COREML: dict[str, str | tuple[str, str]] = {
    "edge_sam": ("test_targets_coreml", "test_fp32_parity_end_to_end_on_the_saved_packages"),
    "efficientvit_sam_l0": "default",
    "mobile_sam": "default",
    "slimsam_77": "default",
    "efficientvit_sam_l1": "heavy",
    "efficientvit_sam_l2": "heavy",
    "efficientvit_sam_xl0": "heavy",
    "efficientvit_sam_xl1": "heavy",
    "sam_vit_b": "heavy",
    "sam_vit_l": "heavy",
    "sam_vit_h": "heavy",
    "slimsam_50": "heavy",
    # all six graphs on the MIL executor: image goldens (extended) and video goldens (heavy)
    "edgetam": ("test_edgetam_coreml", "test_coreml_tracker_matches_golden_video_torch_blocked"),
}

# variant -> the test that exports its fp32 ExecuTorch encoder + decoder and passes parity on
# executorch.runtime (tests/test_executorch.py; its FAMILIES rows join here once they have run).
EXECUTORCH: dict[str, str | tuple[str, str]] = {
    "edge_sam": (
        "test_executorch",
        "test_encoder_and_decoder_pass_parity_on_the_executorch_runtime",
    ),
    # rows of test_executorch.FAMILIES that ran and passed (-m heavy)
    "mobile_sam": ("test_executorch", "test_family_programs_pass_parity_on_the_executorch_runtime"),
    "efficientvit_sam_l0": (
        "test_executorch",
        "test_family_programs_pass_parity_on_the_executorch_runtime",
    ),
    "efficientvit_sam_xl0": (
        "test_executorch",
        "test_family_programs_pass_parity_on_the_executorch_runtime",
    ),
    "efficientvit_sam_l1": (
        "test_executorch",
        "test_family_programs_pass_parity_on_the_executorch_runtime",
    ),
    "efficientvit_sam_l2": (
        "test_executorch",
        "test_family_programs_pass_parity_on_the_executorch_runtime",
    ),
    "efficientvit_sam_xl1": (
        "test_executorch",
        "test_family_programs_pass_parity_on_the_executorch_runtime",
    ),
    "slimsam_77": ("test_executorch", "test_family_programs_pass_parity_on_the_executorch_runtime"),
    "sam_vit_b": ("test_executorch", "test_family_programs_pass_parity_on_the_executorch_runtime"),
    "sam_vit_l": ("test_executorch", "test_family_programs_pass_parity_on_the_executorch_runtime"),
    "sam_vit_h": ("test_executorch", "test_family_programs_pass_parity_on_the_executorch_runtime"),
    "slimsam_50": ("test_executorch", "test_family_programs_pass_parity_on_the_executorch_runtime"),
    # image graphs only (the video graphs are not exported by default: docs/executorch.md)
    "edgetam": ("test_executorch", "test_edgetam_programs_pass_parity_on_the_executorch_runtime"),
}

# target -> its export + parity test table; every target a spec's verified_targets names
# needs one (test_verified_targets_match_the_test_tables).
TARGET_TABLES: dict[str, dict[str, str | tuple[str, str]]] = {
    "onnx": EXPORT,
    "coreml": COREML,
    "executorch": EXECUTORCH,
}


def _exists(module: str, function: str) -> bool:
    return callable(getattr(importlib.import_module(module), function, None))


def test_every_registered_variant_is_tested():
    registered = {s.name for s in list_specs()}
    assert registered - set(GOLDEN) == set(), "registered variants without a golden test"
    assert registered - set(EXPORT) == set(), "registered variants without an export test"
    assert set(GOLDEN) <= registered and set(EXPORT) <= registered, "stale table rows"
    for module, function in GOLDEN.values():
        assert _exists(module, function), (module, function)
    for where in EXPORT.values():
        if isinstance(where, tuple):
            assert _exists(*where), where
        else:
            assert where in ("default", "heavy")


def test_verified_targets_match_the_test_tables():
    """What `edgesam-export models` claims is exactly what the tables test: a target is in a
    spec's `verified_targets` if and only if that target's table has a row for the variant,
    and every row names a test that exists ("default"/"heavy" rows run in their module)."""
    tables = TARGET_TABLES
    for spec in list_specs():
        unknown = set(spec.verified_targets) - set(tables)
        assert not unknown, f"{spec.name}: verified_targets {unknown} have no test table"
        for target, table in tables.items():
            claimed = target in spec.verified_targets
            assert claimed == (spec.name in table), (
                f"{spec.name}: verified_targets says {target} {'is' if claimed else 'is not'}"
                f" verified, but its {target} test table {'lacks' if claimed else 'has'} a row"
            )
    registered = {s.name for s in list_specs()}
    for target, table in tables.items():
        assert set(table) <= registered, f"stale {target} rows"
        for where in table.values():
            assert where in ("default", "heavy") or _exists(*where), (target, where)


def _cases() -> list[object]:
    cases: list[object] = []
    for name, where in sorted(EXPORT.items()):
        if where == "default":
            cases.append(name)
        elif where == "heavy":
            cases.append(pytest.param(name, marks=pytest.mark.heavy))
    return cases


@pytest.mark.parametrize("name", _cases())
def test_export_and_parity(name: str, tmp_path: Path, family_artifacts):
    """Synthetic weights of the variant's checkpoint layout -> ONNX encoder + decoder ->
    parity against PyTorch on onnxruntime (embeddings, decoder alone, end to end).

    Default rows reuse the session's export of the variant (conftest `family_artifacts`, the
    same pipeline call with the same untrained seed-0 weights), shared with the web, report and
    TensorRT tests; heavy rows export here."""
    t0 = time.perf_counter()
    if EXPORT[name] == "default":
        tmp_path = family_artifacts(name)
    else:
        export_artifacts(
            ModelOptions(model=name, synthetic="untrained"), "onnx", OnnxOptions(output=tmp_path)
        )
    export_s = time.perf_counter() - t0
    loaded = load_model(None, model=name, synthetic="untrained")
    spec = loaded.spec
    enc_path = tmp_path / f"{name}_encoder.onnx"
    assert enc_path.is_file(), sorted(p.name for p in tmp_path.iterdir())
    proto = onnx.load(str(enc_path), load_external_data=False)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, spec.img_size, spec.img_size]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["img_size"] == str(spec.img_size) and meta["prompt_frame"] == str(spec.frame)
    assert meta["normalize"] == spec.normalize
    report = verify_artifacts(None, tmp_path, loaded=loaded)
    assert report.passed, report.to_json()["summary"]
    worst = max(
        (r for r in report.to_json()["comparisons"] if r["check"] == "image_embeddings"),
        key=lambda r: r["metrics"]["max_abs"],
    )
    assert np.isfinite(worst["metrics"]["max_abs"])
    print(f"{name}: export {export_s:.1f} s, embeddings max abs {worst['metrics']['max_abs']:.2e}")
