"""The one OME-Zarr writer: images and label images (`image-label`), OME-Zarr 0.5 (zarr v3) or 0.4 (zarr v2).

An image or label image is a group with `multiscales` (and `image-label`) metadata and one array per level
(`io.pyramid` says how levels are laid out and filled). Every writer goes through three functions:

    ome_attributes(spec, ...)      the group attributes: `multiscales` (+ `image-label`: classes, colours)
    create_ome_group(path, spec)   the group, its attributes and every level's empty array
    register_label(image, name)    append a name to an image's labels/ list (under a lock when given one)

The runtime (`segment`) describes its label images with a LabelImageSpec and calls these directly. The
library writers build on them:

    write_ome_image(path, array, voxel_size=..., axes="zyx")      → an image group with multiscales s0, s1, ...
    write_ome_labels(image_path, name, labels, class_names, ...)  → image/labels/<name>, an `image-label` group
    create_ome_image / create_ome_labels                           → empty arrays to fill chunk by chunk (streaming)
    write_volume_with_labels(path, image, {name: labels}, ...)    → image + label groups, atomically (temp + rename)

The library writers keep the metadata layout they have always written (`ome_attributes(library=True)`), so
their files stay byte-identical; the readers live in `readers` / `zarr_reader`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emseg_rt.constants import label_dtype
from emseg_rt.errors import EmsegError
from emseg_rt.io.pyramid import Level, pyramid_levels, write_lower_levels
from emseg_rt.io.volume import AXIS_TYPES
from emseg_rt.io.zarr_reader import dataset_scale, label_names, multiscales_of

OME_VERSION = "0.5"
DEFAULT_UNIT = "nanometer"
ZARR_FORMAT = {"0.5": 3, "0.4": 2}

# Distinct, colour-blind-friendly RGBA colours for labels 1, 2, ... (Okabe–Ito, then Tableau).
LABEL_PALETTE: tuple[tuple[int, int, int, int], ...] = (
    (230, 159, 0, 255), (86, 180, 233, 255), (0, 158, 115, 255), (240, 228, 66, 255), (0, 114, 178, 255),
    (213, 94, 0, 255), (204, 121, 167, 255), (31, 119, 180, 255), (255, 127, 14, 255), (44, 160, 44, 255),
    (214, 39, 40, 255), (148, 103, 189, 255), (140, 86, 75, 255), (227, 119, 194, 255), (127, 127, 127, 255),
)


def default_colors(num_classes: int) -> list[tuple[int, int, int, int]]:
    """RGBA colours for labels 1..num_classes, cycling through LABEL_PALETTE."""
    return [LABEL_PALETTE[i % len(LABEL_PALETTE)] for i in range(num_classes)]


@dataclass(frozen=True)
class LabelImageSpec:
    """Everything `create_ome_group` writes for one image or label image. `chunks` are s0's (as given); lower
    levels use min(chunks, shape). `classes` name label values 1..K (empty: instance IDs, or an image).
    `shards`: s0's shard shape (zarr v3's sharding codec; each a multiple of `chunks`, which are then the chunks
    inside a shard); None: one file per chunk. Lower levels: `level_chunking`."""

    name: str
    axes: str
    units: tuple[str | None, ...]
    classes: tuple[str, ...]
    levels: tuple[Level, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    version: str = OME_VERSION
    colors: tuple[tuple[int, int, int, int], ...] | None = None
    shards: tuple[int, ...] | None = None

    @property
    def zarr_format(self) -> int:
        return ZARR_FORMAT[self.version]

    def level_chunking(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """(chunks, shards) of level `index`: s0's as given; a lower level's chunks are min(chunks, its shape)
        and its shards min(shards, its shape) rounded up to whole chunks (an axis that one s0 shard spans whole
        is spanned whole at every level; the slicing axis keeps s0's shard depth)."""
        if index == 0:
            return self.chunks, self.shards
        shape = self.levels[index].shape
        chunks = tuple(min(c, s) for c, s in zip(self.chunks, shape))
        if self.shards is None:
            return chunks, None
        return chunks, tuple(-(-min(h, s) // c) * c for h, s, c in zip(self.shards, shape, chunks))


# ---------------------------------------------------------------------------------------------- metadata


def axis_units(axes: str, units: str | Sequence[str | None] | None) -> tuple[str | None, ...]:
    """One unit per axis: a single unit (or None) goes to the space axes only, a sequence is taken as is."""
    if isinstance(units, str) or units is None:
        return tuple(units if AXIS_TYPES.get(n) == "space" else None for n in axes)
    return tuple(units)


def axes_metadata(axes: str | Sequence[str], units: str | Sequence[str | None] | None = DEFAULT_UNIT) -> list[dict]:
    """OME `axes` entries: [{"name": "z", "type": "space", "unit": "nanometer"}, ...] (no unit on 'c')."""
    names = list(axes)
    entries = []
    for name, unit in zip(names, axis_units(names, units)):
        entry: dict[str, Any] = {"name": name, "type": AXIS_TYPES.get(name, "space")}
        if unit:
            entry["unit"] = unit
        entries.append(entry)
    return entries


def _transforms(level: Level) -> list[dict]:
    transforms: list[dict] = [{"type": "scale", "scale": list(level.scale)}]
    if any(level.translation):
        transforms.append({"type": "translation", "translation": list(level.translation)})
    return transforms


def _multiscale(spec: LabelImageSpec, name_first: bool) -> dict:
    entry: dict[str, Any] = {
        "axes": axes_metadata(spec.axes, list(spec.units)),
        "datasets": [{"path": lvl.path, "coordinateTransformations": _transforms(lvl)} for lvl in spec.levels],
    }
    if not spec.name:
        return entry
    return {"name": spec.name, **entry} if name_first else {**entry, "name": spec.name}


def _image_label(spec: LabelImageSpec, source_image: str | None, library: bool) -> dict:
    """`image-label`: a colour and a `class` property per label value 1..K (0 is background); no classes
    (instance IDs): no colours or properties, viewers pick colours."""
    colors = list(spec.colors) if spec.colors else default_colors(len(spec.classes))
    if len(colors) < len(spec.classes):
        raise EmsegError(f"{len(spec.classes)} class names but only {len(colors)} colours")
    meta: dict[str, Any] = {"version": spec.version} if library or spec.version == "0.4" else {}
    if spec.classes or library:
        meta["colors"] = [{"label-value": i + 1, "rgba": [int(c) for c in colors[i]]} for i in range(len(spec.classes))]
        meta["properties"] = [{"label-value": i + 1, "class": str(n)} for i, n in enumerate(spec.classes)]
    if source_image:
        meta["source"] = {"image": source_image}
    return meta


def ome_attributes(spec: LabelImageSpec, source_image: str | None = None, *, image_label: bool = True,
                   library: bool = False) -> dict:
    """The group attributes of an image (`image_label=False`) or label image: `multiscales` (+ `image-label`),
    under "ome" for 0.5, at the top level with a "version" in each for 0.4.

    source_image: the image a label image annotates, relative to it ("../../" inside an image's labels/).
    library: the layout the library writers (`write_ome_labels`, `write_ome_image`, ...) have always written:
    the multiscale's name after its axes and datasets, `image-label` repeating the version and keeping empty
    colour and class lists. Otherwise (the runtime's label images) the name comes first.
    """
    multiscale = _multiscale(spec, name_first=not library)
    label = {"image-label": _image_label(spec, source_image, library)} if image_label else {}
    if spec.version == "0.4":
        return {"multiscales": [{"version": "0.4", **multiscale}], **label}
    return {"ome": {"version": spec.version, "multiscales": [multiscale], **label}}


def labels_group_attributes(names: Sequence[str], version: str) -> dict:
    """The `labels` group's attributes listing label images, for OME-Zarr `version`."""
    if version == "0.4":
        return {"labels": list(names)}
    return {"ome": {"version": version, "labels": list(names)}}


# ---------------------------------------------------------------------------------------------- groups


def create_array(group: zarr.Group, name: str, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                 dimension_names: Sequence[str] | None, zarr_format: int, **options: Any) -> zarr.Array:
    """An empty array in `group` with OME-Zarr's chunk-key rules: v3 default encoding, v2 with '/' separators.
    options: passed to zarr (e.g. `shards=(8, 1024, 1024)`, v3 only: `chunks` are then the chunks inside a shard)."""
    if zarr_format == 2:
        return group.create_array(name, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks), fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"}, **options)
    return group.create_array(name, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks), fill_value=0,
                              dimension_names=list(dimension_names) if dimension_names else None, **options)


def create_ome_group(path: Path, spec: LabelImageSpec, *, source_image: str | None = None,
                     extra_attributes: dict | None = None, image_label: bool = True,
                     library: bool = False) -> list[zarr.Array]:
    """Create the (label) image group at `path`, its attributes (`ome_attributes` + `extra_attributes`) and
    every level's empty array (overwriting any; sharded when `spec.shards`); returns the arrays, s0 first."""
    group = zarr.open_group(str(path), mode="a", zarr_format=spec.zarr_format)
    arrays = []
    for index, level in enumerate(spec.levels):
        chunks, shards = spec.level_chunking(index)
        sharding = {"shards": shards} if shards is not None else {}
        arrays.append(create_array(group, level.path, level.shape, spec.dtype, chunks, list(spec.axes),
                                   spec.zarr_format, overwrite=True, **sharding))
    attrs = ome_attributes(spec, source_image, image_label=image_label, library=library)
    group.attrs.update({**attrs, **(extra_attributes or {})})
    return arrays


def require_labels_group(image_path: Path, version: str) -> zarr.Group:
    """The image's `labels` group, created (listing nothing yet) when it does not exist."""
    image = zarr.open_group(str(image_path), mode="r+")
    if "labels" in image:
        return image["labels"]
    group = image.create_group("labels")
    group.attrs.update(labels_group_attributes([], version))
    return group


def register_label(image_path: Path, name: str, version: str = OME_VERSION, lock_path: Path | None = None) -> None:
    """Append `name` to the image's `labels` list (once), in one metadata write. With `lock_path`, under an
    exclusive lock on that file, so that concurrent runs adding other names do not lose each other's entries."""
    if lock_path is None:
        _append_label(image_path, name, version)
        return
    import fcntl  # optional: POSIX only

    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _append_label(image_path, name, version)


def _append_label(image_path: Path, name: str, version: str) -> None:
    group = require_labels_group(image_path, version)
    names = label_names(group)
    if name not in names:
        group.attrs.update(labels_group_attributes(names + [name], version))


# ---------------------------------------------------------------------------------------------- library writers


def _default_chunks(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    """Thin slabs along the first spatial axis, tiles of at most 1024 in-plane."""
    return tuple(min(s, 8 if i == axes.find("z") else 1024) if a in "zyx" else 1
                 for i, (s, a) in enumerate(zip(shape, axes)))


def _open_group_for_write(path: Path, overwrite: bool) -> zarr.Group:
    if path.exists() and not path.is_dir():
        raise EmsegError(f"{path} is a file, not a directory: choose another output path")
    try:
        return zarr.open_group(str(path), mode="w" if overwrite else "a", zarr_format=3)
    except PermissionError as exc:
        raise EmsegError(f"cannot write {path}: permission denied; choose a writable output location") from exc


def _library_spec(shape: Sequence[int], axes: str, dtype: Any, *, name: str | None = None,
                  classes: Sequence[str] = (), voxel_size: Sequence[float] | None = None, units: Any = DEFAULT_UNIT,
                  chunks: Sequence[int] | None = None, levels: int = 1,
                  colors: Sequence[Sequence[int]] | None = None) -> LabelImageSpec:
    """The spec of a library-written (label) image: `levels` levels 2× smaller in y and x, origin 0."""
    axes = "".join(axes)
    if len(axes) != len(shape):
        raise EmsegError(f"axes {axes!r} do not match an array of {len(shape)} dimensions")
    voxel_size = tuple(voxel_size) if voxel_size is not None else (1.0,) * len(shape)
    return LabelImageSpec(
        name=name or "", axes=axes, units=axis_units(axes, units), classes=tuple(str(c) for c in classes),
        levels=pyramid_levels(shape, axes, voxel_size, (0.0,) * len(shape), levels), dtype=np.dtype(dtype),
        chunks=tuple(chunks) if chunks is not None else _default_chunks(shape, axes),
        colors=tuple(tuple(int(v) for v in c) for c in colors) if colors is not None else None)


def _fill(path: Path, spec: LabelImageSpec, array: Any) -> None:
    """Write `array` into s0 of the group at `path`, whole chunks (shards) along axis 0 at a time, then the lower
    levels."""
    target = zarr.open_array(str(path / spec.levels[0].path), mode="r+")
    step = (target.shards or target.chunks)[0]
    for start in range(0, array.shape[0], step):
        target[start:start + step] = np.asarray(array[start:start + step])
    write_lower_levels(path, spec.levels, range(1, len(spec.levels)))


def _clipped(chunks: Sequence[int] | None, shape: Sequence[int], axes: str) -> tuple[int, ...]:
    chunks = tuple(chunks) if chunks is not None else _default_chunks(shape, axes)
    return tuple(min(c, s) for c, s in zip(chunks, shape))


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
    spec = _library_spec(shape, axes, dtype, name=name, voxel_size=voxel_size, units=units, chunks=chunks)
    _open_group_for_write(path, overwrite)
    return create_ome_group(path, spec, extra_attributes=extra_attributes, image_label=False, library=True)[0]


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
    spec = _library_spec(array.shape, axes, array.dtype, name=name, voxel_size=voxel_size, units=units,
                         chunks=_clipped(chunks, array.shape, axes), levels=levels)
    _open_group_for_write(path, overwrite)
    create_ome_group(path, spec, image_label=False, library=True)
    _fill(path, spec, array)
    return path


def _image_multiscale(path: Path) -> dict | None:
    """The first `multiscales` entry of the OME image group at `path`, or None."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:
        return None
    multiscales = multiscales_of(dict(group.attrs))
    return multiscales[0] if multiscales else None


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
    dtype = np.dtype(dtype) if dtype is not None else label_dtype(len(class_names))
    spec = _library_spec(shape, axes, dtype, name=name, classes=class_names, voxel_size=voxel_size, units=units,
                         chunks=chunks, colors=colors)
    _open_group_for_write(container_path, overwrite=False)
    register_label(container_path, name)
    source = "../../" if _image_multiscale(container_path) is not None else None
    return create_ome_group(container_path / "labels" / name, spec, source_image=source,
                            extra_attributes=extra_attributes, library=True)[0]


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
    voxel_size, axes, units and the number of levels default to those of the image at `image_path`
    (no unit is invented: an image without units gets labels without units).
    """
    image_path = Path(image_path)
    ms = _image_multiscale(image_path)
    if ms is not None:
        axes = axes or "".join(a["name"] for a in ms["axes"])
        units = units if units is not None else [a.get("unit") for a in ms["axes"]]
        voxel_size = voxel_size if voxel_size is not None else dataset_scale(ms["datasets"][0])
        levels = levels or len(ms["datasets"])
    labels = np.asarray(labels) if not hasattr(labels, "dtype") else labels
    if np.dtype(labels.dtype).kind not in "ui":
        raise EmsegError(f"labels must be an integer array, got {labels.dtype}")
    axes = axes or "zyx"
    spec = _library_spec(labels.shape, axes, labels.dtype, name=name, classes=class_names, voxel_size=voxel_size,
                         units=units, chunks=_clipped(chunks, labels.shape, axes), levels=levels or 1, colors=colors)
    _open_group_for_write(image_path, overwrite=False)
    register_label(image_path, name)
    group = image_path / "labels" / name
    create_ome_group(group, spec, source_image="../../" if ms is not None else None, library=True)
    _fill(group, spec, labels)
    return group


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
