"""The resolution levels of an OME-Zarr image: their geometry, and filling the lower ones from s0.

Label values are never interpolated: each voxel of a lower level takes the s0 voxel nearest to its centre, the
centre being where the level's own scale and translation put it (index j → s0 index round(j·r + o), with
r the scale ratio and o the translation offset in s0 voxels). For our own pyramids (2× per level, s0's
translation) that is plain stride sampling, voxel j·2^l; for `--into-input` it follows whatever transforms
the image's levels carry (ome-zarr-py, for instance, gives a 90-pixel axis levels of 45 and 22 voxels,
scale ratios 2 and 4.09), so labels and image overlay level by level.

    Level              one level: array path, shape, scale and translation per axis
    pyramid_levels     levels 2× smaller in y and x per level, for a new image or label image
    levels_like_image  the levels of an existing image (`--into-input`): same count, shapes and transforms
    default_level_count  how many levels a new output gets by default (from the plane size)
    write_lower_levels s1.. from s0, slab by slab (images and label images alike)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io.zarr_reader import ome_scale_translation

MIN_LEVEL_SIZE = 256  # default pyramids stop once the in-plane size would drop below this


@dataclass(frozen=True)
class Level:
    """One resolution level: array `path`, `shape`, physical `scale` and `translation` per axis."""

    path: str
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]

    def source_indices(self, base: "Level", axis: int) -> np.ndarray:
        """For each voxel of this level along `axis`, the index of the `base` (s0) voxel nearest its centre."""
        ratio = self.scale[axis] / base.scale[axis]
        offset = (self.translation[axis] - base.translation[axis]) / base.scale[axis]
        index = np.floor(np.arange(self.shape[axis]) * ratio + offset + 0.5)
        return np.clip(index, 0, base.shape[axis] - 1).astype(np.int64)


def default_level_count(shape: Sequence[int], axes: str, min_size: int = MIN_LEVEL_SIZE) -> int:
    """1 + the number of 2× in-plane (y, x) halvings that keep the larger in-plane size ≥ `min_size`."""
    plane = max((s for s, a in zip(shape, axes) if a in "yx"), default=1)
    count = 1
    while plane / 2**count >= min_size:
        count += 1
    return count


def pyramid_levels(shape: Sequence[int], axes: str, voxel_size: Sequence[float], translation: Sequence[float],
                   count: int) -> tuple[Level, ...]:
    """`count` levels s0..s(count-1), each 2× smaller in y and x (stride sampling; z and other axes kept)."""
    if count < 1:
        raise EmsegError(f"--levels must be at least 1, got {count}")
    levels = []
    for index in range(count):
        factors = tuple(2**index if a in "yx" else 1 for a in axes)
        levels.append(Level(f"s{index}", tuple(math.ceil(s / f) for s, f in zip(shape, factors)),
                            tuple(float(v) * f for v, f in zip(voxel_size, factors)), tuple(map(float, translation))))
    return tuple(levels)


def levels_like_image(image: zarr.Group, multiscale: dict, shape: Sequence[int]) -> tuple[Level, ...]:
    """The image's own levels: paths, shapes, and scale and translation as its metadata states them."""
    levels = []
    for dataset in multiscale["datasets"]:
        scale, translation = ome_scale_translation(multiscale, dataset, len(shape))
        level_shape = tuple(int(s) for s in image[dataset["path"]].shape)
        levels.append(Level(dataset["path"], level_shape, tuple(scale), tuple(translation)))
    if levels[0].shape != tuple(shape):
        raise EmsegError(f"the input image's level 0 has shape {levels[0].shape}, not the segmented {tuple(shape)}")
    return tuple(levels)


def write_lower_levels(group_path: Path, levels: Sequence[Level], indices: Sequence[int],
                       max_bytes: int = 256 * 2**20) -> None:
    """Fill levels[i] for i in `indices` (each ≥ 1) of the group at `group_path` from its levels[0] by
    nearest-centre sampling (`Level.source_indices`), whole target chunks (whole shards of a sharded level, so
    each shard is written once, in one piece) along axis 0 at a time, reading at most ~`max_bytes` of s0 per
    slab (or one shard's worth when that is more)."""
    group = zarr.open_group(str(group_path), mode="r+")
    base = levels[0]
    source = group[base.path]
    for index in indices:
        level = levels[index]
        target = group[level.path]
        picks = [level.source_indices(base, axis) for axis in range(len(level.shape))]
        plane_bytes = int(np.prod(source.shape[1:])) * source.dtype.itemsize
        span = max(1, int(np.ceil(base.shape[0] / max(level.shape[0], 1))))
        unit = (target.shards or target.chunks)[0]
        rows = max(unit, (max_bytes // max(plane_bytes * span, 1)) // unit * unit)
        for start in range(0, level.shape[0], rows):
            stop = min(start + rows, level.shape[0])
            first = picks[0][start:stop]
            slab = np.asarray(source[int(first.min()): int(first.max()) + 1])
            target[start:stop] = slab[np.ix_(first - first.min(), *picks[1:])]
