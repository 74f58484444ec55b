"""What the "Segment organelles" widget runs, without Qt: one image layer's data through the runtime's array API.

    segmentation = segment_image(layer.data, WidgetChoices(model="scsam-tiny", instances=True),
                                 on_progress=lambda done, total: ..., say=print)

In memory (`segment_labels`) unless the run writes: with an OME-Zarr output path, or with instances (the
instance stage runs on a run's output store), it is a `SegmentRequest` run by `run_segment` into that path (or a
scratch directory removed afterwards), and the layers are read back from the label image it wrote. Either way the
block driver, tiler and writer are the library's own; the labels equal `segment_labels` on the same array.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.io.label_images import instance_images, open_label_image
from emseg_rt.io.ome_zarr import default_colors
from emseg_rt.runtime import SegmentRequest, load_backend, run_segment, segment_labels

Listener = Callable[[int, int | None], None]
Say = Callable[[str], None]


class RunCancelled(Exception):
    """Raised by the widget's progress listener after Cancel: the run stops before its next block."""


@dataclass(frozen=True)
class WidgetChoices:
    """The widget's choices. model: a registry name or a model package directory (None: the embedded default);
    backend / device: as `segment --backend / --device` ('auto' for both by default); instances: also each
    class's instances; output: also write the OME-Zarr label image there (a new directory)."""

    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    instances: bool = False
    output: Path | None = None


@dataclass
class Segmentation:
    """A finished run: labels (Z, Y, X) or (Y, X) uint8 (uint16 past 255 classes), 0 = background; classes: the
    names of label values 1..K; instances: class name → uint32 IDs of the same shape; output: where the OME-Zarr
    label image was written (None: nowhere)."""

    labels: np.ndarray
    classes: tuple[str, ...]
    instances: dict[str, np.ndarray] = field(default_factory=dict)
    output: Path | None = None


def image_data(name: str, data: Any, rgb: bool, multiscale: bool) -> Any:
    """The array a widget run segments from an image layer: level 0 of a multiscale one; EmsegError (one line)
    for an RGB layer or one that is neither 2D (Y, X) nor 3D (Z, Y, X)."""
    array = data[0] if multiscale else data
    if rgb:
        raise EmsegError(f"image layer {name!r} is RGB; segment takes grey-level EM images (convert it to one "
                         "channel first)")
    if len(array.shape) not in (2, 3):
        raise EmsegError(f"image layer {name!r} is {len(array.shape)}D with shape {tuple(array.shape)}; segment "
                         "takes 2D (y, x) images and 3D (z, y, x) volumes")
    return array


def segment_image(data: Any, choices: WidgetChoices, on_progress: Listener, say: Say) -> Segmentation:
    """Segment data (Z, Y, X) or (Y, X) with `choices`; on_progress(planes done, planes in all) after loading the
    model (total None) and after each block: raising from it (`RunCancelled`) stops the run there, and with an
    output path leaves an unfinished output that `emseg-rt segment --resume` can finish."""
    engine = load_backend(choices.model, choices.backend, choices.device, say=say)
    try:
        on_progress(0, None)  # a Cancel while the model loaded stops here, before the first block
        classes = tuple(engine.spec.classes)
        common = {"backend": engine, "device": choices.device, "say": say, "on_progress": on_progress}
        if choices.output is None and not choices.instances:
            return Segmentation(segment_labels(data, **common), classes)
        return _through_ome_zarr(data, choices, classes, common)
    finally:
        engine.close()


def _through_ome_zarr(data: Any, choices: WidgetChoices, classes: tuple[str, ...],
                      common: dict[str, Any]) -> Segmentation:
    """The run as `segment_volume` runs it, into choices.output (or a scratch directory), read back."""
    with tempfile.TemporaryDirectory(prefix="emseg-rt-napari-") as scratch:
        output = choices.output if choices.output is not None else Path(scratch) / "labels.zarr"
        request = SegmentRequest.from_keywords(data, output, instances=classes if choices.instances else None,
                                               **common)
        run_segment(request)
        label_image = open_label_image(output, role="prediction")
        labels = label_image.read()
        instances = {name: image.read() for name, image in instance_images(label_image).items()}
    return Segmentation(labels, classes, instances, choices.output)


def class_colours(classes: tuple[str, ...]) -> dict[int | None, tuple[float, ...]]:
    """Label value → RGBA 0..1: the colours `segment` writes into the OME-Zarr `image-label` metadata
    (`io.ome_zarr.default_colors`) for values 1..K; background (0) and values outside 0..K transparent."""
    colours: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for value, rgba in enumerate(default_colors(len(classes)), start=1):
        colours[value] = tuple(channel / 255.0 for channel in rgba)
    return colours


def class_features(classes: tuple[str, ...]) -> dict[str, list]:
    """A Labels layer's features table: one row per label value 0..K (`index`), its class name (`class`)."""
    return {"index": list(range(len(classes) + 1)), "class": ["background", *classes]}
