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


def array_directory(array: Any) -> Path | None:
    """The local directory holding a zarr array's metadata and chunks, or None for a non-local store."""
    root = getattr(getattr(array, "store", None), "root", None)
    if root is None:
        return None
    return Path(root) / getattr(array, "path", "")


def input_fingerprint(array: Any) -> str:
    """sha256 hex of the array's metadata and its files' (path, size, mtime_ns)."""
    digest = hashlib.sha256()
    digest.update(repr((tuple(array.shape), str(array.dtype), tuple(getattr(array, "chunks", ())))).encode())
    directory = array_directory(array)
    if directory is not None and directory.is_dir():
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                stat = path.stat()
                digest.update(f"{path.relative_to(directory)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_no_missing_chunks(array: Any, where: str, allow_missing: bool) -> None:
    """EmsegError when chunks of the input were never written (zarr would read them as its fill value),
    unless `allow_missing` says that missing chunks are empty on purpose."""
    if allow_missing:
        return
    try:
        total, present = int(array.nchunks), int(array.nchunks_initialized)
    except Exception:  # a store that cannot list its keys: nothing to check against
        return
    if present < total:
        raise EmsegError(f"{where}: {total - present} of {total} chunks are missing (they would be read as "
                         f"{array.fill_value!r}); repair the input, or pass --allow-missing-chunks if they are "
                         "empty on purpose")
