"""The block: the unit of work of every segment run, and the one driver that computes it.

A block is `block` whole planes along the slicing axis (index, first plane, end plane). Output chunks are aligned
to blocks, so each block is written as whole chunks by one writer; batches never span blocks and the last
batch of a block is padded to full size, so a block's numbers do not depend on where a run started or which
process computed it: a resumed or distributed run is byte-identical to an uninterrupted one.

`BlockDriver.run(block)` is the whole unit of work: read (normalised uint8 planes) → segment (`slab.segment_planes`:
prompts, `--prompts auto`, `--tta`, the density) → write through a sink. Three schedulers run it:
the threaded stream of `segment_volume` (its three stages on a reader, a compute and a writer thread),
the Dask workers of `segment --dask` (`runtime.distributed`) and the in-memory `segment_labels`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.io import open_volume, source_name
from emseg_rt.io.volume import as_plane_stack, crop_volume
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.fingerprint import block_digest
from emseg_rt.runtime.mask import VoxelMask, masked_digest
from emseg_rt.runtime.planes import PlanePass, fuse
from emseg_rt.runtime.region import Range, roi_box
from emseg_rt.runtime.normalise import Normalisation, check_dtype, check_finite, to_uint8
from emseg_rt.runtime.slab import PromptMode, SlabSettings, segment_planes
from emseg_rt.tiling import active_tiles

Block = tuple[int, int, int]  # (index, first plane, end plane)


def plan_blocks(depth: int, block: int) -> list[Block]:
    """The blocks of `depth` planes, `block` planes each (the last one shorter)."""
    return [(i, b, min(b + block, depth)) for i, b in enumerate(range(0, depth, block))]


def region_of(start: int, stop: int, axis_index: int) -> tuple[slice, ...]:
    """The (Z, Y, X) index of planes start..stop-1 along `axis_index`."""
    return tuple(slice(start, stop) if i == axis_index else slice(None) for i in range(3))


def open_input(source: Any, key: str | None, level: int | None,
               roi: tuple[Range, ...] | None = None) -> tuple[Any, str]:
    """The input as a checked 3D Volume (singleton t/c squeezed; a 2D image as one plane (1, Y, X), `planar`;
    only the region `roi` with `--roi`, `runtime.region`) and how messages name it."""
    volume = open_volume(source, key=key, level=level, spatial=True)
    where = f"input {source_name(source)}" + (f" (key {key})" if key else "") + (
        f" (level {volume.dataset_path})" if volume.is_ome else "")
    if volume.ndim == 2:
        volume = as_plane_stack(volume)
    if volume.ndim != 3:
        raise EmsegError(f"{where} is {volume.ndim}D with shape {volume.shape}; segment takes 2D (y, x) images and "
                         "3D (z, y, x) volumes (pick one with --key / --level)")
    if 0 in volume.shape:
        raise EmsegError(f"{where} has an empty axis (shape {volume.shape}); nothing to segment")
    check_dtype(volume.dtype, where)
    if roi is not None:
        volume = crop_volume(volume, roi_box(roi, volume, where))
    return volume, where


def read_raw(array: Any, start: int, stop: int, axis_index: int, axis: str, where: str) -> np.ndarray:
    """Planes start..stop-1 of a (Z, Y, X) array, as stored (the volume's orientation and dtype)."""
    try:
        return np.asarray(array[region_of(start, stop, axis_index)])
    except Exception as exc:  # codec / store errors from a damaged chunk
        raise EmsegError(f"{where}: cannot read {axis} {start}..{stop - 1} (corrupt or missing chunk?): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def slab_of(raw: np.ndarray, start: int, stop: int, axis_index: int, axis: str, norm: Normalisation,
            where: str) -> np.ndarray:
    """A block's raw planes (volume orientation) as a (N, H, W) uint8 slab (normalised, NaN/Inf refused)."""
    check_finite(raw, f"{where} ({axis} {start}..{stop - 1})")
    return to_uint8(np.moveaxis(raw, axis_index, 0), norm)


@dataclass
class BlockInput:
    """A block's input as the driver read it: slab (N, H, W) uint8, normalised (None: a masked run's block with
    no mask voxel, not read), the digest recorded in the block's done-marker (`fingerprint.block_digest` of the
    raw values; with a mask `mask.masked_digest`), and the mask (N, H, W) bool or None."""

    slab: np.ndarray | None
    digest: bytes
    mask: np.ndarray | None = None
    fused: list[np.ndarray] = field(default_factory=list)  # --planes: each pass's (K, N, H, W) uint8


@dataclass(frozen=True)
class BlockJob:
    """How every block of one run is computed (picklable: Dask workers receive it).

    axis_index / axis: the slicing axis; norm: the run's intensity mapping to uint8; where: the input's name in
    messages; slab: tile plan, batch, blend, labels dtype, probabilities, TTA; mode: how tiles are prompted;
    classes: the model's class count; density: also blend the density (the instance watershed of density
    models); mask: segment only inside it (`runtime.mask`); fuse: `--planes` passes whose probabilities are
    averaged with this run's before the class merge (`runtime.planes`)."""

    axis_index: int
    axis: str
    norm: Normalisation
    where: str
    slab: SlabSettings
    mode: PromptMode
    classes: int
    density: bool = False
    mask: VoxelMask | None = None
    fuse: tuple[PlanePass, ...] = ()

    def block_mask(self, start: int, stop: int) -> np.ndarray | None:
        """The mask of planes start..stop-1 as (N, H, W) bool, plane-major; None without a mask."""
        if self.mask is None:
            return None
        return np.moveaxis(self.mask.planes(start, stop, self.axis_index), self.axis_index, 0)


@dataclass
class BlockResult:
    """One computed block in the volume's orientation: labels (Z, Y, X) region, probabilities (K, Z, Y, X)
    uint8 or None, density (Z, Y, X) float32 or None; and what a scheduler counts (`summary`)."""

    block: Block
    labels: np.ndarray
    probabilities: np.ndarray | None
    density: np.ndarray | None
    summary: BlockSummary
    input_digest: bytes = b""


@dataclass
class BlockSummary:
    """What a scheduler counts of one block (small: Dask workers send it back instead of the arrays)."""

    index: int
    planes: int
    tiles: int
    label_counts: list[int]
    prompt_counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


Sink = Callable[[BlockResult], None]


def store_sink(store: Any, axis_index: int) -> Sink:
    """Write each block into an `OutputStore` (whole chunks, then the block's done-marker)."""
    def write(result: BlockResult) -> None:
        _, start, stop = result.block
        store.write_block(result.block[0], region_of(start, stop, axis_index), result.labels,
                          result.probabilities, result.density, result.input_digest)
    return write


def pass_sink(plane_pass: PlanePass) -> Sink:
    """Write each block's probabilities into a `--planes` pass (its shard whole, then its marker)."""
    def write(result: BlockResult) -> None:
        index, start, stop = result.block
        plane_pass.write(index, start, region_of(start, stop, plane_pass.axis_index), result.probabilities,
                         result.input_digest)
    return write


def array_sink(out: np.ndarray, axis_index: int) -> Sink:
    """Put each block's labels into `out` (Z, Y, X), the whole volume's labels in memory."""
    def write(result: BlockResult) -> None:
        _, start, stop = result.block
        out[region_of(start, stop, axis_index)] = result.labels
    return write


class BlockDriver:
    """Reads, segments and writes the blocks of one run on one backend. `run(block)` is the whole unit of work;
    the threaded stream calls its stages `read`, `compute` and `write` on three threads. `timings` adds up
    seconds per stage (read, compute, stitch, write) over the blocks this driver ran."""

    def __init__(self, backend: Backend, array: Any, job: BlockJob, sink: Sink) -> None:
        self.backend, self.array, self.job, self.sink = backend, array, job, sink
        self.timings = {"read": 0.0, "write": 0.0, "compute": 0.0, "stitch": 0.0}

    def run(self, block: Block) -> BlockResult:
        """Read, segment and write one block; returns it (the sink has it)."""
        result = self.compute(block, self.read(block))
        self.write(result)
        return result

    def read(self, block: Block) -> BlockInput:
        """The block's planes as a (N, H, W) uint8 slab, with the digest of what was read (with a mask: nothing
        is read for a block that holds no mask voxel)."""
        _, start, stop = block
        t0 = time.perf_counter()
        job = self.job
        mask = job.block_mask(start, stop)
        if mask is not None and not mask.any():
            read = BlockInput(None, masked_digest(None, mask), mask)
        else:
            raw = read_raw(self.array, start, stop, job.axis_index, job.axis, job.where)
            digest = block_digest(raw) if mask is None else masked_digest(block_digest(raw), mask)
            read = BlockInput(slab_of(raw, start, stop, job.axis_index, job.axis, job.norm, job.where), digest, mask)
            region, axis = region_of(start, stop, job.axis_index), job.axis_index
            read.fused = [np.moveaxis(plane_pass.read(region), axis + 1, 1) for plane_pass in job.fuse]
        self.timings["read"] += time.perf_counter() - t0
        return read

    def input_unchanged(self, block: Block, recorded: bytes) -> bool:
        """Whether the block's planes (and mask) still hold the values whose digest is `recorded` (a finished
        block, on resume)."""
        _, start, stop = block
        job = self.job
        mask = job.block_mask(start, stop)
        if mask is not None and not mask.any():
            return masked_digest(None, mask) == recorded
        digest = block_digest(read_raw(self.array, start, stop, job.axis_index, job.axis, job.where))
        return (digest if mask is None else masked_digest(digest, mask)) == recorded

    def compute(self, block: Block, read: BlockInput) -> BlockResult:
        """Segment a block's input (its slab (N, H, W) uint8) into its `BlockResult`; with a mask, only the tiles
        that can change a mask voxel run and every voxel outside it is 0."""
        index, start, stop = block
        job, timings, counts, slab, mask = self.job, self.timings, {}, read.slab, read.mask
        shape = slab.shape if slab is not None else mask.shape
        density = np.zeros(shape, np.float32) if job.density else None
        if slab is None:  # no mask voxel: nothing runs
            labels, tiles = np.zeros(shape, job.slab.label_type), 0
            probs = np.zeros((job.classes,) + shape, np.uint8) if job.slab.probabilities else None
        else:
            active = None if mask is None else active_tiles(mask, job.slab.plan, job.slab.blend == "gaussian"
                                                            or job.density)
            labels, probs, tiles = segment_planes(self.backend, slab, job.slab, job.mode, start=start,
                                                  axis=job.axis_index, timings=timings, counts=counts,
                                                  density_out=density, active=active)
            if read.fused:  # --planes: the mean of this run's and the passes' probabilities, merged
                labels, probs = fuse([probs] + read.fused, self.backend.spec.threshold, job.slab.label_type)
            if mask is not None:
                _zero_outside(mask, labels, probs, density)
        bins = job.classes + 1  # background and each class
        label_counts = np.bincount(labels.ravel(), minlength=bins)[:bins]
        summary = BlockSummary(index, stop - start, tiles, label_counts.tolist(), counts)
        axis = job.axis_index
        return BlockResult(block, np.moveaxis(labels, 0, axis),
                           None if probs is None else np.moveaxis(probs, 1, axis + 1),
                           None if density is None else np.moveaxis(density, 0, axis), summary, read.digest)

    def write(self, result: BlockResult) -> None:
        """Hand a computed block to the sink (an OutputStore, an array in memory)."""
        t0 = time.perf_counter()
        self.sink(result)
        self.timings["write"] += time.perf_counter() - t0


def _zero_outside(mask: np.ndarray, labels: np.ndarray, probs: np.ndarray | None, density: np.ndarray | None) -> None:
    """0 outside `mask` (N, H, W) in labels (N, H, W), probabilities (K, N, H, W) and density (N, H, W)."""
    outside = ~mask
    labels[outside] = 0
    if probs is not None:
        probs[:, outside] = 0
    if density is not None:
        density[outside] = 0
