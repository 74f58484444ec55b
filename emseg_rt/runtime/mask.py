"""`segment --mask`: segment only where a mask says, skipping blocks and tiles that hold none of it.

    emseg-rt segment cell.zarr --out labels.zarr --mask cell-mask.zarr                 # same grid as the input
    emseg-rt segment cell.zarr --out labels.zarr --mask cell.zarr/labels/cell --mask-level 3   # a coarse level

The mask is any volume `io.open_volume` reads (a label or binary image; nonzero = inside), at any resolution.
Each voxel of the segmented volume looks up the mask voxel it falls in:

- both carry a transform (OME-Zarr scale / translation, or a reader's voxel size): by physical position, the
  mask voxel whose centre is nearest (input voxel i sits at translation + i · voxel size; mask voxel j covers
  its translation + (j ± ½) · its voxel size); a voxel outside the mask's extent is outside the mask;
- otherwise by proportion over the whole input: voxel i of N maps to mask voxel ⌊i · M / N⌋ (the identity when
  the shapes are equal), so a mask downsampled by an integer factor covers the input block by block.

A block with no mask voxel is neither read nor computed (its labels are 0); in the others only the tiles that
can change a mask voxel run (`tiling.active_tiles`), and every voxel outside the mask is 0 in the labels, the
probabilities and the density. A mask voxel's label equals that of a run without the mask (tested). Each block's
done-marker digest covers its mask planes as well as its input, so `--resume` refuses a changed mask.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.io import open_volume, source_name
from emseg_rt.io.volume import RegionView, Volume, as_plane_stack
from emseg_rt.runtime.fingerprint import DIGEST_BYTES, block_digest, input_fingerprint


@dataclass
class VoxelMask:
    """A mask mapped onto the segmented volume's voxel grid (picklable: Dask workers receive it in the job).

    source / level / where: the mask as the user named it, and how messages name it.
    index:  per axis (z, y, x) of the segmented volume, the mask's index along that axis for each voxel, or -1
            where the voxel lies outside the mask's extent (`mask_index`).
    fingerprint: the mask volume's metadata digest (`fingerprint.input_fingerprint`), in the run configuration.
    """

    source: Any
    level: int | None
    where: str
    index: tuple[np.ndarray, ...]
    fingerprint: str
    _array: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # a worker opens the mask itself
        return state

    def planes(self, start: int, stop: int, axis_index: int) -> np.ndarray:
        """Planes start..stop-1 along `axis_index` of the mask on the segmented grid: (Z, Y, X) bool region in
        the volume's orientation, True inside the mask."""
        wanted = [ix[start:stop] if a == axis_index else ix for a, ix in enumerate(self.index)]
        out = np.zeros(tuple(len(ix) for ix in wanted), dtype=bool)
        inside = [np.flatnonzero(ix >= 0) for ix in wanted]
        if any(len(i) == 0 for i in inside):
            return out
        picked = [ix[i] for ix, i in zip(wanted, inside)]
        low = [int(p.min()) for p in picked]
        box = tuple(slice(lo, int(p.max()) + 1) for lo, p in zip(low, picked))
        array = self.array()
        try:
            raw = np.asarray(array[box]) != 0
        except Exception as exc:  # codec / store errors from a damaged chunk
            raise EmsegError(f"{self.where}: cannot read voxels {[(b.start, b.stop) for b in box]} (corrupt or "
                             f"missing chunk?): {type(exc).__name__}") from exc
        out[np.ix_(*inside)] = raw[np.ix_(*(p - lo for p, lo in zip(picked, low)))]
        return out

    def array(self) -> Any:
        """The mask volume's (Z, Y, X) array, opened on first use."""
        if self._array is None:
            self._array = _open(self.source, self.level, self.where).array
        return self._array

    def config(self) -> dict[str, Any]:
        """What the run configuration records of the mask (a resume with another mask is refused)."""
        return {"mask": self.where.removeprefix("--mask "), "level": self.level, "fingerprint": self.fingerprint}


def _open(source: Any, level: int | None, where: str) -> Volume:
    try:
        mask = open_volume(source, level=level)
    except EmsegError as exc:  # the readers name it "input ...": here it is the mask
        raise EmsegError(f"--mask {str(exc).removeprefix('input ')}") from None
    if mask.ndim == 2:
        mask = as_plane_stack(mask)
    if mask.ndim != 3:
        raise EmsegError(f"{where} is {mask.ndim}D with shape {mask.shape}; a mask is a 2D or 3D label or binary "
                         "image")
    if mask.dtype.kind not in "biu":
        raise EmsegError(f"{where} has dtype {mask.dtype}; a mask is a label or binary image (integers or bool, "
                         "nonzero inside)")
    return mask


def has_transform(volume: Volume) -> bool:
    """Whether a volume says where its voxels are (OME-Zarr, or a voxel size / translation a reader found)."""
    return volume.is_ome or any(v != 1.0 for v in volume.voxel_size) or any(t != 0.0 for t in volume.translation)


def mask_index(mask: Volume, volume: Volume) -> tuple[np.ndarray, ...]:
    """Per axis of `volume` (the segmented one, maybe a `RegionView` of a larger input), the index of the
    `mask` voxel each of its voxels falls in, -1 outside the mask's extent (module docstring)."""
    array = volume.array
    offsets = [a for a, _ in array.box] if isinstance(array, RegionView) else [0, 0, 0]
    whole = array.whole.shape if isinstance(array, RegionView) else volume.shape
    if volume.planar:
        whole = (1,) + tuple(whole)[-2:]
    physical = has_transform(mask) and has_transform(volume)
    index = []
    for a, (n, m) in enumerate(zip(volume.shape, mask.shape)):
        i = np.arange(n, dtype=np.int64)
        if physical:
            position = volume.translation[a] + i * volume.voxel_size[a]
            j = np.floor((position - mask.translation[a]) / mask.voxel_size[a] + 0.5).astype(np.int64)
        else:
            j = (offsets[a] + i) * m // whole[a]
        index.append(np.where((j >= 0) & (j < m), j, -1))
    return tuple(index)


def open_mask(source: Any, level: int | None, volume: Volume) -> VoxelMask | None:
    """The mask `source` (a path, URL or array; None: no mask) on the grid of the segmented `volume`;
    EmsegError (one line) for a mask that cannot be read, is not a label image, has other units, or does not
    overlap the volume."""
    if source is None:
        return None
    where = f"--mask {source_name(source)}"
    mask = _open(source, level, where)
    if has_transform(mask) and has_transform(volume):
        for axis, a, b in zip("zyx", mask.units, volume.units):
            if a and b and a != b:
                raise EmsegError(f"{where}: its {axis} unit is {a}, the input's {b}; give the mask in the input's "
                                 "units")
    index = mask_index(mask, volume)
    if any((ix < 0).all() for ix in index):
        raise EmsegError(f"{where} (shape {mask.shape}, voxel size {tuple(mask.voxel_size)}, translation "
                         f"{tuple(mask.translation)}) does not overlap the segmented volume")
    return VoxelMask(source, level, where, index, input_fingerprint(mask), mask.array)


def masked_digest(input_digest: bytes | None, mask: np.ndarray) -> bytes:
    """A block's done-marker digest in a masked run: its input's digest (None: the block holds no mask voxel
    and was not read) and its mask planes', as one DIGEST_BYTES-byte BLAKE2b digest."""
    both = hashlib.blake2b(digest_size=DIGEST_BYTES)
    both.update(b"masked" if input_digest is None else input_digest)
    both.update(block_digest(mask))
    return both.digest()
