"""Static int8 (QDQ) quantization of our ONNX graphs, and the search that keeps it accurate.

- `data`: calibration inputs (a `--calibration` folder or built-in synthetic images) and the
  held-out inputs the result is judged on, kept apart by construction and checked;
- `static`: onnxruntime's `quantize_static` (QDQ, per-channel int8 weights, quantized
  activations) with the calibration ranges computed once and reused for every candidate;
- `search`: per-block sensitivity (one block quantized at a time, end-to-end effect on held-out
  inputs) and the search for the fewest float blocks that meet an accuracy target (the mask
  bar, `device.mask_bar.MaskBar`); its report lists the float nodes and the frontier it walked.
"""

from edgesam_export.host.quantize.search import quantize_graph

__all__ = ["quantize_graph"]
