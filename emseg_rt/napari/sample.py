"""File > Open Sample > emseg-rt > "Beta-cell phantom": a synthetic FIB-SEM volume and its exact ground truth
(`data.phantom`, what `emseg-rt phantom` writes), the ground truth with the class names and label colours a
`segment` output has."""

from __future__ import annotations

from typing import Any

from napari.utils.colormaps import DirectLabelColormap

from emseg_rt.constants import GROUND_TRUTH
from emseg_rt.data.phantom import CLASS_NAMES, generate_phantom
from emseg_rt.napari.run import class_colours, class_features

SAMPLE_SHAPE = (32, 256, 256)  # (Z, Y, X): about 3 s to make, seconds to segment with the default model on a CPU
SAMPLE_SEED = 3  # the README's phantom seed


def phantom_sample() -> list[tuple[Any, dict, str]]:
    """The phantom as napari layer data: image (32, 256, 256) uint8 and ground truth labels (32, 256, 256) uint8
    (1 nucleus, 2 mitochondria, 3 granules), at voxel size (1, 1, 1)."""
    phantom = generate_phantom(SAMPLE_SHAPE, seed=SAMPLE_SEED)
    classes = tuple(CLASS_NAMES)
    scale = (phantom.anisotropy, 1.0, 1.0)
    truth = {"name": GROUND_TRUTH, "scale": scale, "features": class_features(classes),
             "colormap": DirectLabelColormap(color_dict=class_colours(classes)), "opacity": 0.5, "visible": False}
    return [(phantom.image, {"name": "phantom", "scale": scale}, "image"), (phantom.labels, truth, "labels")]
