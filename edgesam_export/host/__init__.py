"""Host side: torch models, export graphs, targets (exporters), the PyTorch reference, the
export-and-publish pipeline and recipes. Imports the device side, never the reverse; this
package imports nothing at import time, so its torch-free modules (recipes, the TensorRT
builder) run where torch is not installed."""
