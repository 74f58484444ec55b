"""`open_volume`: one entry point for every input emseg-rt reads, each streamed (indexing reads what it touches).

    source                                         reader (library)
    ---------------------------------------------  ------------------------------------------------------
    zarr v2/v3 array or group, OME-Zarr 0.4/0.5   zarr_reader (zarr); `key` picks a group member, `level`
      (bioformats2raw containers: image 0)          an OME level, `labels` an OME label group
    *.n5 directory / N5 attributes.json            n5 (tensorstore, extra `n5`); `key` = dataset path
    *.h5 / *.hdf5 file (or the HDF5 signature)     hdf5 (h5py, extra `hdf5`); `key` = dataset path
    *.tif / *.tiff file, folder of TIFF pages      tiff (tifffile, extra `tiff`); `key` = series number
    *.png / *.jpg / *.jpeg file (2D)               images2d (Pillow), decoded whole
    http(s)://, s3://, ... URL                     zarr via FsspecStore, or N5 via tensorstore for a URL
                                                    ending in .n5 (fsspec + s3fs/aiohttp, extra `remote`)
    numpy, dask or zarr array in memory            Volume with axes zyx (tczyx[-ndim:]), voxel size 1, path None

Singleton time / channel axes that the metadata names (OME axes, zarr dimension_names, tifffile's axes,
HDF5 dimension labels, N5 axes) are squeezed out; `spatial=True` refuses a longer one in one line. A 2D image
(2D TIFF, PNG, a 2D zarr array or OME-Zarr yx image, a 2D array) opens as a 2D Volume; `segment` runs it as one
plane (`volume.as_plane_stack`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import zarr

from emseg_rt.checks import check_input_exists
from emseg_rt.errors import EmsegError
from emseg_rt.io.hdf5 import HDF5_SUFFIXES, hdf5_volume, looks_like_hdf5
from emseg_rt.io.images2d import IMAGE_SUFFIXES, image_volume
from emseg_rt.io.n5 import looks_like_n5, n5_volume
from emseg_rt.io.tiff import TIFF_SUFFIXES, tiff_volume
from emseg_rt.io.volume import ArrayView, Volume, check_declared, check_fits_memory, default_axes
from emseg_rt.io.zarr_reader import is_url, looks_like_zarr, node_volume, zarr_volume

SUPPORTED = "zarr / OME-Zarr, N5, HDF5 (.h5), TIFF (.tif file or folder), PNG / JPEG (2D)"


def _is_zarr_node(source: Any) -> bool:
    return isinstance(source, (zarr.Array, zarr.Group))


def is_array(source: Any) -> bool:
    """True for an in-memory array-like (numpy, dask, zarr, anything with shape, dtype and indexing)."""
    if isinstance(source, (str, bytes, os.PathLike)):
        return False
    return _is_zarr_node(source) or all(hasattr(source, a) for a in ("shape", "dtype", "__getitem__"))


def source_name(source: Any) -> str:
    """How messages and reports name an input: the path or URL as given, or 'numpy array (4, 64, 64) uint8'."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if is_array(source) and hasattr(source, "shape"):
        package = type(source).__module__.split(".")[0]
        return f"{package} array {tuple(int(s) for s in source.shape)} {np.dtype(source.dtype).name}"
    return f"{type(source).__name__} object"


def array_volume(array: Any, key: str | None = None, level: int | None = None, labels: str | None = None, *,
                 spatial: bool = False) -> Volume:
    """A Volume over an array in memory: zarr arrays/groups as zarr (OME metadata honoured), others as zyx."""
    if _is_zarr_node(array):
        if labels is not None:
            raise EmsegError("labels= needs an OME-Zarr image on disk or at a URL, not an in-memory zarr object")
        return node_volume(array, None, key, level, spatial=spatial)
    if key or level not in (None, 0) or labels is not None:
        raise EmsegError(f"--key / --level / labels given but the input is an in-memory {source_name(array)}")
    ndim = len(array.shape)
    if isinstance(array, np.ndarray):
        view: Any = array
    elif hasattr(array, "compute") and hasattr(array, "chunksize"):  # dask: compute only the indexed blocks
        view = ArrayView(lambda index: array[index].compute(), array.shape, array.dtype, array.chunksize, keep=array,
                         kind="dask")
    else:
        view = ArrayView(array.__getitem__, array.shape, array.dtype, getattr(array, "chunks", None), keep=array,
                         kind=type(array).__name__)
    return Volume(None, view, default_axes(ndim), (1.0,) * ndim, (None,) * ndim, format="memory")


def _url_volume(url: str, key: str | None, level: int | None, labels: str | None, spatial: bool) -> Volume:
    parts = urlsplit(url)
    path = parts.path.rstrip("/").lower()
    if path.endswith(".n5") or ".n5/" in path:
        if labels is not None:
            raise EmsegError(f"labels= is for OME-Zarr images; {url} is N5")
        if parts.scheme.lower() not in ("http", "https"):
            # tensorstore's s3/gcs drivers want cloud credentials set up; public buckets (OpenOrganelle's) are
            # read anonymously over https, which is also what neuroglancer does.
            https = (f"https://{parts.netloc}.s3.amazonaws.com{parts.path}" if parts.scheme.lower() == "s3"
                     else "https://...")
            raise EmsegError(f"input {url}: N5 is read from local folders and http(s):// URLs; for a public bucket "
                             f"pass its https address, e.g. {https}")
        return n5_volume(url, key, level, spatial=spatial)
    if path.endswith(HDF5_SUFFIXES + TIFF_SUFFIXES + IMAGE_SUFFIXES):
        raise EmsegError(f"input {url}: HDF5, TIFF, PNG and JPEG are read from local files only; download it first, or "
                         "convert it to OME-Zarr")
    return zarr_volume(url, key, level, labels, spatial=spatial)


def _has_tiff_files(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(e.name.lower().endswith(TIFF_SUFFIXES) and not e.name.startswith(".") for e in entries)


def open_volume(source: Any, key: str | None = None, level: int | None = None, labels: str | None = None, *,
                spatial: bool = False) -> Volume:
    """Open a volume for streaming; nothing but metadata is read (see the module docstring for the formats).

    source:  a path (str or Path), a URL string, or an in-memory numpy / dask / zarr array.
    key:     the array or dataset inside a container (zarr group member, N5 / HDF5 dataset, TIFF series).
    level:   the pyramid level of an OME-Zarr image or a multiscale N5 group (0 = full resolution).
    labels:  the label group `labels/<labels>` of an OME-Zarr image, opened instead of the image.
    spatial: the volume is read plane by plane (segment): refuse a time or channel axis longer than 1
             (singleton ones are always squeezed out), and planes too large for this machine's memory.
    Raises EmsegError (one line, naming the input) for a missing input, key, level or label group, an
    unrecognised format, a reader library that is not installed (naming the pip extra), and metadata that
    declares what no volume has (`volume.check_declared`: a shape past MAX_VOXELS, a NaN or non-positive voxel
    size; `check_chunk_size`: a chunk too large to decode) before anything proportional to it is allocated.
    """
    volume = _open(source, key, level, labels, spatial)
    where = f"input {source_name(source)}"
    check_declared(volume, where)
    if spatial and not isinstance(volume.array, np.ndarray):  # in memory already: its planes fit
        check_planes_fit(volume, where)
    return volume


def check_planes_fit(volume: Volume, where: str) -> None:
    """EmsegError (one line) when the largest axis-aligned plane of a 3D `volume`, held as read, as uint8
    and as labels (what reading it plane by plane needs at the least), exceeds the memory available."""
    if volume.ndim != 3:
        return
    areas = {"z": volume.shape[1] * volume.shape[2], "y": volume.shape[0] * volume.shape[2],
             "x": volume.shape[0] * volume.shape[1]}
    axis = max(areas, key=areas.__getitem__)
    check_fits_memory(areas[axis] * (volume.dtype.itemsize + 2), f"one {axis} plane of its {volume.shape} "
                      f"{volume.dtype.name} (as read, as uint8 and as labels)", where,
                      "is its shape right? else pass a smaller array or a coarser level (--key / --level)")


def _open(source: Any, key: str | None, level: int | None, labels: str | None, spatial: bool) -> Volume:
    """`open_volume` before the checks of what the metadata declares."""
    if is_array(source):
        return array_volume(source, key, level, labels, spatial=spatial)
    if isinstance(source, str) and is_url(source):
        return _url_volume(source, key, level, labels, spatial)
    if isinstance(source, str) and source.startswith("file://"):
        source = unquote(urlsplit(source).path)
    if not isinstance(source, (str, os.PathLike)):
        raise EmsegError(f"input must be a path, a URL, or a numpy, dask or zarr array; got {source_name(source)}")
    path = Path(source)
    if labels is not None:
        return zarr_volume(path, key, level, labels, spatial=spatial)
    check_input_exists(path)
    if path.is_dir():
        if looks_like_zarr(path):
            return zarr_volume(path, key, level, spatial=spatial)
        if looks_like_n5(path):
            return n5_volume(path, key, level, spatial=spatial)
        if _has_tiff_files(path):
            return tiff_volume(path, key, level, spatial=spatial)
        raise EmsegError(f"input {path} is not a zarr array or group, nor an N5 container or a folder of TIFF pages "
                         "(no zarr.json, .zarray, .zgroup, attributes.json or .tif files found)")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return tiff_volume(path, key, level, spatial=spatial)
    if looks_like_hdf5(path):
        return hdf5_volume(path, key, level, spatial=spatial)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return image_volume(path, key, level)
    raise EmsegError(f"input {path} is not a zarr array or group, nor a volume file emseg-rt reads "
                     f"(supported: {SUPPORTED})")


def read_volume(source: Any, key: str | None = None, level: int | None = None, labels: str | None = None, *,
                spatial: bool = False) -> np.ndarray:
    """Read a whole volume (array, level or label group) into memory (arguments as `open_volume`); EmsegError
    (one line) when it would not fit in the memory available."""
    volume = open_volume(source, key=key, level=level, labels=labels, spatial=spatial)
    check_whole_fits(volume, f"input {source_name(source)}")
    return np.asarray(volume.array[...])


def check_whole_fits(volume: Volume, where: str) -> None:
    """EmsegError (one line) unless the whole of `volume` fits in the memory available (arrays already in
    memory always do)."""
    if not isinstance(volume.array, np.ndarray):
        check_fits_memory(math.prod(volume.shape) * volume.dtype.itemsize, f"the whole volume ({volume.shape} "
                          f"{volume.dtype.name})", where, "is its shape right? else read a smaller array or a "
                          "coarser level")
