"""OME-Zarr 0.5 (zarr v3) images and label images (writers); the readers live in `readers` and re-export here.

Writers:
    write_ome_image(path, array, voxel_size=..., axes="zyx")      → an image group with multiscales s0, s1, ...
    write_ome_labels(image_path, name, labels, class_names, ...)  → image/labels/<name>, an `image-label` group
    create_ome_image / create_ome_labels                           → empty arrays to fill chunk by chunk (streaming)
    write_volume_with_labels(path, image, {name: labels}, ...)    → image + label groups, atomically (temp + rename)
Readers (in `readers` / `zarr_reader`, importable from here too):
    open_volume(source, key=None, level=None, labels=None) → Volume (lazy array + axes, voxel size, units)
    read_volume(source, key=None, level=None, labels=None) → numpy array (the whole level in memory)
    list_label_groups(path)                                → names of the image's label groups
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io.readers import open_volume, read_volume  # noqa: F401  (the readers' old home; kept importable)
from emseg_rt.io.volume import AXIS_TYPES, Volume  # noqa: F401
from emseg_rt.io.zarr_reader import _scale_of, list_label_groups, read_label_metadata  # noqa: F401

OME_VERSION = "0.5"
DEFAULT_UNIT = "nanometer"

# Distinct, colour-blind-friendly RGBA colours for labels 1, 2, ... (Okabe–Ito, then Tableau).
LABEL_PALETTE: tuple[tuple[int, int, int, int], ...] = (
    (230, 159, 0, 255), (86, 180, 233, 255), (0, 158, 115, 255), (240, 228, 66, 255), (0, 114, 178, 255),
    (213, 94, 0, 255), (204, 121, 167, 255), (31, 119, 180, 255), (255, 127, 14, 255), (44, 160, 44, 255),
    (214, 39, 40, 255), (148, 103, 189, 255), (140, 86, 75, 255), (227, 119, 194, 255), (127, 127, 127, 255),
)


def default_colors(num_classes: int) -> list[tuple[int, int, int, int]]:
    """RGBA colours for labels 1..num_classes, cycling through LABEL_PALETTE."""
    return [LABEL_PALETTE[i % len(LABEL_PALETTE)] for i in range(num_classes)]


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 255 classes (0 = background), uint16 above."""
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)


# ---------------------------------------------------------------------------------------------- metadata


def axes_metadata(axes: str | Sequence[str], units: str | Sequence[str | None] | None = DEFAULT_UNIT) -> list[dict]:
    """OME `axes` entries: [{"name": "z", "type": "space", "unit": "nanometer"}, ...] (no unit on 'c')."""
    names = list(axes)
    if isinstance(units, str) or units is None:
        units = [units if AXIS_TYPES.get(n) == "space" else None for n in names]
    entries = []
    for name, unit in zip(names, units):
        entry: dict[str, Any] = {"name": name, "type": AXIS_TYPES.get(name, "space")}
        if unit:
            entry["unit"] = unit
        entries.append(entry)
    return entries


def multiscales_metadata(
    axes: str | Sequence[str],
    voxel_size: Sequence[float],
    level_paths: Sequence[str],
    level_factors: Sequence[Sequence[float]],
    units: str | Sequence[str | None] | None = DEFAULT_UNIT,
    name: str | None = None,
    translation: Sequence[float] | None = None,
) -> list[dict]:
    """The `multiscales` list for one image: one dataset per level with its scale (and translation).

    Levels here are stride-sampled (voxel j of a level is voxel j·f of s0), so every level keeps s0's
    `translation`; only averaging would shift level centres by half a voxel.
    """
    translation = [float(t) for t in translation] if translation is not None else [0.0] * len(voxel_size)
    datasets = []
    for path, factors in zip(level_paths, level_factors):
        scale = [float(v) * float(f) for v, f in zip(voxel_size, factors)]
        transforms: list[dict] = [{"type": "scale", "scale": scale}]
        if any(translation):
            transforms.append({"type": "translation", "translation": translation})
        datasets.append({"path": path, "coordinateTransformations": transforms})
    entry: dict[str, Any] = {"axes": axes_metadata(axes, units), "datasets": datasets}
    if name:
        entry["name"] = name
    return [entry]


def image_label_metadata(
    class_names: Sequence[str], colors: Sequence[Sequence[int]] | None = None, source_image: str | None = "../../"
) -> dict:
    """OME `image-label`: a colour and a `class` property per label value 1..K (0 is background)."""
    colors = list(colors) if colors is not None else default_colors(len(class_names))
    if len(colors) < len(class_names):
        raise EmsegError(f"{len(class_names)} class names but only {len(colors)} colours")
    meta: dict[str, Any] = {
        "version": OME_VERSION,
        "colors": [{"label-value": i + 1, "rgba": [int(c) for c in colors[i]]} for i in range(len(class_names))],
        "properties": [{"label-value": i + 1, "class": str(n)} for i, n in enumerate(class_names)],
    }
    if source_image:
        meta["source"] = {"image": source_image}
    return meta


# ---------------------------------------------------------------------------------------------- writers


def _level_factors(axes: str, levels: int) -> list[tuple[int, ...]]:
    """Per-level downsampling factors: 2× per level along y and x, 1 along other axes."""
    return [tuple(2**lvl if a in "yx" else 1 for a in axes) for lvl in range(levels)]


def _default_chunks(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    """Thin slabs along the first spatial axis, tiles of at most 1024 in-plane."""
    return tuple(min(s, 8 if i == axes.find("z") else 1024) if a in "zyx" else 1 for i, (s, a) in enumerate(zip(shape, axes)))


def _open_group_for_write(path: Path, overwrite: bool) -> zarr.Group:
    if path.exists() and not path.is_dir():
        raise EmsegError(f"{path} is a file, not a directory: choose another output path")
    try:
        return zarr.open_group(str(path), mode="w" if overwrite else "a", zarr_format=3)
    except PermissionError as exc:
        raise EmsegError(f"cannot write {path}: permission denied; choose a writable output location") from exc


def create_ome_image(
    path: str | Path,
    shape: Sequence[int],
    dtype: Any,
    *,
    voxel_size: Sequence[float] | None = None,
    axes: str = "zyx",
    units: str | Sequence[str | None] | None = DEFAULT_UNIT,
    chunks: Sequence[int] | None = None,
    extra_attributes: dict | None = None,
    overwrite: bool = False,
    name: str | None = None,
) -> zarr.Array:
    """Create an OME-Zarr 0.5 image group with one empty level `s0` and return that array to fill.

    shape/axes: e.g. (Z, Y, X) with axes "zyx", or (C, Z, Y, X) with "czyx". voxel_size is per axis
    (1.0 for 'c'); chunks default to thin slabs (8 slices × ≤1024 × ≤1024).
    """
    path = Path(path)
    axes = "".join(axes)
    if len(axes) != len(shape):
        raise EmsegError(f"axes {axes!r} do not match an array of {len(shape)} dimensions")
    voxel_size = tuple(voxel_size) if voxel_size is not None else (1.0,) * len(shape)
    group = _open_group_for_write(path, overwrite)
    chunks = tuple(chunks) if chunks is not None else _default_chunks(shape, axes)
    array = group.create_array(
        "s0", shape=tuple(shape), dtype=dtype, chunks=chunks, dimension_names=list(axes), overwrite=True,
        fill_value=0,
    )
    ome = {"version": OME_VERSION, "multiscales": multiscales_metadata(axes, voxel_size, ["s0"], [(1,) * len(axes)], units, name)}
    attrs = {"ome": ome}
    if extra_attributes:
        attrs.update(extra_attributes)
    group.attrs.update(attrs)
    return array


def _write_levels(group: zarr.Group, array: Any, axes: str, chunks: Sequence[int], levels: int) -> None:
    """Write `array` as s0 and stride-2 (nearest) downsampled levels s1.. slab by slab along axis 0."""
    for level, factors in enumerate(_level_factors(axes, levels)):
        shape = tuple(math.ceil(s / f) for s, f in zip(array.shape, factors))
        level_chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
        target = group.create_array(
            f"s{level}", shape=shape, dtype=array.dtype, chunks=level_chunks, dimension_names=list(axes),
            overwrite=True, fill_value=0,
        )
        step = level_chunks[0] * factors[0]
        for start in range(0, array.shape[0], step):
            slab = np.asarray(array[start:start + step])
            slab = slab[tuple(slice(None, None, f) for f in factors)]
            target[start // factors[0]: start // factors[0] + slab.shape[0]] = slab


def write_ome_image(
    path: str | Path,
    array: Any,
    *,
    voxel_size: Sequence[float] | None = None,
    axes: str = "zyx",
    units: str | Sequence[str | None] | None = DEFAULT_UNIT,
    chunks: Sequence[int] | None = None,
    levels: int = 1,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an array-like (numpy, zarr, dask) as an OME-Zarr 0.5 image at `path`; returns the path.

    array: (Z, Y, X) for axes "zyx" (or any axes string of the same length), any dtype.
    levels: 1 writes s0 only; n > 1 adds s1..s(n-1), each 2× smaller in y and x (nearest).
    """
    path = Path(path)
    axes = "".join(axes)
    if len(axes) != array.ndim:
        raise EmsegError(f"axes {axes!r} do not match an array of {array.ndim} dimensions")
    voxel_size = tuple(voxel_size) if voxel_size is not None else (1.0,) * array.ndim
    group = _open_group_for_write(path, overwrite)
    chunks = tuple(chunks) if chunks is not None else _default_chunks(array.shape, axes)
    _write_levels(group, array, axes, chunks, levels)
    factors = _level_factors(axes, levels)
    group.attrs.update({"ome": {"version": OME_VERSION, "multiscales": multiscales_metadata(
        axes, voxel_size, [f"s{i}" for i in range(levels)], factors, units, name)}})
    return path


def _image_multiscale(path: Path) -> dict | None:
    """The first `multiscales` entry of the OME image group at `path`, or None."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:
        return None
    attrs = dict(group.attrs)
    ms = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    return ms[0] if ms else None


def _register_label(container: zarr.Group, name: str) -> zarr.Group:
    labels_group = container.require_group("labels")
    ome = dict(labels_group.attrs.get("ome", {}))
    names = list(ome.get("labels", []))
    if name not in names:
        names.append(name)
    labels_group.attrs.update({"ome": {**ome, "version": OME_VERSION, "labels": names}})
    return labels_group


def create_ome_labels(
    container_path: str | Path,
    name: str,
    shape: Sequence[int],
    class_names: Sequence[str],
    *,
    colors: Sequence[Sequence[int]] | None = None,
    voxel_size: Sequence[float] | None = None,
    axes: str = "zyx",
    units: str | Sequence[str | None] | None = DEFAULT_UNIT,
    chunks: Sequence[int] | None = None,
    dtype: Any = None,
    extra_attributes: dict | None = None,
) -> zarr.Array:
    """Create `container/labels/<name>` (an OME-Zarr 0.5 `image-label` with one level s0) and return s0 to fill.

    The container may be an OME image group (the labels then annotate it) or a new, otherwise empty group.
    dtype defaults to uint8 (uint16 past 255 classes).
    """
    container_path = Path(container_path)
    container = _open_group_for_write(container_path, overwrite=False)
    voxel_size = tuple(voxel_size) if voxel_size is not None else (1.0,) * len(shape)
    labels_group = _register_label(container, name)
    label_group = labels_group.require_group(name)
    dtype = np.dtype(dtype) if dtype is not None else label_dtype(len(class_names))
    chunks = tuple(chunks) if chunks is not None else _default_chunks(shape, axes)
    array = label_group.create_array(
        "s0", shape=tuple(shape), dtype=dtype, chunks=chunks, dimension_names=list(axes), overwrite=True, fill_value=0
    )
    has_image = _image_multiscale(container_path) is not None
    ome = {
        "version": OME_VERSION,
        "multiscales": multiscales_metadata(axes, voxel_size, ["s0"], [(1,) * len(axes)], units, name),
        "image-label": image_label_metadata(class_names, colors, "../../" if has_image else None),
    }
    attrs: dict[str, Any] = {"ome": ome}
    if extra_attributes:
        attrs.update(extra_attributes)
    label_group.attrs.update(attrs)
    return array


def write_ome_labels(
    image_path: str | Path,
    name: str,
    labels: Any,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
    *,
    voxel_size: Sequence[float] | None = None,
    axes: str | None = None,
    units: str | Sequence[str | None] | None = None,
    chunks: Sequence[int] | None = None,
    levels: int | None = None,
) -> Path:
    """Write a label volume into `image_path/labels/<name>` with colours and class names; returns its path.

    labels: (Z, Y, X) integer array, 0 = background, k = class_names[k-1].
    voxel_size, axes, units and the number of levels default to those of the image at `image_path`.
    """
    image_path = Path(image_path)
    ms = _image_multiscale(image_path)
    if ms is not None:
        img_axes = "".join(a["name"] for a in ms["axes"])
        axes = axes or img_axes
        if units is None:
            units = [a.get("unit") for a in ms["axes"]]
        if voxel_size is None:
            voxel_size = _scale_of(ms["datasets"][0])
        levels = levels or len(ms["datasets"])
    axes = axes or "zyx"
    levels = levels or 1
    # no unit is invented: an image without units gets labels without units
    voxel_size = tuple(voxel_size) if voxel_size is not None else (1.0,) * labels.ndim
    labels = np.asarray(labels) if not hasattr(labels, "dtype") else labels
    if np.dtype(labels.dtype).kind not in "ui":
        raise EmsegError(f"labels must be an integer array, got {labels.dtype}")
    container = _open_group_for_write(image_path, overwrite=False)
    labels_group = _register_label(container, name)
    label_group = labels_group.require_group(name)
    chunks = tuple(chunks) if chunks is not None else _default_chunks(labels.shape, axes)
    _write_levels(label_group, labels, axes, chunks, levels)
    ome = {
        "version": OME_VERSION,
        "multiscales": multiscales_metadata(axes, voxel_size, [f"s{i}" for i in range(levels)],
                                            _level_factors(axes, levels), units, name),
        "image-label": image_label_metadata(class_names, colors, "../../" if ms is not None else None),
    }
    label_group.attrs.update({"ome": ome})
    return image_path / "labels" / name


def write_volume_with_labels(
    path: str | Path,
    image: np.ndarray,
    labels: dict[str, np.ndarray],
    class_names: Sequence[str],
    *,
    voxel_size: Sequence[float] | None = None,
    attributes: dict | None = None,
) -> Path:
    """Write a new OME-Zarr 0.5 image with label groups, atomically: to `PATH.partial`, then renamed.

    image:      (Z, Y, X) uint8 (any dtype works), written at the root (level s0).
    labels:     {group name: (Z, Y, X) integer labels}, each written to `labels/<name>` with `class_names`.
    attributes: extra root attributes (e.g. how the volume was made), written before the rename.
    Refuses to replace an existing `path` (EmsegError naming it).
    """
    path = Path(path)
    if path.exists():
        raise EmsegError(f"{path} already exists; choose another output path or delete it")
    if not path.parent.exists():
        raise EmsegError(f"output folder {path.parent} does not exist")
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write_ome_image(tmp, image, voxel_size=voxel_size, axes="zyx", units=None, overwrite=True)
    for name, volume in labels.items():
        write_ome_labels(tmp, name, volume, class_names)
    if attributes:
        zarr.open_group(str(tmp), mode="r+").attrs.update(attributes)
    tmp.rename(path)
    return path
