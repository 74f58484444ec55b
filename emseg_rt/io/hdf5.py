"""HDF5 files (`.h5`, `.hdf5`, ...; ilastik, CREMI, Fiji, BigDataViewer exports) through h5py.

`key` names the dataset (e.g. "volumes/raw"); HDF5 reads only the hyperslab an index touches. Physical
metadata, where present: `element_size_um` (ilastik / Fiji: per axis, in micrometres) or `resolution`
(CREMI: per axis, unit not stated); axis names from HDF5 dimension scales' labels (`dims[i].label`).
The file stays open (read-only) while the Volume is alive; h5py serialises access from several threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emseg_rt.errors import EmsegError
from emseg_rt.io.volume import (
    ArrayView,
    Volume,
    check_chunk_size,
    check_member,
    default_axes,
    first_line,
    import_optional,
    squeeze_non_spatial,
)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_LISTED = 20


def looks_like_hdf5(path: Path) -> bool:
    """An HDF5 suffix, or the HDF5 signature at the start of the file."""
    if path.suffix.lower() in HDF5_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def _datasets(h5file: Any) -> list[str]:
    import h5py  # optional: the [hdf5] extra

    found: list[str] = []

    def visit(name: str, node: Any) -> Any:
        if isinstance(node, h5py.Dataset) and len(node.shape) >= 2:
            found.append(name)
        return True if len(found) >= _MAX_LISTED else None

    h5file.visititems(visit)
    return found


def _listing(h5file: Any) -> str:
    names = _datasets(h5file)
    if not names:
        return " (no datasets)"
    return f" (datasets: {', '.join(names)}{', ...' if len(names) >= _MAX_LISTED else ''})"


def _physical(dataset: Any, ndim: int) -> tuple[tuple[str, ...] | None, tuple[float, ...], tuple[str | None, ...]]:
    try:
        labels = [str(d.label) for d in dataset.dims]
    except Exception:  # files without dimension scales
        labels = []
    axes = tuple(label.lower() for label in labels) if len(labels) == ndim and all(labels) else None
    for attr, unit in (("element_size_um", "micrometer"), ("resolution", None)):
        values = dataset.attrs.get(attr)
        if values is not None and len(values) == ndim:
            return axes, tuple(float(v) for v in values), (unit,) * ndim
    return axes, (1.0,) * ndim, (None,) * ndim


def hdf5_volume(path: Path, key: str | None = None, level: int | None = None, *, spatial: bool = False) -> Volume:
    """Open dataset `key` of the HDF5 file at `path` lazily; EmsegError (one line) for a missing key or a group."""
    h5py = import_optional("h5py", "HDF5 files")
    try:
        h5file = h5py.File(path, "r")
    except OSError as exc:
        raise EmsegError(f"input {path} could not be opened as HDF5: {first_line(exc)}") from exc
    try:
        if not key:
            raise EmsegError(f"{path} is an HDF5 file: choose a dataset with --key{_listing(h5file)}")
        key = check_member(key, "--key", path)
        node = h5file.get(key)
        if node is None:
            raise EmsegError(f"{path} has no dataset {key!r}{_listing(h5file)}")
        if not isinstance(node, h5py.Dataset):
            raise EmsegError(f"{path}: {key!r} is an HDF5 group, not a dataset; choose a dataset with --key"
                             f"{_listing(node)}")
        if level not in (None, 0):
            raise EmsegError(f"--level {level} given but {path} is an HDF5 dataset, not an OME-Zarr image")
    except BaseException:
        h5file.close()
        raise
    ndim = node.ndim
    try:
        check_chunk_size(node.chunks, node.dtype, f"input {path} (key {key})")  # None: contiguous, read by hyperslab
        axes, voxel_size, units = _physical(node, ndim)
    except (TypeError, ValueError):
        h5file.close()
        raise EmsegError(f"input {path} (key {key}): its element_size_um / resolution attribute is not a list of "
                         "numbers; fix the attribute") from None
    except EmsegError:
        h5file.close()
        raise
    array = ArrayView(node.__getitem__, node.shape, node.dtype, node.chunks, keep=h5file, explicit_index=True,
                      kind="hdf5")
    attrs = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in node.attrs.items()}
    volume = Volume(path, array, axes or default_axes(ndim), voxel_size, units, False, key.strip("/"), attrs,
                    format="hdf5")
    return squeeze_non_spatial(volume, [None] * ndim, f"input {path} (key {key})", spatial) if axes else volume
