"""TIFF stacks through tifffile: one multi-page (or OME/ImageJ hyperstack) file, or a folder of single-page files.

Both are read through tifffile's zarr views (`TiffPageSeries.aszarr()`, `TiffSequence.aszarr()`): indexing a
block of planes decodes only the pages (or tiles) it touches; nothing else is loaded. A folder's files
(*.tif, *.tiff) are taken in natural name order (slice_2 before slice_10), as tifffile and Fiji sort them;
every file must hold one plane of the same shape and dtype. `key` picks an image series of a file that has
several ("0", "1", ...); `level` a pyramid level of a pyramidal (OME-)TIFF. Voxel size and unit per axis come
from the OME-XML of an OME-TIFF (`PhysicalSizeX/Y/Z` and their units, micrometres where it names none, as the
OME schema says; at `level` n, scaled by how much smaller that level is), else from ImageJ metadata (`spacing`,
`unit`, X/Y resolution) where present; otherwise 1.0 and no unit.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io.volume import (
    ArrayView,
    Volume,
    check_chunk_size,
    default_axes,
    first_line,
    import_optional,
    squeeze_non_spatial,
    unit_name,
)

TIFF_SUFFIXES = (".tif", ".tiff")
# tifffile's axis codes → OME axis names (Q: unknown, I: image sequence, S: samples, e.g. RGB).
_AXIS_NAMES = {"Z": "z", "Q": "z", "I": "z", "Y": "y", "X": "x", "T": "t", "C": "c", "S": "c"}
OME_DEFAULT_UNIT = "µm"  # the unit of PhysicalSizeX/Y/Z when the OME-XML names none (OME schema 2016-06)
_OME_NON_PHYSICAL_UNITS = ("pixel", "reference frame")  # OME units that are no length: the size, no unit


def tiff_files(folder: Path) -> list[Path]:
    """The TIFF files directly in `folder`, in natural name order (hidden files skipped)."""
    tifffile = import_optional("tifffile", "TIFF stacks")
    names = [p.name for p in folder.iterdir()
             if p.suffix.lower() in TIFF_SUFFIXES and p.is_file() and not p.name.startswith(".")]
    return [folder / n for n in tifffile.natural_sorted(names)]


def _axes(codes: str, ndim: int) -> tuple[tuple[str, ...], bool]:
    """(axis names, whether they come from the file) for tifffile's axis codes, e.g. 'QYX' → z, y, x."""
    names = tuple(_AXIS_NAMES.get(c, c.lower()) for c in codes)
    if len(names) == ndim and len(set(names)) == ndim:
        return names, True
    return default_axes(ndim), False


def _physical(tif: Any, series_index: int, level: int, axes: tuple[str, ...]
              ) -> tuple[tuple[float, ...], tuple[str | None, ...]]:
    """Voxel size and unit per axis of `tif.series[series_index]` at `level`: from its OME-XML Pixels element
    where it gives any physical size, else from ImageJ metadata (1.0 / None where neither says anything)."""
    pixels = _ome_pixels(tif, series_index)
    if pixels is None or not any(f"PhysicalSize{a.upper()}" in pixels for a in ("z", "y", "x")):
        return _imagej_physical(tif, axes)
    size, unit = {a: 1.0 for a in axes}, {a: None for a in axes}
    for axis in ("z", "y", "x"):
        value = pixels.get(f"PhysicalSize{axis.upper()}")
        if axis in size and value is not None:
            size[axis] = _number(value, f"OME PhysicalSize{axis.upper()}", tif)
            name = pixels.get(f"PhysicalSize{axis.upper()}Unit", OME_DEFAULT_UNIT)
            unit[axis] = None if name in _OME_NON_PHYSICAL_UNITS else unit_name(name)
    series = tif.series[series_index]
    full, shape = series.levels[0].shape, series.levels[level].shape
    if level and len(full) == len(shape) == len(axes):  # a pyramid level: its voxels are larger by the ratio
        size = {a: size[a] * full[i] / shape[i] for i, a in enumerate(axes)}
    return tuple(size[a] for a in axes), tuple(unit[a] for a in axes)


def _ome_pixels(tif: Any, series_index: int) -> dict[str, str] | None:
    """The attributes of the OME-XML Pixels element that tifffile's OME series `series_index` reads; None for a
    TIFF without OME-XML (or with OME-XML tifffile could not use), or when the series cannot be matched to one
    Image (tifffile skips Images it cannot read: then the Image whose Name and sizes are the series')."""
    series = tif.series[series_index]
    if not tif.is_ome or series.kind != "ome":
        return None
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except (ElementTree.ParseError, TypeError, ValueError):  # tifffile read the series from it, so rarely
        return None
    images = [(image.get("Name"), pixels.attrib) for image in root if image.tag.endswith("}Image")
              for pixels in image if pixels.tag.endswith("}Pixels")]
    if len(images) == len(tif.series):
        return images[series_index][1]
    shape = dict(zip(series.get_axes(squeeze=False), series.get_shape(squeeze=False)))
    matches = [attrib for name, attrib in images if name == series.name
               and all(attrib.get(f"Size{a}") == str(shape[a]) for a in "XYZ" if a in shape)]
    return matches[0] if len(matches) == 1 else None


def _imagej_physical(tif: Any, axes: tuple[str, ...]) -> tuple[tuple[float, ...], tuple[str | None, ...]]:
    """Voxel size and unit per axis from ImageJ metadata (1.0 / None where it says nothing)."""
    size = {a: 1.0 for a in axes}
    unit = None
    meta = tif.imagej_metadata if tif.is_imagej else None
    if meta:
        unit = unit_name(meta.get("unit"))
        if "spacing" in meta:
            size["z"] = _number(meta["spacing"], "ImageJ spacing", tif)
        for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
            value = tif.pages[0].tags.get(tag)
            if value is not None and value.value[0]:
                numerator, denominator = value.value
                size[axis] = float(denominator) / float(numerator)
    spatial = [a in ("z", "y", "x") for a in axes]
    return tuple(size[a] for a in axes), tuple(unit if s else None for s in spatial)


def _number(value: Any, what: str, tif: Any) -> float:
    """`value` as a float, or EmsegError (one line) naming the metadata field of the file."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise EmsegError(f"input {tif.filename}: its {what} {value!r} is not a number; fix the metadata") from None


def _check_decodable(tifffile: Any, series: Any, name: Path) -> None:
    """Refuse at open, not at the first read, a compression tifffile cannot decode here (LZW, JPEG, ... need
    imagecodecs)."""
    compression = series.keyframe.compression
    if compression not in tifffile.TIFF.DECOMPRESSORS:
        raise EmsegError(f"input {name} is {getattr(compression, 'name', compression)}-compressed, which tifffile "
                         "decodes with the imagecodecs package, not installed: pip install 'emseg-rt[tiff]'")


def _zarr_view(store: Any, keep: Any, name: Path) -> ArrayView:
    """tifffile's zarr store as an ArrayView (hiding zarr's chunk counts: tifffile's stores cannot list keys)."""
    try:
        array = zarr.open(store, mode="r")
    except Exception as exc:  # a TIFF layout tifffile cannot map to one zarr array
        raise EmsegError(f"input {name}: tifffile cannot read it as one array ({first_line(exc)})") from exc
    if not isinstance(array, zarr.Array):
        array = array["0"]  # a multiscale group: level 0 (levels are chosen when the store is made)
    check_chunk_size(array.chunks, array.dtype, f"input {name}")  # a page (or tile) is decoded whole
    return ArrayView(array.__getitem__, array.shape, array.dtype, array.chunks, keep=(keep, store, array), kind="tiff")


def tiff_volume(path: Path, key: str | None = None, level: int | None = None, *, spatial: bool = False) -> Volume:
    """Open a TIFF file or a folder of TIFF pages lazily; reads headers (of the first file, for a folder) only."""
    tifffile = import_optional("tifffile", "TIFF stacks")
    if path.is_dir():
        files = tiff_files(path)
        if not files:
            raise EmsegError(f"input {path} holds no .tif / .tiff files")
        if key or level not in (None, 0):
            raise EmsegError(f"--key / --level given but {path} is a folder of TIFF pages (one image)")
        try:
            sequence = tifffile.TiffSequence([str(f) for f in files])
            store = sequence.aszarr()
            first = tifffile.TiffFile(files[0])
        except Exception as exc:
            raise EmsegError(f"input {path}: cannot read its TIFF files ({first_line(exc)})") from exc
        with first:
            series = first.series[0]
            _check_decodable(tifffile, series, path)
            codes = "Z" + series.axes
            array = _zarr_view(store, sequence, path)
            axes, named = _axes(codes, array.ndim)
            voxel_size, units = _physical(first, 0, 0, axes)
    else:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:
            raise EmsegError(f"input {path} could not be opened as TIFF: {first_line(exc)}") from exc
        try:
            if key is None and len(tif.series) > 1:
                raise EmsegError(f"{path} holds {len(tif.series)} image series: choose one with --key "
                                 f"0..{len(tif.series) - 1}")
            try:
                index = int(key or 0)
                series = tif.series[index]
            except (ValueError, IndexError):
                raise EmsegError(f"{path} has no image series {key!r}; it has {len(tif.series)} (--key 0.."
                                 f"{len(tif.series) - 1})") from None
            _check_decodable(tifffile, series, path)
            if not 0 <= (level or 0) < len(series.levels):
                raise EmsegError(f"{path} has {len(series.levels)} level(s); --level {level} is out of range")
            array = _zarr_view(series.aszarr(level=level or 0), tif, path)
            axes, named = _axes(series.axes, array.ndim)
            voxel_size, units = _physical(tif, index, level or 0, axes)
        except BaseException:
            tif.close()
            raise
    volume = Volume(path, array, axes, voxel_size, units, False, key, {}, format="tiff")
    return squeeze_non_spatial(volume, [None] * array.ndim, f"input {path}", spatial) if named else volume
