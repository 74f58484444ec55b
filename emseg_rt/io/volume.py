"""What every reader returns: a `Volume` (a lazily read array plus its axes and physical metadata).

`Volume.array` is indexed like numpy (`array[b0:b1]` reads planes b0..b1-1 and nothing else) and returns
numpy arrays, whatever holds the data: a zarr array (local or remote), a tensorstore N5 dataset, an h5py
dataset, a TIFF file or folder read through tifffile's zarr view, or a numpy / dask array in memory.
Arrays that are not zarr are wrapped in `ArrayView`; singleton time and channel axes are hidden by
`SqueezedArray` (which passes zarr's own attributes, such as `store` and `nchunks`, through).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError

SPATIAL_AXES = ("z", "y", "x")
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}

# Unit abbreviations other formats write, as the OME-Zarr (UDUNITS-2) names validators accept.
UNIT_NAMES = {
    "nm": "nanometer", "nanometers": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer",
    "\\u00b5m": "micrometer", "micron": "micrometer", "microns": "micrometer", "micrometers": "micrometer",
    "mm": "millimeter", "pm": "picometer", "å": "angstrom", "angstroms": "angstrom", "m": "meter",
}

# The pip extra that brings each optional reader library (pyproject's [project.optional-dependencies]).
EXTRAS = {"tensorstore": "n5", "h5py": "hdf5", "tifffile": "tiff", "fsspec": "remote", "s3fs": "remote",
          "aiohttp": "remote", "gcsfs": "remote"}


def import_optional(module: str, what: str) -> Any:
    """Import an optional reader library, or raise a one-line EmsegError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module)
        how = f"pip install 'emseg-rt[{extra}]'" if extra else f"pip install {module}"
        raise EmsegError(f"reading {what} needs the {module} package, which is not installed: {how}") from None


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message` — library errors squeezed onto one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def unit_name(unit: Any) -> str | None:
    """A unit as OME-Zarr names it ('nm' → 'nanometer'); None for none."""
    if unit is None or unit == "":
        return None
    text = str(unit).strip()
    return UNIT_NAMES.get(text.lower(), UNIT_NAMES.get(text, text))


def default_axes(ndim: int) -> tuple[str, ...]:
    """'zyx' for 3D, 'tczyx'[-ndim:] up to 5D, d0.. beyond."""
    return tuple("tczyx"[-ndim:]) if ndim <= 5 else tuple(f"d{i}" for i in range(ndim))


def _full_index(index: Any, ndim: int) -> tuple:
    """A numpy basic index as a tuple of exactly `ndim` entries (Ellipsis expanded, missing axes filled)."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is None for i in index):
        raise IndexError("np.newaxis is not supported when indexing a volume")
    if sum(i is Ellipsis for i in index) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    at = next((k for k, i in enumerate(index) if i is Ellipsis), None)
    if at is not None:
        index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1:]
    if len(index) > ndim:
        raise IndexError(f"too many indices for a {ndim}-dimensional volume")
    return index + (slice(None),) * (ndim - len(index))


def _non_negative(index: tuple, shape: Sequence[int]) -> tuple:
    """Integers and forward slices with negative positions made explicit (tensorstore reads -1 as index -1)."""
    out = []
    for i, n in zip(index, shape):
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for an axis of size {n}")
            out.append(i % n)
        elif isinstance(i, slice) and (i.step is None or i.step > 0):
            out.append(slice(*i.indices(n)))
        else:
            out.append(i)
    return tuple(out)


class ArrayView:
    """A read-only, numpy-indexable view of an array held elsewhere (a file, a server, a dask graph).

    read:   index → array-like; called with numpy basic indices (integers, slices); reads only what the
            index touches.
    shape, dtype, chunks: of the whole array (chunks: the storage block shape, the shape itself if none).
    keep:   objects that must stay alive while the view is used (an open file, a store).
    Indexing returns numpy arrays: `view[b0:b1]` → (b1 - b0, ...) of `dtype`.
    """

    def __init__(self, read: Callable[[Any], Any], shape: Sequence[int], dtype: Any,
                 chunks: Sequence[int] | None = None, *, keep: Any = None, explicit_index: bool = False,
                 kind: str = "array") -> None:
        self._read = read
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = tuple(int(c) for c in chunks) if chunks else self.shape
        self._keep = keep
        self._explicit_index = explicit_index
        self.kind = kind

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if self._explicit_index:
            index = _non_negative(_full_index(index, self.ndim), self.shape)
        return np.asarray(self._read(index))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data.astype(dtype) if dtype is not None else data

    def __repr__(self) -> str:
        return f"<ArrayView {self.kind} shape={self.shape} dtype={self.dtype.name}>"


class SqueezedArray:
    """`base` with some of its length-1 axes hidden; indexing maps back to the base (index 0 on those axes).

    Attributes this class does not define (a zarr array's `store`, `path`, `nchunks`, `fill_value`, ...) are
    the base array's, so checks that look at the stored array still see it.
    """

    def __init__(self, base: Any, drop: Sequence[int]) -> None:
        self._base = base
        self._drop = tuple(sorted(drop))
        if any(base.shape[a] != 1 for a in self._drop):
            raise ValueError("only axes of length 1 can be squeezed")
        self.shape = tuple(int(s) for a, s in enumerate(base.shape) if a not in self._drop)
        self.dtype = np.dtype(base.dtype)
        base_chunks = tuple(getattr(base, "chunks", None) or base.shape)
        self.chunks = tuple(int(c) for a, c in enumerate(base_chunks) if a not in self._drop)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._base, name)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        kept = iter(_full_index(index, self.ndim))
        base_index = tuple(0 if a in self._drop else next(kept) for a in range(len(self._base.shape)))
        return np.asarray(self._base[base_index])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data.astype(dtype) if dtype is not None else data

    def __repr__(self) -> str:
        return f"<SqueezedArray shape={self.shape} of {self._base!r}>"


@dataclass
class Volume:
    """A lazily read volume: the array plus what the container's metadata says about it.

    path:        where it was read from: a local Path (zarr array / group, N5 dataset, HDF5 file, TIFF file or
                 folder), a URL string, or None for an array passed in memory.
    array:       numpy-indexable, reads only what an index touches: `array[b0:b1]` → numpy (b1-b0, ...).
                 Has `.shape`, `.dtype`, `.ndim`, `.chunks`.
    axes:        axis names, e.g. ("z", "y", "x") (singleton t / c axes already squeezed out).
    voxel_size:  physical size per axis at this level (1.0 where unknown).
    units:       unit per axis as OME-Zarr names them (None where unknown).
    translation: physical position of voxel 0 per axis (0.0 where unknown).
    format:      "zarr", "n5", "hdf5", "tiff" or "memory".
    """

    path: Path | str | None
    array: Any
    axes: tuple[str, ...]
    voxel_size: tuple[float, ...]
    units: tuple[str | None, ...]
    is_ome: bool = False
    dataset_path: str | None = None
    attributes: dict = field(default_factory=dict)
    translation: tuple[float, ...] | None = None
    format: str = "zarr"

    def __post_init__(self) -> None:
        if self.translation is None:
            self.translation = (0.0,) * len(self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.array.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        chunks = getattr(self.array, "chunks", None)
        return tuple(int(c) for c in chunks) if chunks else self.shape

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.array[index])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = np.asarray(self.array[...])
        return data.astype(dtype) if dtype is not None else data


def squeeze_non_spatial(volume: Volume, axis_types: Sequence[str | None], where: str, spatial: bool) -> Volume:
    """Hide the length-1 time / channel axes of `volume` (their names and types from the metadata).

    axis_types: OME axis type per axis ("space", "time", "channel" or None: then the name decides).
    spatial:    also refuse (EmsegError, one line) a time or channel axis longer than 1.
    """
    kinds = [t or AXIS_TYPES.get(a) for a, t in zip(volume.axes, axis_types)]
    non_spatial = [i for i, k in enumerate(kinds) if k in ("time", "channel")]
    drop = [i for i in non_spatial if volume.shape[i] == 1]
    if spatial:
        for i in non_spatial:
            if volume.shape[i] != 1:
                what = "time points" if kinds[i] == "time" else "channels"
                raise EmsegError(f"{where} has {volume.shape[i]} {what} (axis '{volume.axes[i]}' of "
                                 f"{','.join(volume.axes)}, shape {volume.shape}); segment reads one 3D (z, y, x) "
                                 "volume: write the one you want as its own array and pass that")
    if not drop:
        return volume
    keep = [i for i in range(volume.ndim) if i not in drop]
    volume.array = SqueezedArray(volume.array, drop)
    volume.axes = tuple(volume.axes[i] for i in keep)
    volume.voxel_size = tuple(volume.voxel_size[i] for i in keep)
    volume.units = tuple(volume.units[i] for i in keep)
    volume.translation = tuple(volume.translation[i] for i in keep)
    return volume
