"""`segment --planes xy,xz,yz`: orthoplane fusion, the one block driver run along more than one axis.

    emseg-rt segment cell.zarr --out cell-seg.zarr --planes xy,xz,yz     # 3 passes, probabilities averaged

Every model here sees one plane. With `--planes`, the first plane orientation is the run's own axis (xy: z,
xz: y, yz: x) and each further one is a *pass*: the same `BlockDriver`, the same tiler and backend, over blocks
along that pass's axis, writing per-class probabilities (uint8, sigmoid(logit)·255, as `--probabilities`)
into the run state (`PlanePass`: `OUT/.emseg-rt/planes-<hash>/<axis>`, sharded zarr v3, one shard per pass
block, with done-markers holding the block's input digest). Then the run's own blocks compute their
probabilities, read the passes' probabilities of the same voxels, and label the mean with the model's own
class merge (`fuse`): class k + 1 for the largest mean probability, 0 where none is above the model's
threshold (sigmoid(threshold)·255). Memory stays that of one block per pass; a kill at any point resumes
from the markers (a pass block is written whole, then marked; the fused blocks are the run's own blocks).

Anisotropic voxels are refused in one line: the models were trained on planes with square pixels, so an xz
plane of a 30 × 4 × 4 nm volume would show them stretched 7.5×; resample the volume first (a choice made to
keep the numbers honest; resampling inside would double the volume's I/O and change what a run's labels are
aligned to).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import create_array
from emseg_rt.runtime.fingerprint import DIGEST_BYTES
from emseg_rt.runtime.output import DoneMarkers
from emseg_rt.runtime.plane_labels import merge_logits

PLANES = {"xy": "z", "xz": "y", "yz": "x"}  # a plane orientation and the axis it is perpendicular to
AXES = ("z", "y", "x")
INNER_TILE = 256  # chunks inside a pass's shard, across the axes the fused blocks do not cut
ANISOTROPY_TOLERANCE = 0.01


def parse_planes(text: str | None) -> tuple[str, ...]:
    """`--planes xy,xz,yz` → the axes the planes are perpendicular to, in order ('z', 'y', 'x'); () for None."""
    if text is None:
        return ()
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in PLANES]
    if unknown or not names:
        raise EmsegError(f"--planes {text!r}: give plane orientations from xy, xz, yz (comma-separated)")
    if len(set(names)) != len(names):
        raise EmsegError(f"--planes {text!r}: each orientation once")
    return tuple(PLANES[n] for n in names)


def plane_name(axis: str) -> str:
    """The plane orientation perpendicular to `axis` ('z' → 'xy')."""
    return next(name for name, a in PLANES.items() if a == axis)


def check_isotropic(voxel_size: tuple[float, ...], axes: tuple[str, ...], units: tuple[Any, ...], where: str) -> None:
    """EmsegError (one line) when the voxels' sides differ along the axes the passes' planes span."""
    spanned = sorted({a for axis in axes for a in AXES if a != axis})
    sizes = {a: float(voxel_size[AXES.index(a)]) for a in spanned}
    low, high = min(sizes.values()), max(sizes.values())
    if high > low * (1 + ANISOTROPY_TOLERANCE):
        unit = next((u for u in units if u), "")
        shown = " × ".join(f"{a} {sizes[a]:g}" for a in spanned)
        raise EmsegError(f"--planes {','.join(plane_name(a) for a in axes)}: {where} has anisotropic voxels "
                         f"({shown} {unit}); the models see square pixels, so resample the volume to isotropic "
                         "voxels first, or segment xy planes only")


def fuse(probabilities: list[np.ndarray], threshold: float, label_type: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The mean of per-class uint8 probabilities (K, ...) from several passes → (labels (...) label_type by the
    class merge of the mean at sigmoid(threshold)·255, the mean rounded to uint8 (K, ...))."""
    total = np.zeros(probabilities[0].shape, np.float32)
    for p in probabilities:
        total += p
    mean = total / np.float32(len(probabilities))
    level = float(255.0 / (1.0 + np.exp(-threshold)))
    flat = torch.from_numpy(mean.reshape(mean.shape[0], 1, -1))
    labels = merge_logits(flat, level, label_type).numpy().reshape(mean.shape[1:])
    return labels, np.rint(mean).astype(np.uint8)


def pass_chunking(shape: tuple[int, ...], classes: int, axis_index: int, block: int, fused_axis: int,
                  fused_block: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunks, shards) of a pass's (K, Z, Y, X) probabilities: one shard per pass block (`block` planes along
    `axis_index`, the whole of the other axes); chunks one class deep, `block` along the pass's axis,
    `fused_block` along the fused run's axis (a fused block reads whole chunks) and INNER_TILE along the third."""
    chunks = [1]
    for i, s in enumerate(shape):
        chunks.append(min(s, block if i == axis_index else fused_block if i == fused_axis else INNER_TILE))
    shards = [classes] + [min(block, s) if i == axis_index else -(-s // c) * c
                          for i, (s, c) in enumerate(zip(shape, chunks[1:]))]
    return tuple(chunks), tuple(shards)


@dataclass(frozen=True)
class PlanePass:
    """The run state of one extra pass (picklable: Dask workers write its blocks and read it in fused blocks):
    its probabilities array `group/<axis>` (K, Z, Y, X) uint8 and its done-markers `group/<axis>-done`, one per
    pass block (`block` planes along `axis_index`), each the digest of the input the block read."""

    group: Path
    axis: str
    axis_index: int
    block: int
    zarr_format: int = 3

    @property
    def path(self) -> Path:
        return self.group / self.axis

    @property
    def markers(self) -> DoneMarkers:
        return DoneMarkers(self.group / f"{self.axis}-done", self.zarr_format, DIGEST_BYTES)

    def create(self, shape: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...], blocks: int) -> None:
        """The pass's empty probabilities array and markers (the markers last, so their presence says both
        exist), unless an earlier run of this configuration made them."""
        if self.markers.exists():
            return
        group = zarr.open_group(str(self.group), mode="a", zarr_format=self.zarr_format)
        create_array(group, self.axis, shape, np.uint8, chunks, None, self.zarr_format, overwrite=True,
                     shards=shards)
        self.markers.create(blocks)

    def write(self, index: int, start: int, region: tuple[slice, ...], probabilities: np.ndarray,
              digest: bytes) -> None:
        """A pass block's probabilities (K, region): its shard file removed and written whole (never merged with
        what a killed attempt left), then its marker."""
        shard = ["0"] * 4
        shard[self.axis_index + 1] = str(start // self.block)
        (self.path / "c" / "/".join(shard)).unlink(missing_ok=True)
        zarr.open_array(str(self.path), mode="r+")[(slice(None),) + region] = probabilities
        self.markers.mark(index, digest)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """Probabilities (K, region) uint8 of a region every block of this pass has written."""
        return np.asarray(zarr.open_array(str(self.path), mode="r")[(slice(None),) + region])

    def remove(self) -> None:
        """Delete the pass's probabilities and markers (the run is complete; they are not part of the output)."""
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.markers.path, ignore_errors=True)
