"""The judge's video part: EdgeTAM's four tracker graphs (`contract.VIDEO_GRAPHS`).

Each video graph is judged alone, like the image decoder on the reference embeddings: it gets
the inputs the reference graphs produced upstream, and each of its outputs is compared with the
reference graph's (check `<graph>.<output>`, e.g. `memory_encoder.maskmem_features`), under the
same `judge.Judge` rows and rules (NaN/inf fails, shapes must match, scale-relative checks).

The chain the reference runs on the parity inputs (`video_cases`):

1. `video_encoder` on the parity test image (the model's image preprocessing);
2. `video_decoder` on its features for two prompt cases: one point, and a batch of 3 boxes (three
   tracked objects in one call, the tracker's batching);
3. `memory_encoder` on the frame's `pix_feat` and the batch's token-0 low-res logits, binarised
   (a prompted frame);
4. `memory_attention` on `pix_feat`, those memories as one past frame (temporal index 6, the
   conditioning frame's) and the batch's token-0 object pointers.

The metrics, verdicts and report are the judge's (`judge.judge` calls `judge_video`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgesam_export.device.contract import VIDEO_GRAPHS
from edgesam_export.device.parity import PromptCase, compare_arrays
from edgesam_export.device.runtime import Session

#: The judge's recorders (`judge.JudgeRun.compare` / `skip`), which `judge.judge` hands to
#: `judge_video`: taken as callables so that this module does not import the judge.
Compare = Callable[[str, Session, str, str, dict[str, float], Mapping[str, np.ndarray], str], None]
Skip = Callable[[str, str, str], None]


MEMORY_TPOS = 6  # the temporal slot SAM 2 gives a conditioning frame's memory
VIDEO_PROMPTS = ("1 positive point", "batch of 3 boxes")


@dataclass(frozen=True)
class VideoCase:
    """One call of a video graph: the feeds the reference chain made, and its answers."""

    graph: str
    name: str
    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def video_cases(
    reference: Mapping[str, Session], tensor: np.ndarray, prompts: Sequence[PromptCase]
) -> list[VideoCase]:
    """Run the reference video graphs as a chain (module docstring) and keep every call."""
    missing = [g for g in VIDEO_GRAPHS if g not in reference]
    if missing:
        raise ValueError(f"the video reference lacks {', '.join(missing)}")
    cases: list[VideoCase] = []

    def call(graph: str, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(reference[graph].run(feeds))
        cases.append(VideoCase(graph, name, feeds, out))
        return out

    enc = call("video_encoder", "test image", {"image": tensor})
    chosen = [c for c in prompts if c.name in VIDEO_PROMPTS]
    last: dict[str, np.ndarray] = {}
    for case in chosen:
        batch = case.point_coords.shape[0]
        feeds = {
            "image_embed": np.ascontiguousarray(np.repeat(enc["image_embed"], batch, axis=0)),
            "high_res_0": enc["high_res_0"],
            "high_res_1": enc["high_res_1"],
            "point_coords": case.point_coords,
            "point_labels": case.point_labels,
        }
        last = call("video_decoder", case.name, feeds)
    batch = last["low_res_masks"].shape[0]
    objects = f"{batch} objects"
    mem = call(
        "memory_encoder",
        objects,
        {
            "pix_feat": enc["pix_feat"],
            "mask_logits": np.ascontiguousarray(last["low_res_masks"][:, :1]),
            "binarize": np.ones((batch,), np.float32),
        },
    )
    call(
        "memory_attention",
        f"{objects}, 1 memory frame",
        {
            "pix_feat": enc["pix_feat"],
            "memory": np.ascontiguousarray(mem["maskmem_features"][:, None]),
            "memory_tpos": np.array([MEMORY_TPOS], np.int64),
            "obj_ptrs": np.ascontiguousarray(last["obj_ptr"][:, :1]),
        },
    )
    return cases


def judge_video(
    compare: Compare,
    skip: Skip,
    cases: Sequence[VideoCase],
    candidates: Sequence[tuple[str, Session]],
) -> None:
    """Every candidate video graph on the reference chain's calls of its graph, recorded by the
    judge's run (`JudgeRun.compare` / `skip`: the image checks' verdicts and report)."""
    for name, session in candidates:
        graph = session.metadata.get("graph", "")
        for case in (c for c in cases if c.graph == graph):
            refused = session.accepts(case.feeds)
            if refused is not None:
                skip(name, case.name, refused)
                continue
            out = session.run(case.feeds)
            for output, expected in case.outputs.items():
                got = out.get(output)
                metrics = compare_arrays(got, expected) if got is not None else absent()
                check = f"{graph}.{output}"
                compare(name, session, check, case.name, metrics, case.feeds, output)


def absent() -> dict[str, float]:
    """Metrics of an output one side lacks (an artifact without a high-resolution feature, or
    reference outputs written before the judge kept object scores): a failure, never a pass."""
    inf = float("inf")
    return {"absent": 1.0, "max_abs": inf, "mean_abs": inf, "rel": inf, "cosine": 0.0}
