"""EdgeTAM video mode on the device: numpy only (no torch, cv2 or PIL).

`VideoTracker.open(ARTIFACT_DIR).track(frames, prompts)` follows objects through a video with
the exported video graphs over any backend's sessions; see docs/video.md.
"""

from __future__ import annotations

from edgesam_export.video.frames import preprocess_frame
from edgesam_export.video.tracker import VideoTracker

__all__ = ["VideoTracker", "preprocess_frame"]
