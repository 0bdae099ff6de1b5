"""The visual report: a static HTML page plus PNGs, for `parity --report` and `edgesam-bench`.

Device side: numpy, our own PNG writer and inline SVG (no Pillow, no matplotlib). The page shows
the test image; per backend and prompt the mask overlaid on the image beside the reference's;
a heat-map of the low-resolution logit error; the parity table with verdicts; and, from the
benchmark, the latency table and a bar chart of p50 per stage and backend, and the segment
everything stage: its timings and, per backend, the masks found painted over the image.

The page is written into a temporary sibling directory and renamed into place when complete.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_export.device import processing as P
from edgesam_export.device.artifacts import atomic_path
from edgesam_export.device.judge import ParityReport
from edgesam_export.device.parity import make_test_image, prompt_cases
from edgesam_export.device.png import write_png

#: Mask overlay: colour and opacity (tests look for exactly this blend where the mask is).
OVERLAY_RGB = (30, 144, 255)
OVERLAY_ALPHA = 0.6
POSITIVE_RGB, NEGATIVE_RGB, BOX_RGB = (0, 220, 0), (230, 0, 0), (255, 210, 0)
#: Prompt cases shown as overlays (those present in the record, in this order).
SHOWN_CASES = ("1 positive point", "2 positive + 1 negative", "box", "batch of 3 boxes")
#: Bar colours per backend, in order of appearance.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f")


def blend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The overlay: `OVERLAY_RGB` at `OVERLAY_ALPHA` over the image where `mask` is set."""
    out = image.copy()
    colour = np.array(OVERLAY_RGB, dtype=np.float32)
    mixed = image[mask].astype(np.float32) * (1 - OVERLAY_ALPHA) + colour * OVERLAY_ALPHA
    out[mask] = np.rint(mixed).astype(np.uint8)
    return out


def _draw_prompts(image: np.ndarray, coords: np.ndarray, labels: np.ndarray, scale: float) -> None:
    """Points as 5x5 squares (green positive, red negative), boxes as 1-pixel outlines."""
    h, w = image.shape[:2]

    def clip(x: float, hi: int) -> int:
        return int(min(max(round(x), 0), hi - 1))

    pts = coords * scale
    for i, label in enumerate(labels):
        x, y = clip(pts[i, 0], w), clip(pts[i, 1], h)
        if label in (0.0, 1.0):
            colour = POSITIVE_RGB if label == 1.0 else NEGATIVE_RGB
            image[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = colour
        elif label == 2.0 and i + 1 < len(labels) and labels[i + 1] == 3.0:
            x1, y1 = clip(pts[i + 1, 0], w), clip(pts[i + 1, 1], h)
            image[y, x : x1 + 1] = BOX_RGB
            image[y1, x : x1 + 1] = BOX_RGB
            image[y : y1 + 1, x] = BOX_RGB
            image[y : y1 + 1, x1] = BOX_RGB


def heatmap(error: np.ndarray) -> np.ndarray:
    """|error| as RGB, black -> red -> yellow -> white, scaled to its own maximum."""
    e = np.abs(np.asarray(error, dtype=np.float64))
    top = float(e.max()) if e.size else 0.0
    t = e / top if top > 0 else np.zeros_like(e)
    r = np.clip(3 * t, 0, 1)
    g = np.clip(3 * t - 1, 0, 1)
    b = np.clip(3 * t - 2, 0, 1)
    return np.rint(np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def bar_chart_svg(timings: Sequence[Mapping[str, Any]], width: int = 760) -> str:
    """Horizontal bars of p50 per stage (one group per stage, one bar per backend).

    Each stage has its own scale (the encoder is 10-100x slower than the decoder); the value is
    printed on every bar.
    """
    stages = list(dict.fromkeys(t["name"] for t in timings))
    backends = list(dict.fromkeys(t["backend"] for t in timings))
    colour = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(backends)}
    bar_h, gap, label_w = 16, 14, 260
    rows = []
    y = 28
    for stage in stages:
        group = [t for t in timings if t["name"] == stage]
        top = max(float(t["p50_ms"]) for t in group) or 1.0
        rows.append(f'<text x="0" y="{y + bar_h - 3}" class="stage">{html.escape(stage)}</text>')
        for t in group:
            length = max(2.0, (width - label_w - 90) * float(t["p50_ms"]) / top)
            rows.append(
                f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_h - 2}"'
                f' fill="{colour[t["backend"]]}"><title>{html.escape(t["backend"])}</title></rect>'
                f'<text x="{label_w + length + 4:.1f}" y="{y + bar_h - 4}" class="value">'
                f"{float(t['p50_ms']):.1f} ms</text>"
            )
            y += bar_h
        y += gap
    legend = "".join(
        f'<rect x="{label_w + 120 * i}" y="4" width="12" height="12" fill="{colour[b]}"/>'
        f'<text x="{label_w + 120 * i + 16}" y="14" class="value">{html.escape(b)}</text>'
        for i, b in enumerate(backends)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 4}"'
        f' role="img" aria-label="p50 latency per stage and backend">'
        "<style>.stage{font:13px sans-serif}.value{font:12px sans-serif;fill:#333}</style>"
        f"{legend}{''.join(rows)}</svg>"
    )


@dataclass
class Page:
    """HTML sections and PNG images, saved together atomically."""

    title: str
    sections: list[str] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def add_image(self, name: str, image: np.ndarray, caption: str, width: int = 0) -> str:
        self.images[name] = image
        style = f' width="{width}"' if width else ""
        return (
            f'<figure><img src="{name}" alt="{html.escape(caption)}"{style}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def save(self, directory: Path) -> Path:
        body = "\n".join(self.sections)
        page = (
            "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )
        with atomic_path(directory, replaces_dir=_is_report) as tmp:
            tmp.mkdir()
            for name, image in self.images.items():
                write_png(tmp / name, image)
            (tmp / "index.html").write_text(page, encoding="utf-8")
        return directory / "index.html"


def _is_report(directory: Path) -> bool:
    """A folder an earlier report wrote (index.html and its images): safe to replace."""
    return (directory / "index.html").is_file() and all(
        p.is_file() and p.suffix in (".html", ".png") for p in directory.iterdir()
    )


_CSS = (
    "body{font:14px sans-serif;margin:24px;color:#222;background:#fff}"
    "table{border-collapse:collapse;margin:8px 0 20px}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child,td.l{text-align:left}"
    ".pass{background:#d7f5d7}.fail{background:#f8d0d0;font-weight:bold}.na{color:#888}"
    "figure{display:inline-block;margin:4px 8px 12px 0;vertical-align:top}"
    "figcaption{font-size:12px;color:#555;max-width:330px}"
    ".row{white-space:nowrap}"
)


def _cell(value: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{html.escape(str(value))}</td>"


def table_html(headers: Sequence[str], rows: Sequence[Sequence[tuple[Any, str]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v, c) for v, c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def parity_table(report: ParityReport) -> str:
    rows = []
    for r in report.summary():
        verdict = ("pass", "pass") if r["passed"] else ("FAIL", "fail")
        iou = f"{r['min_mask_iou']:.4f}" if "min_mask_iou" in r else "-"
        rows.append(
            [
                (r["artifact"], "l"),
                (r["check"], "l"),
                (f"{r['max_abs']:.2e}", ""),
                (f"{r['tolerance']:.0e}" + (" estimate" if r.get("estimate") else ""), ""),
                (f"{r['mean_abs']:.2e}", ""),
                (f"{r['cosine']:.6f}", ""),
                (iou, ""),
                (r["cases"], ""),
                verdict,
            ]
        )
    for err in report.errors:
        rows.append(
            [(err["artifact"], "l"), (err["error"], "l")] + [("", "")] * 6 + [("ERROR", "fail")]
        )
    headers = ("artifact", "check", "max abs", "tolerance", "mean abs", "cosine", "mask IoU")
    return table_html((*headers, "cases", "verdict"), rows)


def _display_stride(image: np.ndarray, longest: int = 360) -> int:
    return max(1, int(np.ceil(max(image.shape[:2]) / longest)))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def _prompt_frame(record: Mapping[str, Any]) -> int:
    """The side of the prompt/mask frame the record's cases and logits use: the reference
    outputs' (older files: their img_size), else what the parity run recorded, else
    EdgeSAM's 1024."""
    outputs = record.get("reference_outputs")
    if outputs is not None:
        return int(outputs.preprocessing.frame)
    params = record.get("preprocessing")
    return int(params.frame) if isinstance(params, P.Preprocessing) else 1024


def overlay_section(page: Page, record: Mapping[str, Any], tag: str = "") -> str:
    """Per candidate decoder and shown prompt: reference overlay, candidate overlay, error map."""
    outputs = record.get("reference_outputs")
    image = outputs.image if outputs is not None else make_test_image()
    frame = _prompt_frame(record)  # prompts and masks live here (1024 also for a 512 encoder)
    input_size = P.get_preprocess_shape(image.shape[0], image.shape[1], frame)
    info = P.ImageInfo(image.shape[:2], input_size, frame)
    stride = _display_stride(image)
    shown = image[::stride, ::stride]
    if outputs is not None:
        refs = {
            rc.case.name: (rc.scores, rc.masks_bits.astype(np.float32) - 0.5, rc.masks_sub, rc.case)
            for rc in outputs.cases
        }
        sub = outputs.stride
    else:
        cases = {c.name: c for c in prompt_cases(frame, input_size)}
        refs = {
            name: (out["scores"], out["masks"], out["masks"], cases[name])
            for name, out in record.get("reference", {}).items()
            if name in cases
        }
        sub = 1
    parts = [
        page.add_image(
            f"{tag}test_image.png", shown, f"test image {image.shape[1]}x{image.shape[0]}"
        )
    ]
    html_rows = [
        "<h2>Masks: reference and candidates</h2>",
        '<div class="row">' + parts[0] + "</div>",
    ]
    html_rows.append(
        f"<p>Mask overlay colour rgb{OVERLAY_RGB} at {OVERLAY_ALPHA:.0%}; green/red squares are"
        " positive/negative points, yellow outlines are boxes. The token shown is the reference's"
        " best-scoring one. Error maps show |candidate - reference| of the 256x256 low-resolution"
        " logits, each scaled to its own maximum (printed below it)"
        + (f", on every {sub}th pixel (the grid the reference outputs keep)" if sub > 1 else "")
        + ".</p>"
    )
    candidates = [
        n
        for n in record
        if n not in ("reference", "reference_outputs") and isinstance(record[n], Mapping)
    ]
    for case_name in [c for c in SHOWN_CASES if c in refs]:
        scores, ref_logits, ref_sub, case = refs[case_name]
        k = int(np.argmax(scores[0]))
        row = [f"<h3>{html.escape(case_name)} (token {k})</h3><div class='row'>"]
        slug = _slug(case_name)
        ref_mask = P.postprocess_masks(ref_logits[:1, k], info)[0] > 0
        ref_img = blend(image, ref_mask)[::stride, ::stride].copy()
        _draw_prompts(
            ref_img,
            case.point_coords[0],
            case.point_labels[0],
            info.original_size[0] / info.input_size[0] / stride,
        )
        row.append(page.add_image(f"{tag}{slug}_reference.png", ref_img, f"reference: {case_name}"))
        for name in candidates:
            out = record[name].get(case_name)
            if out is None:
                continue
            cand_logits = out["masks"][:1, k]
            if outputs is not None:  # displayed like the reference's: thresholded, then upscaled
                cand_logits = (cand_logits > 0).astype(np.float32) - 0.5
            cand_mask = P.postprocess_masks(cand_logits, info)[0] > 0
            cand_img = blend(image, cand_mask)[::stride, ::stride].copy()
            _draw_prompts(
                cand_img,
                case.point_coords[0],
                case.point_labels[0],
                info.original_size[0] / info.input_size[0] / stride,
            )
            inter = np.logical_and(cand_mask, ref_mask).sum()
            union = np.logical_or(cand_mask, ref_mask).sum()
            iou = inter / union if union else 1.0
            row.append(
                page.add_image(
                    f"{tag}{slug}_{_slug(name)}.png",
                    cand_img,
                    f"{name}: IoU {iou:.4f} at full size",
                )
            )
            err = out["masks"][0, k][::sub, ::sub] - ref_sub[0, k]
            heat = heatmap(err)
            if sub > 1:
                heat = np.repeat(np.repeat(heat, sub, axis=0), sub, axis=1)
            row.append(
                page.add_image(
                    f"{tag}{slug}_{_slug(name)}_error.png",
                    heat,
                    f"{name}: max |logit error| {np.abs(err).max():.2e}",
                    width=200,
                )
            )
        row.append("</div>")
        html_rows.append("".join(row))
    return "\n".join(html_rows)


def write_parity_report(directory: Path, report: ParityReport, record: Mapping[str, Any]) -> Path:
    verdict = "PASSED" if report.passed else "FAILED"
    page = Page(f"edgesam-export parity: {verdict}")
    page.sections.append(
        f"<p>Reference: {html.escape(str(report.inputs.get('reference', '?')))}."
        f" Verdict: <b class='{'pass' if report.passed else 'fail'}'>{verdict}</b></p>"
    )
    page.sections.append("<h2>Parity (worst case per check)</h2>" + parity_table(report))
    page.sections.append(overlay_section(page, record))
    return page.save(directory)


def latency_table(timings: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            (t["name"], "l"),
            (t["backend"], "l"),
            (f"{t['p50_ms']:.2f}", ""),
            (f"{t['p90_ms']:.2f}", ""),
            (f"{t['p99_ms']:.2f}", ""),
            (f"{t['mean_ms']:.2f}", ""),
            (f"{t['throughput_per_s']:.1f}", ""),
            (t["n"], ""),
            (t["warmup"], ""),
        ]
        for t in timings
    ]
    headers = ("stage", "backend", "p50 ms", "p90 ms", "p99 ms", "mean ms", "calls/s", "n")
    return table_html((*headers, "warm-up"), rows)


def backends_table(backends: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for b in backends:
        parity = b.get("parity") or {}
        if not b["available"]:
            verdict = ("unavailable", "na")
            b = {**b, "precision": "-"}
        elif not parity:
            verdict = ("-", "na")
        else:
            verdict = ("pass", "pass") if parity.get("passed") else ("FAIL", "fail")
        rss, added = b.get("peak_rss_mb"), b.get("rss_added_mb")
        rows.append(
            [
                (b["name"], "l"),
                (b.get("precision") or "-", "l"),
                ("" if added is None else f"{added:.0f}", ""),
                ("" if rss is None else f"{rss:.0f}", ""),
                (parity.get("reference", "-"), "l"),
                verdict,
                (b.get("reason") or ", ".join(b.get("artifacts", [])), "l"),
            ]
        )
    return table_html(
        ("backend", "precision", "RSS +MB", "peak RSS MB", "parity reference", "verdict", "notes"),
        rows,
    )


def _ms(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


EVERYTHING_HEADERS = (
    "backend",
    "B",
    "per image p50 ms",
    "per decoder call ms",
    "per prompt ms",
    "post-processing ms",
    "decoder calls",
    "masks",
    "notes",
)


def everything_section(
    page: Page, everything: Mapping[str, Any], overlays: Mapping[str, np.ndarray]
) -> str:
    """Segment everything: per backend and batch size the timings and mask count, and per
    backend the masks over the image (its largest timed batch size)."""
    runs = everything.get("runs", [])
    rows = []
    for r in runs:
        if r["status"] != "ok":
            cls = "na" if r["status"] == "skipped" else "fail"
            rows.append(
                [(r["backend"], "l"), (r["points_per_batch"], "")]
                + [("-", "")] * 6
                + [(f"{r['status']}: {r['reason']}", f"l {cls}")]
            )
            continue
        rows.append(
            [
                (r["backend"], "l"),
                (r["points_per_batch"], ""),
                (_ms(r["image_ms"]["p50_ms"], 0), ""),
                (_ms(r["decoder_call_ms"]), ""),
                (_ms(r["decoder_ms_per_prompt"], 2), ""),
                (_ms(r["postprocess_ms"]), ""),
                (r["decoder_calls"], ""),
                (r["masks"], ""),
                ("fallback: the largest batch the decoder accepts" if r["fallback"] else "", "l"),
            ]
        )
    side = everything.get("points_per_side", "?")
    parts = [
        f"<h2>Segment everything ({side}x{side} points)</h2>",
        f"<p>{html.escape(str(everything.get('image', '')))}; quality above"
        f" {everything.get('pred_iou_thresh')}, stability at least"
        f" {everything.get('stability_score_thresh')}; median of {everything.get('iterations')}"
        " run(s) per row. Per image: the whole generator (encoder, decoder calls,"
        " post-processing); per decoder call and per prompt: decoder time only.</p>",
        table_html(EVERYTHING_HEADERS, rows),
    ]
    figures = []
    for backend, image in overlays.items():
        best = max(
            (r for r in runs if r["backend"] == backend and r["status"] == "ok"),
            key=lambda r: r["points_per_batch"],
            default=None,
        )
        caption = backend
        if best is not None:
            caption = (
                f"{backend}: {best['masks']} masks, B={best['points_per_batch']},"
                f" {_ms(best['image_ms']['p50_ms'], 0)} ms per image,"
                f" {_ms(best['decoder_call_ms'])} ms per decoder call"
            )
        figures.append(page.add_image(f"everything_{_slug(backend)}.png", image, caption))
    if figures:
        parts.append('<div class="row">' + "".join(figures) + "</div>")
    return "\n".join(parts)


def write_bench_report(
    directory: Path,
    payload: Mapping[str, Any],
    parity: Mapping[str, tuple[ParityReport, Mapping[str, Any]]],
    everything_overlays: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """The benchmark page: backends with verdicts, latency table and chart, parity and masks,
    and the everything stage (its table, and the masks each backend found painted over the
    image) when the payload has one."""
    page = Page("edgesam-bench: latency with its accuracy verdict")
    machine = payload.get("machine", {})
    page.sections.append(
        f"<p>Machine: {html.escape(str(machine.get('cpu', '?')))},"
        f" {machine.get('usable_cores', '?')} usable cores, load {machine.get('load_avg_1m', '?')};"
        f" settings <code>{html.escape(json.dumps(payload.get('settings', {})))}</code></p>"
    )
    page.sections.append("<h2>Backends</h2>" + backends_table(payload.get("backends", [])))
    timings = payload.get("timings", [])
    if timings:
        page.sections.append("<h2>Latency p50 per stage</h2>" + bar_chart_svg(timings))
        page.sections.append("<h2>Latency</h2>" + latency_table(timings))
    if payload.get("everything"):
        page.sections.append(
            everything_section(page, payload["everything"], everything_overlays or {})
        )
    for backend, (report, record) in parity.items():
        page.sections.append(f"<h2>Parity: {html.escape(backend)}</h2>" + parity_table(report))
        page.sections.append(overlay_section(page, record, tag=f"{_slug(backend)}_"))
    return page.save(directory)
