"""Sessions that run an artifact from numpy inputs: one module per runtime (device side).

Which session opens which artifact is the backend registry's (`device.backends`): a new
backend adds its session module here and names it in its registry entry. `open_session` and
`artifact_suffixes` are the registry's, re-exported where callers look for them. The PyTorch
reference sessions are host side (`edgesam_export.host.reference`).
"""

from __future__ import annotations

from edgesam_export.device.backends import artifact_suffixes, open_session
from edgesam_export.device.runtime.base import Session, metadata_floats

__all__ = ["Session", "artifact_suffixes", "metadata_floats", "open_session"]
