"""`edgesam-export track`: follow an object through a folder of frames (EdgeTAM video graphs)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from numpy.typing import NDArray
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgesam_export.cli import DebugOpt, JsonOpt, emit_json, err_console, guarded, human_console
from edgesam_export.device.errors import InputError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".npy")
STRIP_FRAMES = 8  # frames shown in the overlay strip
OVERLAY = np.array([30, 144, 255], dtype=np.float32)


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


def overlay(frame: NDArray[np.uint8], mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
    out = frame.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * OVERLAY
    return out.round().astype(np.uint8)


def strip(frames: list[NDArray[np.uint8]], masks: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """Up to STRIP_FRAMES evenly spaced overlays side by side."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(STRIP_FRAMES, len(frames))).round())
    return np.concatenate([overlay(frames[int(i)], masks[int(i)]) for i in picks], axis=1)


def track_cmd(
    artifact_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder of an EdgeTAM export (onnx --model edgetam): its video graphs."
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
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where mask PNGs and the strip go.")
    ] = Path("track_out"),
    json_path: JsonOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Track one object through FRAMES_DIR: per-frame mask PNGs, an overlay strip and JSON.

    Runs SAM 2's video loop on the exported graphs (no torch). Exit codes: 0 ok, 3 bad input,
    5 artifact unreadable, 6 backend unavailable."""
    with guarded(debug):
        from edgesam_export.device.png import write_png
        from edgesam_export.video import VideoTracker

        prompt = parse_prompt(point or [], box, frame)
        files, frames = read_frames(frames_dir)
        if frame >= len(frames):
            raise InputError(
                f"--frame {frame}: FRAMES_DIR has {len(frames)} frames (0..{len(frames) - 1})"
            )
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise InputError(f"--output {output} exists and is not empty: give a new folder")
        tracker = VideoTracker.open(artifact_dir)
        t0 = time.perf_counter()
        with Progress(
            TextColumn("[dim]•[/] tracking"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("track", total=len(frames) - frame)
            result = tracker.track(
                frames, {1: prompt}, progress=lambda done, _: bar.update(task, completed=done)
            )[1]
        seconds = time.perf_counter() - t0
        # write into a scratch folder next to the output, then move: nothing half-written
        output.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        try:
            records = []
            for i, (path, mask) in enumerate(zip(files, result["masks"], strict=True)):
                name = f"{path.stem}_mask.png"
                write_png(scratch / name, (mask * 255).astype(np.uint8)[..., None].repeat(3, 2))
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
            write_png(scratch / "overlay_strip.png", strip(frames, result["masks"]))
            if output.exists():
                output.rmdir()  # empty (checked above)
            scratch.replace(output)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch)
        fps = (len(frames) - frame) / seconds if seconds > 0 else 0.0
        human_console(json_path).print(
            f"tracked {len(frames) - frame} frames in {seconds:.1f} s ({fps:.2f} fps):"
            f" masks and overlay_strip.png in [bold]{output}[/]"
        )
        emit_json(
            json_path,
            {
                "ok": True,
                "artifact_dir": str(artifact_dir),
                "frames_dir": str(frames_dir),
                "prompt": prompt,
                "output": str(output),
                "seconds": seconds,
                "fps": fps,
                "stage_seconds": tracker.timings,
                "frames": records,
            },
        )
