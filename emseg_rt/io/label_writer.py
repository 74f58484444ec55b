"""Writing OME-Zarr label images (`image-label`) with their pyramids, in OME-Zarr 0.5 (zarr v3) or 0.4 (zarr v2).

A label image is a group with `multiscales` and `image-label` metadata and one array per level. Label
values are never interpolated: each voxel of a lower level takes the s0 voxel nearest to its centre, the
centre being where the level's own scale and translation put it (index j → s0 index round(j·r + o), with
r the scale ratio and o the translation offset in s0 voxels). For our own pyramids (2× per level, s0's
translation) that is plain stride sampling, voxel j·2^l; for `--into-input` it follows whatever transforms
the image's levels carry (ome-zarr-py, for instance, gives a 90-pixel axis levels of 45 and 22 voxels,
scale ratios 2 and 4.09), so labels and image overlay level by level.

    LabelImageSpec    what to create: axes, units, classes, levels (shape, scale, translation),
                      dtype, chunks and the OME-Zarr version
    pyramid_levels    levels 2× smaller in y and x per level, for a new label image
    levels_like_image the levels of an existing image (`--into-input`): same count, shapes and transforms
    create_label_image  the group and its empty level arrays (s0 filled by the caller, block by block)
    write_lower_levels  s1.. from s0, slab by slab
    register_label    append a name to an image's `labels` list, atomically, under a lock
"""

from __future__ import annotations

import fcntl
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import axes_metadata, default_colors

ZARR_FORMAT = {"0.5": 3, "0.4": 2}
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


@dataclass(frozen=True)
class LabelImageSpec:
    """Everything `create_label_image` writes. `chunks` are s0's; lower levels use min(chunks, shape)."""

    name: str
    axes: str
    units: tuple[str | None, ...]
    classes: tuple[str, ...]
    levels: tuple[Level, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    version: str = "0.5"
    colors: tuple[tuple[int, int, int, int], ...] | None = None

    @property
    def zarr_format(self) -> int:
        return ZARR_FORMAT[self.version]


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
    from emseg_rt.io.zarr_reader import ome_scale_translation

    levels = []
    for dataset in multiscale["datasets"]:
        scale, translation = ome_scale_translation(multiscale, dataset, len(shape))
        level_shape = tuple(int(s) for s in image[dataset["path"]].shape)
        levels.append(Level(dataset["path"], level_shape, tuple(scale), tuple(translation)))
    if levels[0].shape != tuple(shape):
        raise EmsegError(f"the input image's level 0 has shape {levels[0].shape}, not the segmented {tuple(shape)}")
    return tuple(levels)


def _transforms(level: Level) -> list[dict]:
    transforms: list[dict] = [{"type": "scale", "scale": list(level.scale)}]
    if any(level.translation):
        transforms.append({"type": "translation", "translation": list(level.translation)})
    return transforms


def label_image_metadata(spec: LabelImageSpec, source_image: str | None = "../../") -> dict:
    """The group attributes of a label image: `multiscales` + `image-label` (classes as `properties`, colours),
    under "ome" for 0.5, at the top level with a "version" in each for 0.4."""
    colors = spec.colors or tuple(default_colors(len(spec.classes)))
    multiscale: dict[str, Any] = {
        "name": spec.name, "axes": axes_metadata(spec.axes, list(spec.units)),
        "datasets": [{"path": lvl.path, "coordinateTransformations": _transforms(lvl)} for lvl in spec.levels],
    }
    image_label: dict[str, Any] = {  # no classes (instance IDs): no colours or properties, viewers pick colours
        "colors": [{"label-value": i + 1, "rgba": [int(c) for c in colors[i]]} for i in range(len(spec.classes))],
        "properties": [{"label-value": i + 1, "class": str(n)} for i, n in enumerate(spec.classes)],
    } if spec.classes else {}
    if source_image:
        image_label["source"] = {"image": source_image}
    if spec.version == "0.4":
        return {"multiscales": [{"version": "0.4", **multiscale}], "image-label": {"version": "0.4", **image_label}}
    return {"ome": {"version": spec.version, "multiscales": [multiscale], "image-label": image_label}}


def create_array(group: zarr.Group, name: str, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                 dimension_names: Sequence[str] | None, zarr_format: int, **options: Any) -> zarr.Array:
    """An empty array in `group` with OME-Zarr's chunk-key rules: v3 default encoding, v2 with '/' separators."""
    if zarr_format == 2:
        return group.create_array(name, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks), fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"}, **options)
    return group.create_array(name, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks), fill_value=0,
                              dimension_names=list(dimension_names) if dimension_names else None, **options)


def create_label_image(path: Path, spec: LabelImageSpec, *, source_image: str | None = "../../",
                       extra_attributes: dict | None = None) -> list[zarr.Array]:
    """Create the label image group at `path` with every level's empty array; returns the arrays, s0 first."""
    group = zarr.open_group(str(path), mode="a", zarr_format=spec.zarr_format)
    arrays = []
    for level in spec.levels:
        chunks = tuple(min(c, s) for c, s in zip(spec.chunks, level.shape))
        arrays.append(create_array(group, level.path, level.shape, spec.dtype, chunks, list(spec.axes),
                                   spec.zarr_format, overwrite=True))
    attrs = label_image_metadata(spec, source_image)
    group.attrs.update({**attrs, **(extra_attributes or {})})
    return arrays


def write_lower_levels(group_path: Path, spec: LabelImageSpec, levels: Sequence[int],
                       max_bytes: int = 256 * 2**20) -> None:
    """Fill levels `levels` (indices ≥ 1) from s0 by nearest-centre sampling (`Level.source_indices`), whole
    target chunks along axis 0 at a time, reading at most ~`max_bytes` of s0 per slab."""
    group = zarr.open_group(str(group_path), mode="r+")
    base = spec.levels[0]
    source = group[base.path]
    for index in levels:
        level = spec.levels[index]
        target = group[level.path]
        picks = [level.source_indices(base, axis) for axis in range(len(level.shape))]
        plane_bytes = int(np.prod(source.shape[1:])) * source.dtype.itemsize
        span = max(1, int(np.ceil(base.shape[0] / max(level.shape[0], 1))))
        rows = max(target.chunks[0], (max_bytes // max(plane_bytes * span, 1)) // target.chunks[0] * target.chunks[0])
        for start in range(0, level.shape[0], rows):
            stop = min(start + rows, level.shape[0])
            first = picks[0][start:stop]
            slab = np.asarray(source[int(first.min()): int(first.max()) + 1])
            target[start:stop] = slab[np.ix_(first - first.min(), *picks[1:])]


def labels_group_attributes(names: Sequence[str], version: str) -> dict:
    """The `labels` group's attributes listing label images, for OME-Zarr `version`."""
    if version == "0.4":
        return {"labels": list(names)}
    return {"ome": {"version": version, "labels": list(names)}}


def listed_labels(attrs: dict) -> list[str]:
    """The names a `labels` group lists (0.4 top level or 0.5 under "ome")."""
    return list(attrs.get("ome", {}).get("labels", attrs.get("labels", [])))


def require_labels_group(image_path: Path, version: str) -> zarr.Group:
    """The image's `labels` group, created (listing nothing yet) when it does not exist."""
    image = zarr.open_group(str(image_path), mode="r+")
    if "labels" in image:
        return image["labels"]
    group = image.create_group("labels")
    group.attrs.update(labels_group_attributes([], version))
    return group


def register_label(image_path: Path, name: str, version: str, lock_path: Path) -> None:
    """Append `name` to the image's `labels` list (once): one atomic metadata write, under an exclusive lock so
    that concurrent runs adding other names do not lose each other's entries."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        group = require_labels_group(image_path, version)
        names = listed_labels(dict(group.attrs))
        if name not in names:
            group.attrs.update(labels_group_attributes(names + [name], version))
