"""`emseg-rt demo`: the whole main job on a fresh machine, in well under two minutes on a 2-core CPU.

1. write a synthetic beta-cell phantom (OME-Zarr, ground truth in labels/ground_truth),
2. segment it with the embedded default model through the runtime (`segment_volume`),
3. score the result against the ground truth (Dice, IoU, AJI, PQ),
4. write a PNG: the middle slice with the predicted labels overlaid, next to the ground truth, in the colours
   the segmentation's `image-label` metadata gives each class (what napari shows), with a legend.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from emseg_rt.data.phantom import CLASS_NAMES, GROUND_TRUTH, generate_phantom, write_phantom
from emseg_rt.errors import EmsegError
from emseg_rt.io import read_label_metadata, read_volume
from emseg_rt.io.label_images import class_names_of
from emseg_rt.io.outputs import check_output_folder, write_file_atomic
from emseg_rt.metrics import SegmentationScores, evaluate
from emseg_rt.runtime import segment_volume
from emseg_rt.runtime.claim import is_our_output

DEMO_SEED = 7  # never used in training (scripts/train_default.py trains on seeds >= 1000)
DEMO_SHAPE = (16, 256, 256)
RGB = tuple[int, int, int]


@dataclass
class DemoReport:
    """Paths written, scores and timings (seconds) of one demo run."""

    phantom: Path
    segmentation: Path
    preview: Path
    scores: SegmentationScores
    seconds: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    model: str = ""


@dataclass(frozen=True)
class LegendEntry:
    """One class of a label image: its label value, name and display colour (RGB 0..255)."""

    value: int
    name: str
    rgb: RGB


def label_legend(label_path: str | Path) -> list[LegendEntry]:
    """The classes of the OME-Zarr label image at `label_path` with the colours its `image-label` metadata gives
    them (for a `segment` output: `io.ome_zarr.LABEL_PALETTE`, the one colour table), in label-value order."""
    image_label = read_label_metadata(label_path)
    names = class_names_of(image_label) or {}
    colours = {int(entry["label-value"]): tuple(int(v) for v in entry["rgba"][:3])
               for entry in image_label.get("colors") or []}
    return [LegendEntry(value, names.get(value, f"label {value}"), colours[value]) for value in sorted(colours)]


def colours_by_name(legend: list[LegendEntry], label_path: str | Path) -> dict[int, RGB]:
    """Label value → colour for the label image at `label_path`, each class coloured as the class of the same
    name in `legend` (so two label images that number their classes differently show alike)."""
    by_name = {entry.name: entry.rgb for entry in legend}
    names = class_names_of(read_label_metadata(label_path)) or {}
    return {value: by_name[name] for value, name in names.items() if name in by_name}


def overlay(image: np.ndarray, labels: np.ndarray, colours: dict[int, RGB], alpha: float = 0.45) -> np.ndarray:
    """image (Y, X) uint8 and labels (Y, X) integers → RGB (Y, X, 3) uint8 with `colours[value]` blended in
    (values without a colour, 0 among them, are left grey)."""
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    for value, colour in colours.items():
        mask = labels == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(colour, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_preview(path: Path, image: np.ndarray, panels: tuple[np.ndarray, np.ndarray], title: str,
                  legend: list[LegendEntry], truth_colours: dict[int, RGB] | None = None) -> Path:
    """PNG of three panels, raw slice, prediction overlaid, ground truth overlaid (`image` and `panels` (Y, X)),
    under a title line and over a legend: a swatch of each class's colour and its name. The prediction takes
    the legend's colours by value, the ground truth `truth_colours` (default: the same)."""
    gap, header, footer = 8, 32, 22
    colours = {entry.value: entry.rgb for entry in legend}
    prediction, truth = panels
    views = [np.repeat(image[..., None], 3, axis=2), overlay(image, prediction, colours),
             overlay(image, truth, colours if truth_colours is None else truth_colours)]
    h, w = image.shape
    canvas = np.full((header + h + footer, 3 * w + 2 * gap, 3), 255, np.uint8)
    for i, view in enumerate(views):
        canvas[header:header + h, i * (w + gap) : i * (w + gap) + w] = view
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for i, text in enumerate(("EM slice", "prediction", "ground truth")):
        draw.text((i * (w + gap) + 4, 2), text, fill=(0, 0, 0))
    draw.text((4, 17), title, fill=(90, 90, 90))
    x, y = 4, header + h + 5
    for entry in legend:
        draw.rectangle((x, y, x + 11, y + 11), fill=entry.rgb)  # 12 × 12 px of exactly the metadata colour
        draw.text((x + 16, y), entry.name, fill=(0, 0, 0))
        x += 16 + int(draw.textlength(entry.name)) + 14
    return write_file_atomic(path, lambda tmp: picture.save(tmp, format="PNG"), "--out")


def _is_phantom(path: Path) -> bool:
    """Whether `path` is an OME-Zarr image `write_phantom` wrote (its root attribute `emseg_rt_phantom`)."""
    try:
        attributes = json.loads((path / "zarr.json").read_bytes()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(attributes, dict) and "emseg_rt_phantom" in attributes


def _is_png(path: Path) -> bool:
    try:
        with Image.open(path) as picture:
            return picture.format == "PNG"
    except (OSError, UnidentifiedImageError):
        return False


def check_demo_folder(out: Path) -> None:
    """The demo replaces only what a demo wrote: `out` is a folder (or new, in an existing folder), and its
    phantom.zarr, segmentation.zarr and preview.png are absent or a phantom, an emseg-rt segmentation and a
    PNG image. EmsegError (one line) otherwise, before anything is written."""
    check_output_folder(out, "--out")
    phantom, segmentation, preview = out / "phantom.zarr", out / "segmentation.zarr", out / "preview.png"
    checks = ((phantom, _is_phantom), (preview, _is_png),
              (segmentation, lambda p: p.is_dir() and (is_our_output(p) or not any(p.iterdir()))))
    foreign = [path.name for path, ours in checks
               if (path.exists() or path.is_symlink()) and (path.is_symlink() or not ours(path))]
    if foreign:
        raise EmsegError(f"--out {out}: {', '.join(foreign)} there not written by a demo; it is left alone: "
                         "choose another --out")


def run_demo(
    out: str | Path = "demo-out",
    seed: int = DEMO_SEED,
    shape: tuple[int, int, int] = DEMO_SHAPE,
    backend: str = "torch",
    progress: bool = False,
) -> DemoReport:
    """Run the demo into folder `out` (created in an existing folder; earlier demo results in it are replaced,
    nothing else: `check_demo_folder`)."""
    out = Path(out)
    check_demo_folder(out)
    out.mkdir(exist_ok=True)
    phantom_path, seg_path, preview_path = out / "phantom.zarr", out / "segmentation.zarr", out / "preview.png"
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    phantom = generate_phantom(shape, seed=seed)
    shutil.rmtree(phantom_path, ignore_errors=True)
    write_phantom(phantom_path, phantom)
    seconds["phantom"] = time.perf_counter() - t

    # One intra-op thread: the default model is small (0.5 GFLOP per 256² slice), and on a 2-core machine
    # shared with other work two torch threads were measured ~10× slower (53 s vs 5 s for this volume).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = time.perf_counter()
    try:
        result = segment_volume(phantom_path, seg_path, model=None, backend=backend, overwrite=True,
                                progress=progress)
    finally:
        torch.set_num_threads(threads)
    seconds["segment"] = time.perf_counter() - t

    t = time.perf_counter()
    prediction = read_volume(result.label_path)
    truth = read_volume(phantom_path, labels=GROUND_TRUTH)
    scores = evaluate(prediction, truth, CLASS_NAMES)
    seconds["eval"] = time.perf_counter() - t

    z = shape[0] // 2
    dice_text = ", ".join(f"{name} {scores.dice[name]:.2f}" for name in CLASS_NAMES)
    legend = label_legend(result.label_path)
    write_preview(preview_path, phantom.image[z], (prediction[z], truth[z]), f"z={z}  Dice: {dice_text}", legend,
                  colours_by_name(legend, phantom_path / "labels" / GROUND_TRUTH))
    seconds["total"] = sum(seconds.values())
    return DemoReport(phantom=phantom_path, segmentation=seg_path, preview=preview_path, scores=scores,
                      seconds=seconds, backend=result.backend, model=result.model)
