"""`edgesam-export track`: follow objects through a folder of frames (EdgeTAM video graphs)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from numpy.typing import NDArray

from edgesam_export.cli import DebugOpt, JsonOpt, count_bar, emit_json, guarded, human_console
from edgesam_export.device.errors import InputError
from edgesam_export.video.tracker import tracker_backends

# The backends whose video graphs the tracker runs (registry entries verified on EdgeTAM's
# video graphs), for the help text and the --backend check.
TRACKERS = tracker_backends()

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".npy")
STRIP_FRAMES = 8  # frames shown in the overlay strip
# overlay colour per object (cycled)
COLOURS = np.array([[30, 144, 255], [255, 99, 71], [50, 205, 50], [238, 130, 238]], np.float32)


def _numbers(text: str, what: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        shapes = {2: "x,y", 3: "x,y,label", 4: "x0,y0,x1,y1"}
        want = " or ".join(shapes[c] for c in counts)
        raise InputError(f"{what} {text!r}: expected {want} (numbers, comma-separated)")
    return values


def parse_prompt(points: list[str], box: str | None, frame: int) -> dict[str, Any]:
    """`--point x,y[,label]` (repeatable) and/or `--box x0,y0,x1,y1` -> the tracker's prompt."""
    if not points and box is None:
        raise InputError("give the object with --point x,y[,label] or --box x0,y0,x1,y1")
    prompt: dict[str, Any] = {"frame": frame}
    if points:
        parsed = [_numbers(p, "--point", (2, 3)) for p in points]
        prompt["points"] = [p[:2] for p in parsed]
        prompt["labels"] = [int(p[2]) if len(p) == 3 else 1 for p in parsed]
    if box is not None:
        prompt["box"] = _numbers(box, "--box", (4,))
    return prompt


def read_prompts(path: Path) -> dict[str, dict[str, Any]]:
    """`--prompts FILE`: JSON {object id: {"frame": i, "points": [[x, y], ...], "labels":
    [...]} or {"frame": i, "box": [x0, y0, x1, y1]}}: several objects tracked in one call (the
    tracker batches them); each prompt is checked by the tracker."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--prompts {path}: not a readable JSON file ({exc})") from None
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(v, dict) for v in data.values())
    ):
        raise InputError(
            f'--prompts {path}: expected {{"ID": {{"frame": 0, "points": [[x, y]], "labels":'
            ' [1]}, ...} (one object per id; "box": [x0, y0, x1, y1] instead of points)'
        )
    return {str(k): v for k, v in data.items()}


def _read_frame(path: Path) -> NDArray[np.uint8]:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            from PIL import Image
        except ImportError:
            raise InputError(f"{path}: JPEG frames need Pillow; give PNG frames") from None
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    from edgesam_export.device.png import read_image

    return read_image(path)


def read_frames(folder: Path) -> tuple[list[Path], list[NDArray[np.uint8]]]:
    """Frames sorted by the integer in their name (like SAM 2's loader), else by name."""
    if not folder.is_dir():
        raise InputError(f"FRAMES_DIR {folder} is not a folder of frame images")
    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES]
    if not files:
        raise InputError(f"{folder}: no frames ({', '.join(FRAME_SUFFIXES)})")
    files.sort(key=lambda p: (int(p.stem), p.name) if p.stem.isdigit() else (1 << 62, p.name))
    return files, [_read_frame(p) for p in files]


def overlay(frame: NDArray[np.uint8], *masks: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """Each object's mask tinted in its own colour (COLOURS, in order)."""
    out = frame.astype(np.float32)
    for i, mask in enumerate(masks):
        out[mask] = 0.45 * out[mask] + 0.55 * COLOURS[i % len(COLOURS)]
    return out.round().astype(np.uint8)


def strip(frames: list[NDArray[np.uint8]], *masks: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """Up to STRIP_FRAMES evenly spaced overlays side by side (every object's masks)."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(STRIP_FRAMES, len(frames))).round())
    return np.concatenate(
        [overlay(frames[int(i)], *(m[int(i)] for m in masks)) for i in picks], axis=1
    )


def track_cmd(
    artifact_dir: Annotated[
        Path,
        typer.Argument(
            help=f"Folder of an EdgeTAM export (edgesam-export {'|'.join(TRACKERS)} --model"
            " edgetam): its video graphs."
        ),
    ],
    frames_dir: Annotated[
        Path, typer.Argument(help="Folder of frames (JPEG/PNG/.npy), ordered by number.")
    ],
    point: Annotated[
        list[str] | None,
        typer.Option("--point", help="x,y[,label] in frame pixels (label 1 = object, 0 = not)."),
    ] = None,
    box: Annotated[str | None, typer.Option("--box", help="x0,y0,x1,y1 around the object.")] = None,
    frame: Annotated[int, typer.Option("--frame", help="Frame the prompt is on.", min=0)] = 0,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help='JSON {"ID": {"frame": 0, "points": [[x, y]], "labels": [1]} or {"frame": 0,'
            ' "box": [x0, y0, x1, y1]}, ...}: several objects in one call (instead of --point'
            " / --box).",
        ),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where mask PNGs and the strip go.")
    ] = Path("track_out"),
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            "-b",
            help=f"Whose video graphs to run when ARTIFACT_DIR holds several exports:"
            f" {', '.join(TRACKERS)} (default: ONNX when present).",
            show_default=False,
        ),
    ] = None,
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Track one object (--point / --box) or several (--prompts) through FRAMES_DIR: per-frame
    mask PNGs, an overlay strip and JSON.

    Runs SAM 2's video loop on the exported graphs (no torch), every object in the same batched
    calls, on the backend whose export ARTIFACT_DIR holds (--backend picks one). Exit codes: 0
    ok, 3 bad input, 5 artifact unreadable, 6 backend unavailable."""
    with guarded(debug):
        from edgesam_export.device.png import write_png
        from edgesam_export.video import VideoTracker

        if prompts_file is not None:
            if point or box is not None:
                raise InputError("give --prompts or --point/--box, not both")
            prompts = read_prompts(prompts_file)
        else:
            prompts = {"1": parse_prompt(point or [], box, frame)}
        files, frames = read_frames(frames_dir)
        if prompts_file is None and frame >= len(frames):
            raise InputError(
                f"--frame {frame}: FRAMES_DIR has {len(frames)} frames (0..{len(frames) - 1})"
            )
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise InputError(f"--output {output} exists and is not empty: give a new folder")
        if backend is not None and backend.lower() not in TRACKERS:
            raise InputError(
                f"invalid value for --backend: {backend!r}; allowed: {', '.join(TRACKERS)}"
            )
        tracker = VideoTracker.open(artifact_dir, backend and backend.lower())
        t0 = time.perf_counter()
        with count_bar("tracking", "frames") as bar:
            task = bar.add_task("track", total=len(frames))
            results = tracker.track(
                frames,
                prompts,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        seconds = time.perf_counter() - t0
        start = min(int(p.get("frame", 0)) for p in prompts.values())
        single = prompts_file is None  # the single-object file names and JSON stay as they were
        # write into a scratch folder next to the output, then move: nothing half-written
        output.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        try:
            objects: dict[str, list[dict[str, Any]]] = {}
            for obj, result in results.items():
                records = objects.setdefault(str(obj), [])
                for i, (path, mask) in enumerate(zip(files, result["masks"], strict=True)):
                    name = f"{path.stem}_mask.png" if single else f"{path.stem}_obj{obj}_mask.png"
                    png = (mask * 255).astype(np.uint8)[..., None].repeat(3, 2)
                    write_png(scratch / name, png)
                    records.append(
                        {
                            "frame": i,
                            "file": path.name,
                            "mask": name,
                            "area": int(mask.sum()),
                            "object_score_logit": float(result["object_score_logits"][i]),
                            "present": bool(result["object_score_logits"][i] > 0),
                        }
                    )
            masks = [r["masks"] for r in results.values()]
            write_png(scratch / "overlay_strip.png", strip(frames, *masks))
            if output.exists():
                output.rmdir()  # empty (checked above)
            scratch.replace(output)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch)
        fps = (len(frames) - start) / seconds if seconds > 0 else 0.0
        human_console(json_path).print(
            f"tracked {len(results)} object(s) over {len(frames) - start} frames in"
            f" {seconds:.1f} s ({fps:.2f} fps): masks and overlay_strip.png in [bold]{output}[/]"
        )
        emit_json(
            json_path,
            {
                "ok": True,
                "artifact_dir": str(artifact_dir),
                "frames_dir": str(frames_dir),
                **({"prompt": prompts["1"]} if single else {"prompts": prompts}),
                "output": str(output),
                "seconds": seconds,
                "fps": fps,
                "stage_seconds": tracker.timings,
                # one object: its frames; several: per object id
                **({"frames": objects["1"]} if single else {"objects": objects}),
            },
        )
