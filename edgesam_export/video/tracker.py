"""The torch-free EdgeTAM tracker: SAM 2's video loop in numpy over four exported graphs.

    tracker = VideoTracker.open(ARTIFACT_DIR)
    out = tracker.track(frames, {1: {"frame": 0, "points": [[140, 125]], "labels": [1]},
                                 2: {"frame": 0, "box": [155.5, 25.25, 275.75, 110.5]}})
    out[1]["masks"]  # (T, H, W) bool

Per frame: one encoder call; one decoder call for the objects prompted on that frame (grouped
by prompt size), one memory-attention call per group of objects sharing a memory layout, one
decoder call for all tracked objects, and one memory-encoder call for every active object. The
rules follow the official `SAM2VideoPredictor` (see shared/fixtures/edgetam/README.md): memory
bank in bfloat16, the conditioning frame plus the 6 latest frames (temporal index 6 for the
conditioning frame, 6 - t_pos otherwise), pointers of the conditioning frame then of the
previous frames (most recent first, up to min(T, 16)), object score <= 0 -> logits -1024, no
hole filling. Objects are tracked forward from their prompt frame; frames before it are
reported empty (logits and object score -1024).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgesam_export.device.backends import (
    all_backends,
    artifact_suffixes,
    get_backend,
    open_session,
)
from edgesam_export.device.contract import VIDEO_GRAPHS
from edgesam_export.device.errors import ArtifactError, InputError
from edgesam_export.device.models import list_specs
from edgesam_export.video.frames import check_frame, preprocess_frame
from edgesam_export.video.numerics import resize_bilinear, stability, to_bfloat16

GRAPHS = VIDEO_GRAPHS
NO_OBJ_SCORE = -1024.0
NUM_MASKMEM = 7
MAX_OBJ_PTRS = 16
IMAGE_SIZE = 1024
STABILITY_DELTA = 0.05
STABILITY_THRESHOLD = 0.98
Progress = Callable[[int, int], None]


@dataclass
class _Object:
    obj_id: Any
    frame: int
    coords: NDArray[np.float32]  # (N, 2) in the 1024 frame, box corners first
    labels: NDArray[np.float32]  # (N,)
    multimask: bool
    bank: dict[int, NDArray[np.float32]] = field(default_factory=dict)  # frame -> (512, 64)
    ptrs: dict[int, NDArray[np.float32]] = field(default_factory=dict)  # frame -> (256,)


def _parse_prompt(obj_id: Any, prompt: Any, num_frames: int, h: int, w: int) -> _Object:
    if not isinstance(prompt, Mapping):
        raise InputError(f"object {obj_id}: the prompt must be a dict with 'frame' and points/box")
    frame = prompt.get("frame", 0)
    if not isinstance(frame, int) or not 0 <= frame < num_frames:
        raise InputError(f"object {obj_id}: 'frame' must be an int in 0..{num_frames - 1}")
    coords: list[list[float]] = []
    labels: list[float] = []
    if prompt.get("box") is not None:
        box = np.asarray(prompt["box"], dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise InputError(f"object {obj_id}: 'box' must be [x0, y0, x1, y1]")
        coords += [[box[0], box[1]], [box[2], box[3]]]
        labels += [2.0, 3.0]
    if prompt.get("points") is not None:
        pts = np.asarray(prompt["points"], dtype=np.float64)
        lab = np.asarray(prompt.get("labels", [1] * len(pts)), dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or lab.shape != (len(pts),):
            raise InputError(f"object {obj_id}: 'points' must be [[x, y], ...] with one label each")
        if not set(lab.tolist()) <= {0.0, 1.0}:
            raise InputError(f"object {obj_id}: labels must be 1 (foreground) or 0 (background)")
        coords += pts.tolist()
        labels += lab.tolist()
    if not coords:
        raise InputError(f"object {obj_id}: give 'points' (with 'labels') or a 'box'")
    # SAM 2: x / W * 1024 and y / H * 1024 in float32
    xy = np.asarray(coords, dtype=np.float32) / np.array([w, h], dtype=np.float32)
    xy = (xy * np.float32(IMAGE_SIZE)).astype(np.float32)
    return _Object(obj_id, frame, xy, np.asarray(labels, np.float32), len(coords) <= 1)


def tracker_backends() -> tuple[str, ...]:
    """The backends whose video graphs `VideoTracker.open` reads, in registry order: entries
    with artifact files that a model with the video graphs is verified on (its
    `verified_targets`) and whose entry writes the video graphs (`Backend.video_graphs`), so a
    backend that gains the video export is listed without an edit."""
    verified = {
        target
        for spec in list_specs()
        if set(GRAPHS) <= set(spec.graphs)
        for target in spec.verified_targets
    }
    return tuple(
        b.name for b in all_backends() if b.suffixes and b.video_graphs and b.name in verified
    )


class VideoTracker:
    """SAM 2 / EdgeTAM video tracking over any backend's sessions of the four video graphs."""

    def __init__(self, sessions: Mapping[str, Any]) -> None:
        missing = [g for g in GRAPHS if g not in sessions]
        if missing:
            raise ArtifactError(f"video tracker: missing graphs {missing}; export them first")
        self.sessions = dict(sessions)
        self.timings: dict[str, float] = dict.fromkeys(GRAPHS, 0.0)

    @classmethod
    def open(
        cls, artifact_dir: Path | str, backend: str | None = None, **session_kwargs: Any
    ) -> VideoTracker:
        """Open the video graphs (`<stem>_<graph>.<suffix>`, as `edgesam-export onnx|coreml
        --model edgetam` publishes them) of `artifact_dir`: those of `backend` (a registry
        name, e.g. "coreml"), else any backend's, ONNX preferred."""
        folder = Path(artifact_dir)
        if not folder.is_dir():
            raise ArtifactError(f"{folder} is not a folder; pass the folder of the video graphs")
        suffixes = get_backend(backend).suffixes if backend else artifact_suffixes()
        exporters = (get_backend(backend).name,) if backend else tracker_backends()
        sessions = {}
        for graph in GRAPHS:
            found = sorted(
                p
                for p in folder.glob(f"*_{graph}.*")
                if p.suffix in suffixes and not p.name.startswith(".")
            )
            if not found:
                raise ArtifactError(
                    f"{folder}: no *_{graph} artifact{f' for {backend}' if backend else ''};"
                    f" export them with `edgesam-export {'|'.join(exporters)} --model edgetam"
                    " --output DIR`"
                )
            onnx = [p for p in found if p.suffix == ".onnx"]
            sessions[graph] = open_session(onnx[0] if onnx else found[0], **session_kwargs)
        return cls(sessions)

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import time

        t0 = time.perf_counter()
        out = self.sessions[graph].run(feeds)
        self.timings[graph] += time.perf_counter() - t0
        return out

    def track(
        self,
        frames: Sequence[NDArray[np.uint8]],
        prompts: Mapping[Any, Mapping[str, Any]],
        progress: Progress | None = None,
    ) -> dict[Any, dict[str, NDArray[Any]]]:
        """Track every prompted object through `frames` (HxWx3 uint8, all the same size)."""
        frames = [check_frame(f, i) for i, f in enumerate(frames)]
        if not frames:
            raise InputError("track needs at least one frame")
        if not prompts:
            raise InputError("track needs at least one object prompt")
        h, w = frames[0].shape[:2]
        for i, f in enumerate(frames):
            if f.shape[:2] != (h, w):
                raise InputError(f"frame {i} is {f.shape[1]}x{f.shape[0]}, frame 0 is {w}x{h}")
        num = len(frames)
        objects = [_parse_prompt(k, v, num, h, w) for k, v in prompts.items()]
        low = {o.obj_id: np.full((num, 256, 256), NO_OBJ_SCORE, np.float32) for o in objects}
        score = {o.obj_id: np.full((num,), NO_OBJ_SCORE, np.float32) for o in objects}
        start = min(o.frame for o in objects)
        for t in range(start, num):
            active = [o for o in objects if o.frame <= t]
            # the last frame's memory is never read: its memory encoding is skipped
            self._step(t, num, frames[t], active, low, score, encode_memory=t < num - 1)
            if progress is not None:
                progress(t - start + 1, num - start)
        results = {}
        for o in objects:
            logits = low[o.obj_id]
            masks = np.stack([resize_bilinear(x, h, w) > 0 for x in logits])
            results[o.obj_id] = {
                "low_res_logits": logits,
                "object_score_logits": score[o.obj_id],
                "masks": masks,
                "obj_ptr": np.stack([o.ptrs.get(t, np.zeros(256, np.float32)) for t in range(num)]),
            }
        return results

    def _step(
        self,
        t: int,
        num_frames: int,
        frame: NDArray[np.uint8],
        active: list[_Object],
        low: dict[Any, NDArray[np.float32]],
        score: dict[Any, NDArray[np.float32]],
        encode_memory: bool = True,
    ) -> None:
        enc = self._run("video_encoder", {"image": preprocess_frame(frame)})
        hr = {"high_res_0": enc["high_res_0"], "high_res_1": enc["high_res_1"]}
        selected: dict[int, NDArray[np.float32]] = {}  # id(obj) -> (256, 256) logits
        # conditioning objects: one decoder call per prompt size
        cond = [o for o in active if o.frame == t]
        for size in sorted({len(o.labels) for o in cond}):
            group = [o for o in cond if len(o.labels) == size]
            embed = np.repeat(enc["image_embed"], len(group), axis=0)
            out = self._run(
                "video_decoder",
                {
                    "image_embed": embed,
                    **hr,
                    "point_coords": np.stack([o.coords for o in group]),
                    "point_labels": np.stack([o.labels for o in group]),
                },
            )
            self._select(t, group, out, [o.multimask for o in group], selected, low, score)
        # tracked objects: memory attention per memory layout, then one decoder call
        tracked = [o for o in active if o.frame < t]
        if tracked:
            embeds = {}
            for group in _group_by_layout(tracked, t, num_frames).values():
                memory, tpos, ptrs = key_arrays(group, t, num_frames)
                out = self._run(
                    "memory_attention",
                    {
                        "pix_feat": enc["pix_feat"],
                        "memory": memory,
                        "memory_tpos": tpos,
                        "obj_ptrs": ptrs,
                    },
                )
                for i, o in enumerate(group):
                    embeds[id(o)] = out["image_embed"][i]
            out = self._run(
                "video_decoder",
                {
                    "image_embed": np.stack([embeds[id(o)] for o in tracked]),
                    **hr,
                    "point_coords": np.zeros((len(tracked), 1, 2), np.float32),
                    "point_labels": np.full((len(tracked), 1), -1.0, np.float32),
                },
            )
            self._select(t, tracked, out, [True] * len(tracked), selected, low, score)
        if not encode_memory:
            return
        # memory encoding of every active object's selected mask
        mem = self._run(
            "memory_encoder",
            {
                "pix_feat": enc["pix_feat"],
                "mask_logits": np.stack([selected[id(o)] for o in active])[:, None],
                "binarize": np.array([1.0 if o.frame == t else 0.0 for o in active], np.float32),
            },
        )
        for i, o in enumerate(active):
            o.bank[t] = to_bfloat16(mem["maskmem_features"][i])

    def _select(
        self,
        t: int,
        group: list[_Object],
        out: dict[str, np.ndarray],
        multimask: list[bool],
        selected: dict[int, NDArray[np.float32]],
        low: dict[Any, NDArray[np.float32]],
        score: dict[Any, NDArray[np.float32]],
    ) -> None:
        logits, iou = out["low_res_masks"], out["iou_predictions"]
        for i, o in enumerate(group):
            best = 1 + int(np.argmax(iou[i, 1:]))
            if multimask[i]:
                mask_index, ptr_index = best, best
            else:  # single mask: token 0 unless unstable; the pointer is token 0's
                stable = stability(logits[i, 0], STABILITY_DELTA) >= STABILITY_THRESHOLD
                mask_index, ptr_index = (0 if stable else best), 0
            selected[id(o)] = logits[i, mask_index]
            low[o.obj_id][t] = logits[i, mask_index]
            score[o.obj_id][t] = out["object_score_logits"][i, 0]
            o.ptrs[t] = np.asarray(out["obj_ptr"][i, ptr_index], np.float32)


def memory_layout(o: _Object, t: int, num_frames: int) -> tuple[list[tuple[int, int]], list[int]]:
    """(frame, temporal index) of the spatial memories and the pointer frames for frame t."""
    spatial = [(o.frame, NUM_MASKMEM - 1)]
    for t_pos in range(1, NUM_MASKMEM):
        prev = t - (NUM_MASKMEM - t_pos)
        if prev in o.bank and prev != o.frame:
            spatial.append((prev, NUM_MASKMEM - t_pos - 1))
    ptr_frames = [o.frame]
    for t_diff in range(1, min(num_frames, MAX_OBJ_PTRS)):
        prev = t - t_diff
        if prev < 0:
            break
        if prev in o.ptrs and prev != o.frame:
            ptr_frames.append(prev)
    return spatial, ptr_frames


def _group_by_layout(objs: list[_Object], t: int, num_frames: int) -> dict[Any, list[_Object]]:
    groups: dict[Any, list[_Object]] = {}
    for o in objs:
        spatial, ptr_frames = memory_layout(o, t, num_frames)
        key = (tuple(i for _, i in spatial), len(ptr_frames))
        groups.setdefault(key, []).append(o)
    return groups


def key_arrays(
    group: list[_Object], t: int, num_frames: int
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32]]:
    """Memory (B, S, 512, 64), temporal indices (S,) and pointers (B, K, 256) of a group."""
    layouts = [memory_layout(o, t, num_frames) for o in group]
    memory = np.stack(
        [np.stack([o.bank[f] for f, _ in sp]) for o, (sp, _) in zip(group, layouts, strict=True)]
    )
    tpos = np.array([i for _, i in layouts[0][0]], dtype=np.int64)
    ptrs = np.stack(
        [np.stack([o.ptrs[f] for f in pf]) for o, (_, pf) in zip(group, layouts, strict=True)]
    )
    return memory.astype(np.float32), tpos, ptrs.astype(np.float32)
