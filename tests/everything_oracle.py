"""The oracle decoder of tests/fixtures/everything/README.md, as a predictor for `MaskGenerator`.

The golden records were produced by the official generator driving this oracle instead of a
network, so matching them checks the generator's own logic (grids, crops, batching, filters,
NMS, uncropping, RLE) independently of any weights. Pure numpy: the import-blocked test runs it.
"""

from __future__ import annotations

import numpy as np

RADIUS = 20
SIGMA = 4.0
T = (30.0, 45.0, 60.0)
D = (4.0, 8.0, 16.0)
PADDING_LOGIT = -100.0


class OraclePredictor:
    """`set_image` + `predict_low_res` over the oracle; returns K = 3 masks per prompt."""

    img_size = 1024
    default_score = "stability"  # as EdgeSAM's predictor, which produced the golden records

    def __init__(self) -> None:
        self.calls: list[int] = []  # batch size of every predict_low_res call

    def set_image(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        s = self.img_size / max(h, w)
        nh, nw = int(h * s + 0.5), int(w * s + 0.5)
        self.image = image.astype(np.float64)
        self.h, self.w, self.nh, self.nw = h, w, nh, nw
        centers = (np.arange(256, dtype=np.float64) + 0.5) * 4.0
        self.cx, self.cy = centers[None, :], centers[:, None]  # X along columns, Y along rows
        rows = np.minimum(h - 1, np.floor(centers * h / nh)).astype(np.int64)
        cols = np.minimum(w - 1, np.floor(centers * w / nw)).astype(np.int64)
        self.cell_colour = self.image[rows[:, None], cols[None, :]]  # (256, 256, 3)
        self.inside = (centers[None, :] < nw) & (centers[:, None] < nh)

    def _reference_colour(self, px: float, py: float) -> np.ndarray:
        xs = np.arange(int(np.ceil(px - RADIUS)), int(np.floor(px + RADIUS)) + 1)
        ys = np.arange(int(np.ceil(py - RADIUS)), int(np.floor(py + RADIUS)) + 1)
        xs = xs[(xs >= 0) & (xs < self.w)]
        ys = ys[(ys >= 0) & (ys < self.h)]
        wgt = np.exp(-((xs[None, :] - px) ** 2 + (ys[:, None] - py) ** 2) / (2 * SIGMA**2))
        patch = self.image[ys[:, None], xs[None, :]]
        return (wgt[..., None] * patch).sum(axis=(0, 1)) / wgt.sum()

    def logits_for_point(self, qx: float, qy: float) -> np.ndarray:
        px, py = qx * self.w / self.nw, qy * self.h / self.nh
        ref = self._reference_colour(px, py)
        colour = np.sqrt(((self.cell_colour - ref) ** 2).sum(axis=-1))
        dist = np.sqrt((self.cx - qx) ** 2 + (self.cy - qy) ** 2)
        out = np.empty((3, 256, 256), dtype=np.float64)
        for k in range(3):
            out[k] = np.where(self.inside, T[k] - colour - dist / D[k], PADDING_LOGIT)
        return out.astype(np.float32)

    def predict_low_res(
        self, point_coords: np.ndarray, point_labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        coords = np.asarray(point_coords, dtype=np.float64)
        self.calls.append(coords.shape[0])
        logits = np.stack([self.logits_for_point(c[0, 0], c[0, 1]) for c in coords])
        # The oracle has no IoU head; the generator scores by stability (default_score).
        scores = np.full(logits.shape[:2], np.nan, dtype=np.float32)
        return logits, scores
