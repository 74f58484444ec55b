"""What every reader returns: a `Volume` (a lazily read array plus its axes and physical metadata).

`Volume.array` is indexed like numpy (`array[b0:b1]` reads planes b0..b1-1 and nothing else) and returns
numpy arrays, whatever holds the data: a zarr array (local or remote), a tensorstore N5 dataset, an h5py
dataset, a TIFF file or folder read through tifffile's zarr view, or a numpy / dask array in memory.
Arrays that are not zarr are wrapped in `ArrayView`; singleton time and channel axes are hidden by
`SqueezedArray` (which passes zarr's own attributes, such as `store` and `nchunks`, through).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError

try:
    import resource  # POSIX: the address-space limit (`ulimit -v`)
except ImportError:  # Windows: no such limit to read
    resource = None  # type: ignore[assignment]

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


# What declared metadata may claim before anything proportional to it is allocated (io.open_volume checks it).
MAX_VOXELS = 2**53  # past this, voxel counts lose integer precision in float64; beyond any volume ever imaged
MAX_CHUNK_BYTES = 2**31  # one stored chunk (zarr, N5, a chunked HDF5 dataset, a TIFF page) is decoded whole


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of MemAvailable (/proc/meminfo), the cgroup's memory
    limit less its usage, and the address-space limit (RLIMIT_AS, `ulimit -v`) less what is mapped now;
    None where none of them can be read (not Linux)."""
    limits = [_meminfo_available(), _cgroup_available()]
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else -1
    if resource is not None and soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - _mapped_bytes()))
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _proc_bytes(path: str, key: str) -> int | None:
    """The `key:` line of a /proc status file (in kB there) as bytes; None where it cannot be read."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _meminfo_available() -> int | None:
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def _cgroup_available() -> int | None:
    """A cgroup v2 container's memory.max less its working set (memory.current without the reclaimable
    inactive file cache, as Kubernetes counts it); None without a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        stat = dict(line.split() for line in (root / "memory.stat").read_text().splitlines() if " " in line)
        used = int((root / "memory.current").read_text()) - int(stat.get("inactive_file", 0))
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def _mapped_bytes() -> int:
    """VmSize of this process (what counts against RLIMIT_AS), 0 where /proc/self/status cannot be read."""
    return _proc_bytes("/proc/self/status", "VmSize") or 0


def gib(nbytes: float) -> str:
    """'9.3 GiB' (one decimal), '512 MiB' below 1 GiB."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def check_chunk_size(chunks: Sequence[int] | None, dtype: Any, where: str) -> None:
    """EmsegError (one line) when one stored chunk, which every reader decodes whole, is larger than
    MAX_CHUNK_BYTES or than half the memory this process may still allocate. `chunks` None: no chunking
    (a contiguous HDF5 dataset is read by hyperslab), nothing to check."""
    if not chunks:
        return
    nbytes = math.prod(int(c) for c in chunks) * np.dtype(dtype).itemsize
    available = available_memory()
    limit = MAX_CHUNK_BYTES if available is None else min(MAX_CHUNK_BYTES, available // 2)
    if nbytes > limit:
        room = "" if limit == MAX_CHUNK_BYTES else f" (this machine has {gib(available or 0)} free)"
        raise EmsegError(f"{where}: its metadata declares chunks of {shape_text(chunks)} {np.dtype(dtype).name} "
                         f"({gib(nbytes)} each), more than the {gib(limit)} a chunk may take{room}: a chunk is "
                         "read whole; rewrite the array with smaller chunks (e.g. 64×512×512)")


def check_declared(volume: Volume, where: str) -> None:
    """EmsegError (one line) for metadata no real volume has: more than MAX_VOXELS voxels, or a voxel size or
    origin that is not a finite number (NaN, inf), or a voxel size that is not positive."""
    voxels = math.prod(volume.shape)
    if voxels > MAX_VOXELS:
        raise EmsegError(f"{where}: its metadata declares shape {volume.shape} ({voxels:.3g} voxels), more than "
                         f"any volume emseg-rt reads ({MAX_VOXELS:.3g}); the metadata is wrong: fix its shape")
    for what, values in (("voxel size (scale)", volume.voxel_size), ("origin (translation)", volume.translation)):
        bad = [v for v in values or () if not isinstance(v, (int, float)) or not math.isfinite(v)
               or (what.startswith("voxel") and v <= 0)]
        if bad:
            wanted = "finite numbers > 0" if what.startswith("voxel") else "finite numbers"
            raise EmsegError(f"{where}: its metadata gives the {what} {tuple(values)} along "
                             f"{','.join(volume.axes)}; they must be {wanted}: fix the metadata")


def check_member(name: Any, what: str, where: Any) -> str:
    """`name` without leading and trailing '/' if it is a path inside a group of a zarr, N5 or HDF5 container
    (`a`, `a/b`, `/a`): a non-empty string without '.', '..' or empty segments, backslashes or control
    characters; else EmsegError (one line) naming `what` (the option, or the metadata field, that gave it) and
    `where`. Every member path a user or metadata gives is checked here before zarr, tensorstore, h5py or the
    file system sees it, so none climbs out of its group (zarr's ValueError for '..' never reaches a user)."""
    text = name.strip("/") if isinstance(name, str) else ""
    segments = text.split("/") if text else []
    if (not segments or any(part in ("", ".", "..") for part in segments) or "\\" in text
            or any(ord(c) < 32 or ord(c) == 127 for c in text)):
        fix = "name an array or group inside it" if what.startswith("--") else "fix the metadata"
        raise EmsegError(f"{what} {name!r} in {where}: not a path inside the group (names joined by '/'; no '.', "
                         f"'..' or empty parts, backslashes or control characters); {fix}")
    return text


def check_fits_memory(nbytes: int, what: str, where: str, hint: str) -> None:
    """EmsegError (one line) when `what` ("the whole volume", "one z plane") needs more than the memory this
    process may still allocate (`available_memory`); `hint` says what to do instead."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise EmsegError(f"{where}: {what} needs about {gib(nbytes)} in memory, more than the {gib(available)} "
                         f"available; {hint}")


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


class _ArrayView:
    """What the two views of a stored array below share: numpy-like `ndim`, `len` and `np.asarray(view)`
    (subclasses set `shape` and define `__getitem__`); every attribute they do not define is the base array's."""

    _base: Any
    shape: tuple[int, ...]

    def __getitem__(self, index: Any) -> np.ndarray:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._base, name)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data.astype(dtype) if dtype is not None else data


class SqueezedArray(_ArrayView):
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

    def __getitem__(self, index: Any) -> np.ndarray:
        kept = iter(_full_index(index, self.ndim))
        base_index = tuple(0 if a in self._drop else next(kept) for a in range(len(self._base.shape)))
        return np.asarray(self._base[base_index])

    def __repr__(self) -> str:
        return f"<SqueezedArray shape={self.shape} of {self._base!r}>"


class PlaneStack(_ArrayView):
    """`base` with a length-1 axis added at `axis`, for reading and writing: a 2D image (Y, X) seen as a
    one-plane volume (1, Y, X) (axis 0), or (K, Y, X) probabilities as (K, 1, Y, X) (axis 1). Index 0 (or slice
    0:1) of the added axis is `base` itself. `segment` runs a 2D image through its 3D block driver as this
    (`as_plane_stack`) and writes its 2D label image through it (`runtime.output`). Attributes this class does
    not define are the base array's (as `SqueezedArray`'s)."""

    def __init__(self, base: Any, axis: int = 0) -> None:
        self._base, self._axis = base, axis
        shape, chunks = tuple(int(s) for s in base.shape), getattr(base, "chunks", None) or base.shape
        self.shape = shape[:axis] + (1,) + shape[axis:]
        self.dtype = np.dtype(base.dtype)
        self.chunks = tuple(int(c) for c in chunks[:axis]) + (1,) + tuple(int(c) for c in chunks[axis:])

    def _split(self, index: Any) -> tuple[Any, tuple, int]:
        """(the index on the added axis, the index of `base`, where the added axis lands in the result)."""
        full = _full_index(index, self.ndim)
        at = full[self._axis]
        if not isinstance(at, slice):
            range(1)[at]  # IndexError for an integer other than 0 / -1
        landing = sum(not isinstance(i, (int, np.integer)) for i in full[:self._axis])
        return at, full[:self._axis] + full[self._axis + 1:], landing

    def __getitem__(self, index: Any) -> np.ndarray:
        at, rest, landing = self._split(index)
        data = np.asarray(self._base[rest])
        if isinstance(at, slice):  # (.., 1, ..) or (.., 0, ..) for a slice past the one element
            data = np.expand_dims(data, landing)[(slice(None),) * landing + (at,)]
        return data

    def __setitem__(self, index: Any, value: Any) -> None:
        """Write `value`, shaped as numpy would want it for `index`, into `base` (without the added axis)."""
        at, rest, landing = self._split(index)
        value = np.asarray(value)
        if isinstance(at, slice):
            if not range(1)[at]:
                return  # selects nothing
            if value.ndim > landing and value.ndim == sum(not isinstance(i, (int, np.integer)) for i in rest) + 1:
                value = np.take(value, 0, axis=landing)
        self._base[rest] = value

    def __repr__(self) -> str:
        return f"<PlaneStack shape={self.shape} of {self._base!r}>"


class RegionView(_ArrayView):
    """`base` seen through a box: index i along axis a reads base index box[a][0] + i, for i < box[a][1] -
    box[a][0]. `segment --roi` runs a region of a volume as if it were the whole volume (`crop_volume`)."""

    def __init__(self, base: Any, box: Sequence[tuple[int, int]]) -> None:
        self._base, self._box = base, tuple((int(a), int(b)) for a, b in box)
        self.shape = tuple(b - a for a, b in self._box)
        self.dtype = np.dtype(base.dtype)
        self.chunks = tuple(getattr(base, "chunks", None) or base.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        base_index = []
        for i, (start, _), n in zip(_full_index(index, self.ndim), self._box, self.shape):
            if isinstance(i, slice):
                first, stop, step = i.indices(n)
                if step < 1:
                    raise IndexError("a region of a volume is read with forward slices only")
                base_index.append(slice(start + first, start + max(stop, first), step))
            else:
                base_index.append(start + range(n)[i])  # IndexError outside the box
        return np.asarray(self._base[tuple(base_index)])

    @property
    def whole(self) -> Any:
        """The array the region is cut from."""
        return self._base

    @property
    def box(self) -> tuple[tuple[int, int], ...]:
        """(start, stop) per axis of the region in the base array."""
        return self._box

    def __repr__(self) -> str:
        return f"<RegionView box={self._box} of {self._base!r}>"


def whole_array(array: Any) -> Any:
    """The array a `RegionView` is cut from; any other array as it is. Statistics of a run over a region (the
    intensity mapping) come from the whole volume, so a region segments as it does in a run over everything."""
    return array.whole if isinstance(array, RegionView) else array


def crop_volume(volume: "Volume", box: Sequence[tuple[int, int]]) -> "Volume":
    """The region `box` ((start, stop) per axis, voxels) of `volume` as a volume of its own: its array a
    `RegionView`, its translation moved to the region's first voxel (translation + start · voxel size)."""
    translation = tuple(t + start * v for t, (start, _), v in
                        zip(volume.translation or (0.0,) * len(box), box, volume.voxel_size))
    return replace(volume, array=RegionView(volume.array, box), translation=translation)


def as_plane_stack(volume: "Volume") -> "Volume":
    """A 2D image (Y, X) as a one-plane volume (1, Y, X), axes z, y, x: its array a `PlaneStack`, its voxel size,
    units and translation with z's added (1.0, none, 0.0) and `planar` set, so writers drop the z axis again.
    The image's own axis names are taken as y, x whatever its metadata calls them."""
    return replace(volume, array=PlaneStack(volume.array), axes=SPATIAL_AXES,
                   voxel_size=(1.0,) + tuple(volume.voxel_size), units=(None,) + tuple(volume.units),
                   translation=(0.0,) + tuple(volume.translation or (0.0, 0.0)), planar=True)


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
    format:      "zarr", "n5", "hdf5", "tiff", "image" (PNG, JPEG) or "memory".
    planar:      a 2D image seen as one plane (1, Y, X) (`as_plane_stack`): writers drop the z axis again.
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
    planar: bool = False

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
