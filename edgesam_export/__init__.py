"""edgesam-export: verified ONNX/CoreML/TensorRT artifacts from Segment Anything family checkpoints.

Importing the package is cheap: torch-dependent modules (`models`, `graphs`, `targets`) are imported
on use, and `edgesam_export.device.processing` is pure numpy for device-side code.
"""

from __future__ import annotations

__version__ = "0.1.0"
