"""`segment_labels`: the labels of a volume as an array in memory, nothing written (napari plugins, notebooks).

The in-memory scheduler of the one block driver (`runtime.block`): the same request, reader, normalisation,
tiler, batching and blocks as `segment_volume`, so the array equals what `segment_volume` writes to s0 for the
same input and options.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emseg_rt.io.volume import whole_array
from emseg_rt.progress import Progress
from emseg_rt.runtime.block import BlockDriver, array_sink, open_input
from emseg_rt.runtime.mask import open_mask
from emseg_rt.runtime.normalise import dataset_normalisation, parse_window
from emseg_rt.runtime.plan import RunPlan
from emseg_rt.runtime.prompts import check_points_inside
from emseg_rt.runtime.reference import reference_window
from emseg_rt.runtime.request import SegmentRequest, check_against, open_backend

# segment_volume's keywords that mean something for labels held in memory (the others write or schedule)
IN_MEMORY_CHOICES = frozenset({"model", "checkpoints", "backend", "device", "precision", "batch", "halo", "blend",
                               "axis", "block", "key", "level", "window", "say", "prompts", "tta", "peak_threshold",
                               "roi", "mask", "mask_level", "progress", "on_progress"})


def segment_labels(input: Any, **choices: Any) -> np.ndarray:
    """Segment a 3D volume and return its labels (Z, Y, X) uint8 (uint16 past 255 classes), 0 = background.

    input:   a numpy / dask / zarr array (Z, Y, X), or any path or URL `segment_volume` reads.
    choices: model, checkpoints, backend (a name or a loaded Backend), device (default 'cpu'), precision,
             batch, halo, blend, axis, block, key, level, window, say, prompts (with "auto"), tta,
             peak_threshold, roi, mask and mask_level, meaning what they mean for `segment_volume`
             (`SegmentRequest`); progress (a bar, or lines through `say`) and on_progress(planes done, planes in
             all), called after each block (an exception it raises stops the run: a GUI's Cancel).
    Holds the whole label volume in memory.
    """
    unknown = sorted(set(choices) - IN_MEMORY_CHOICES)
    if unknown:
        raise TypeError(f"segment_labels() got an unexpected keyword argument {unknown[0]!r}")
    choices.setdefault("device", "cpu")
    return labels_of(SegmentRequest.from_keywords(input, **choices))


def labels_of(request: SegmentRequest) -> np.ndarray:
    """The labels (Z, Y, X) of a request (validated here if it was built directly), block after block in memory;
    (Y, X) for a 2D image."""
    request = request.checked_once()
    volume, where = open_input(request.source, request.key, request.level, request.region)
    check_points_inside(request.points, volume.shape)
    window = parse_window(request.window) if request.window else None
    norm = dataset_normalisation(whole_array(volume.array), where, window=window,
                                 reference=reference_window(request.model, request.backend))
    engine, owns_backend, _ = open_backend(request, request.note)
    try:
        run = RunPlan(engine, volume, request.options, norm, where, check_against(engine, request, instances=False),
                      mask=open_mask(request.mask, request.mask_level, volume))
        out = np.zeros(volume.shape, run.label_type)
        driver = BlockDriver(engine, volume.array, run.job, array_sink(out, run.axis_index))
        with Progress("segment", run.depth, say=request.say, enabled=request.progress,
                      listener=request.on_progress) as progress:
            for block in run.blocks:
                driver.run(block)
                progress.advance(block[2] - block[1])
        return out[0] if volume.planar else out  # a 2D image: its (Y, X) labels
    finally:
        if owns_backend:
            engine.close()
