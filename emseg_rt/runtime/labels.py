"""`segment_labels`: the labels of a volume as an array in memory, nothing written (napari plugins, notebooks).

The same reader, normalisation, tiler, batching and write blocks as `segment_volume`, so the array equals
what `segment_volume` writes to s0 for the same input and options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.io import is_array, is_url
from emseg_rt.io.ome_zarr import label_dtype
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.normalise import dataset_normalisation, parse_window
from emseg_rt.runtime.options import SegmentOptions
from emseg_rt.runtime.prompts import PointSet, load_points
from emseg_rt.runtime.slab import PromptMode, segment_planes
from emseg_rt.runtime.tiling import plan_tiles


def segment_labels(
    input: Any,
    *,
    model: str | None = None,
    checkpoints: Sequence[str | Path] = (),
    backend: str | Backend = "auto",
    device: str = "cpu",
    precision: str = "fp32",
    batch: int = 4,
    halo: int | None = None,
    blend: str = "center",
    axis: str = "z",
    block: int = 8,
    key: str | None = None,
    level: int | None = None,
    window: str | None = None,
    say: Callable[[str], None] | None = None,
    prompts: str | Path | PointSet | None = None,
    tta: bool = False,
    peak_threshold: float | None = None,
) -> np.ndarray:
    """Segment a 3D volume and return its labels (Z, Y, X) uint8 (uint16 past 255 classes), 0 = background.

    input: a numpy / dask / zarr array (Z, Y, X), or any path or URL `segment_volume` reads. The other
    arguments (`prompts` with "auto", `tta`, `peak_threshold` included) mean what they mean for `segment_volume`. Holds the whole label
    volume in memory.
    """
    from emseg_rt.runtime.loader import load_backend
    from emseg_rt.runtime.segment import _check_backend, _peak_threshold, open_input, read_slab, region_of

    options = SegmentOptions(batch=batch, halo=halo, blend=blend, axis=axis, block=block, tta=tta).validate()
    auto = isinstance(prompts, str) and prompts == "auto"
    points = None if prompts is None or auto else load_points(prompts)
    auto_threshold = _peak_threshold(auto, peak_threshold)
    source = input if is_array(input) or is_url(input) else Path(input)
    volume, where = open_input(source, key, level)
    norm = dataset_normalisation(volume.array, where, window=parse_window(window) if window else None)
    owns = isinstance(backend, str)
    engine = load_backend(model, backend, device, precision, checkpoints, say=say) if owns else backend
    try:
        max_points = _check_backend(engine, options, points, auto=auto_threshold is not None)
        axis_index = options.axis_index(volume.axes)
        shape = volume.shape
        plan = plan_tiles(tuple(s for i, s in enumerate(shape) if i != axis_index), engine.spec.tile,
                          options.halo_for(engine.spec.tile))
        out = np.zeros(shape, label_dtype(len(engine.spec.classes)))
        for start in range(0, shape[axis_index], options.block):
            stop = min(start + options.block, shape[axis_index])
            slab = read_slab(volume.array, start, stop, axis_index, options.axis, norm, where)
            labels, _, _ = segment_planes(engine, slab, plan, PromptMode(max_points, points, auto_threshold),
                                          start=start, axis=axis_index, batch=options.batch, blend=options.blend,
                                          probabilities=False, label_type=out.dtype, tta=options.tta)
            out[region_of(start, stop, axis_index)] = np.moveaxis(labels, 0, axis_index)
        return out
    finally:
        if owns:
            engine.close()
