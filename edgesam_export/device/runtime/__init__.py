"""Sessions that run an artifact from numpy inputs: one module per runtime (device side).

Which session opens which artifact is the backend registry's (`device.backends`): a new
backend adds its session module here and names it in its registry entry; `open_session` is the
registry's (`device.backends.open_session`), not re-exported here, so that the registry and the
sessions never import each other. The PyTorch reference sessions are host side
(`edgesam_export.host.reference`).
"""

from __future__ import annotations

from edgesam_export.device.runtime.base import Session, metadata_floats

__all__ = ["Session", "metadata_floats"]
