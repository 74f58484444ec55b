"""What the input looked like when a run started: a resume refuses an input that changed since.

The fingerprint is cheap and streamed: the array's metadata (shape, dtype, chunks) plus, for a local
store, the relative path, size and modification time (ns) of every file under the array's directory,
hashed in sorted order, never their contents. A rewritten chunk changes its size or mtime; a changed
plane the normalisation did not sample is caught all the same. Remote stores get the metadata only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from emseg_rt.errors import EmsegError
from emseg_rt.io.zarr_reader import chunk_counts


def array_directory(array: Any) -> Path | None:
    """The local directory holding a zarr array's metadata and chunks, or None for a non-local store."""
    root = getattr(getattr(array, "store", None), "root", None)
    if root is None:
        return None
    return Path(root) / getattr(array, "path", "")


def input_fingerprint(array: Any, path: Any = None) -> str:
    """sha256 hex of the array's metadata and its files' (path, size, mtime_ns): the zarr array's directory,
    else the local file or folder `path` it was read from (N5, HDF5, TIFF); metadata only for URLs and
    arrays in memory."""
    digest = hashlib.sha256()
    chunks = tuple(getattr(array, "chunks", None) or ())
    digest.update(repr((tuple(array.shape), str(array.dtype), chunks)).encode())
    location = array_directory(array)
    if location is None and isinstance(path, (str, os.PathLike)) and "://" not in str(path):
        location = Path(path)
    if location is not None and location.is_file():
        stat = location.stat()
        digest.update(f"{location.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    elif location is not None and location.is_dir():
        for dirpath, dirnames, filenames in os.walk(location):
            dirnames.sort()
            for name in sorted(filenames):
                file = Path(dirpath) / name
                stat = file.stat()
                digest.update(f"{file.relative_to(location)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_no_missing_chunks(array: Any, where: str, allow_missing: bool) -> None:
    """EmsegError when chunks of the input were never written (zarr would read them as its fill value),
    unless `allow_missing` says that missing chunks are empty on purpose."""
    if allow_missing:
        return
    try:
        counts = chunk_counts(array)  # from the store's listing, never by walking the declared chunk grid
    except Exception:  # a store that cannot list its keys: nothing to check against
        return
    if counts is None:  # not zarr (N5, HDF5, TIFF, arrays in memory)
        return
    present, total = counts
    if present < total:
        raise EmsegError(f"{where}: {total - present} of {total} chunks are missing (they would be read as "
                         f"{array.fill_value!r}); repair the input, or pass --allow-missing-chunks if they are "
                         "empty on purpose")
