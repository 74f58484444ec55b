"""What the input looked like when a run read it: a resume refuses an input that changed since.

Two records, both in the output's run state, neither trusting file sizes or modification times:

- the input's description (`input_fingerprint`): shape, dtype, chunks, and what its container says of the axes,
  voxel size, units and translation. It is in the run record and compared before anything is computed, so a
  unit changed from nanometer to micrometer is refused, not completed under the old unit;
- what each write block read (`block_digest`): a BLAKE2b digest of the raw values of the block's planes, the
  content of the block's done-marker. A resume reads every finished block's planes again and compares
  (`BlockDriver.input_unchanged`), so a rewritten chunk is found whatever its size and mtime. Blocks not yet
  computed read the input as it is then: the finished output equals one run over the input as it is at the end.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.io.zarr_reader import chunk_counts

DIGEST_BYTES = 32  # BLAKE2b-256: a block's input digest, the content of its done-marker


def input_fingerprint(volume: Any) -> str:
    """sha256 hex of what describes the input `volume` (an `io.Volume`): its array's shape, dtype and chunks and
    its axes, voxel size, units and translation. Its values are checked per block (`block_digest`)."""
    array = volume.array
    description = {
        "shape": [int(s) for s in array.shape], "dtype": str(array.dtype),
        "chunks": [int(c) for c in (getattr(array, "chunks", None) or ())],
        "axes": list(volume.axes), "voxel_size": [float(v) for v in volume.voxel_size],
        "units": list(volume.units), "translation": [float(t) for t in (volume.translation or ())],
    }
    return hashlib.sha256(repr(sorted(description.items())).encode()).hexdigest()


def block_digest(raw: np.ndarray) -> bytes:
    """The DIGEST_BYTES-byte BLAKE2b digest of a block's raw input values (any shape and dtype, as read from the
    volume): equal digests mean the same values in the same shape and dtype."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    digest.update(repr((raw.shape, raw.dtype.str)).encode())
    digest.update(memoryview(np.ascontiguousarray(raw)).cast("B"))
    return digest.digest()


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
