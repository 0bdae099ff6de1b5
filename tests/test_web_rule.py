"""The rule a page is held to against Python (`web.selftest.outside_rule`), on hand-made
self-test reports: no browser needed."""

from __future__ import annotations

import numpy as np

from edgesam_export.web.selftest import agreement, mask_sha256, outside_rule


def _rle(mask: np.ndarray) -> list[int]:
    """Run lengths, starting with a run of 0s, as the page writes them."""
    flat = mask.ravel().astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _reports(flip: list[tuple[int, int]], score_diff: float = 0.0, near=((0, 0),)):
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:30, 5:25] = True
    near_px = np.zeros_like(mask)
    for y, x in near:
        near_px[y, x] = True
    seen = mask.copy()
    for y, x in flip:
        seen[y, x] = ~seen[y, x]
    py_mask = {"token": 1, "score": 0.5, "area": int(mask.sum()), "bbox": [5, 10, 24, 29]}
    py_mask |= {"sha256": mask_sha256(mask), "mask": mask, "near": near_px}
    py_mask["near_threshold"] = int(near_px.sum())
    js_mask = {"token": 1, "score": 0.5 + score_diff, "area": int(seen.sum())}
    js_mask |= {"bbox": [5, 10, 24, 29], "sha256": mask_sha256(seen), "rle": _rle(seen)}
    same = {"input_sha256": "x", "img_size": 1024, "prompt_frame": 1024}
    same |= {"point_coords": [1.0, 2.0], "point_labels": [1.0]}
    return agreement({**same, "masks": [js_mask]}, {**same, "masks": [py_mask]})


def test_rle_helper_round_trips() -> None:
    from edgesam_export.web.selftest import decode_rle

    agree = _reports([(3, 4), (39, 49)])
    assert agree["masks"][0]["flipped"] == 2
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, 0] = mask[3, 4] = True
    assert (decode_rle(_rle(mask), mask.shape) == mask).all()


def test_identical_masks_are_within_every_rule() -> None:
    agree = _reports([])
    assert outside_rule(agree) == []
    assert outside_rule(agree, float_ties_only=False) == []


def test_a_flip_at_a_tie_is_allowed_a_flip_elsewhere_is_not() -> None:
    at_tie = _reports([(0, 0)], near=[(0, 0)])
    assert outside_rule(at_tie, flipped_max=1e-3) == []
    # the same flip breaks the default fraction (1 of 2000 pixels: 5e-4 > 1e-4), by number only
    (only,) = outside_rule(at_tie)
    assert "1 pixels flipped" in only, only
    away = _reports([(15, 15)], near=[(0, 0)])
    broken = outside_rule(away, flipped_max=1e-3)
    assert len(broken) == 1 and "not within" in broken[0], broken
    # int8 files: flips anywhere count only by their number
    assert outside_rule(away, flipped_max=1e-3, float_ties_only=False) == []


def test_each_bound_is_named_when_broken() -> None:
    agree = _reports([(1, 1), (2, 2), (3, 3)], score_diff=2e-4, near=[(1, 1), (2, 2), (3, 3)])
    broken = outside_rule(agree)  # 3 of 2000 pixels flipped: 1.5e-3 > 1e-4
    assert any("score differs" in b for b in broken), broken
    assert any("3 pixels flipped" in b for b in broken), broken
    assert outside_rule(agree, score_atol=1e-3, flipped_max=2e-3) == []
    # a NaN score difference is never within the rule
    nan = _reports([], score_diff=float("nan"))
    assert any("score differs" in b for b in outside_rule(nan)), outside_rule(nan)


def test_a_report_without_run_lengths_is_not_within_the_rule() -> None:
    agree = _reports([])
    for row in agree["masks"]:
        for key in ("flipped", "flipped_fraction", "flipped_away_from_threshold"):
            row.pop(key)
    assert outside_rule(agree) and "rle=1" in outside_rule(agree)[0]
