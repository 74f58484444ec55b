"""`RunPlan`: everything one segment run derives from its request, its backend and its input before it computes.

The tile plan, the blocks, the output layout, the block job every scheduler runs, and the run's configuration,
whose hash keys the done-markers (a `--resume` continues only a run of the same configuration).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.constants import label_dtype
from emseg_rt.errors import EmsegError
from emseg_rt.io.volume import RegionView
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.block import Block, BlockJob, plan_blocks, region_of
from emseg_rt.runtime.mask import VoxelMask
from emseg_rt.runtime.normalise import Normalisation
from emseg_rt.runtime.options import AXES, SegmentOptions
from emseg_rt.runtime.claim import RUN_DIR
from emseg_rt.runtime.instances import instance_config
from emseg_rt.runtime.output import UNRECORDED, OutputLayout, OutputStore, config_hash
from emseg_rt.runtime.planes import PlanePass, check_isotropic, pass_chunking, plane_name
from emseg_rt.runtime.prompts import NMS_KERNEL
from emseg_rt.runtime.report import SegmentReport
from emseg_rt.runtime.request import ModelChoices
from emseg_rt.runtime.slab import SlabSettings
from emseg_rt.runtime.target import OutputTarget
from emseg_rt.tiling import plan_tiles

# The chunks inside a shard: one plane along the slicing axis and 256 × 256 in it. A viewer browsing planes
# (napari, neuroglancer's cross-sections) reads exactly the plane it shows, in 64 KiB (uint8) pieces that a
# screen tile maps onto; neuroglancer and ome-zarr-py read chunks of a sharded zarr v3 array directly.
SHARD_INNER_PLANE = 1
SHARD_INNER_TILE = 256


class RunPlan:
    """The tile plan, blocks, layout, block job and configuration of one run of `engine` over `volume`."""

    def __init__(self, engine: Backend, volume: Any, options: SegmentOptions, norm: Normalisation, where: str,
                 choices: ModelChoices, target: OutputTarget | None = None, threads: int | None = None,
                 mask: VoxelMask | None = None) -> None:
        """threads: the CPU threads each block is computed with, where the numbers depend on it
        (`backends.base.cpu_threads`; None on a GPU); part of the run's configuration. mask: segment only
        inside it (`runtime.mask`)."""
        spec = engine.spec
        self.engine, self.options, self.norm, self.choices = engine, options, norm, choices
        self.threads = threads
        self.planar = bool(volume.planar)
        self.roi = volume.array.box if isinstance(volume.array, RegionView) else None  # --roi
        if self.planar and options.axis != "z":
            raise EmsegError(f"--axis {options.axis}: a 2D image is segmented as one plane (z); drop --axis")
        self.axis_index = options.axis_index(volume.axes)
        self.halo = options.halo_for(spec.tile)
        self.shape = tuple(int(s) for s in volume.shape)
        self.depth = self.shape[self.axis_index]
        self.plane_shape = tuple(s for i, s in enumerate(self.shape) if i != self.axis_index)
        self.tile_plan = plan_tiles(self.plane_shape, spec.tile, self.halo)  # EmsegError for a bad halo
        self.blocks: list[Block] = plan_blocks(self.depth, options.block)
        self.label_type = label_dtype(len(spec.classes))
        if options.extra_planes and self.planar:
            raise EmsegError("--planes: a 2D image has only its xy plane; drop --planes")
        if options.extra_planes:  # --planes: the passes' planes must show square pixels
            check_isotropic(tuple(volume.voxel_size), options.planes, tuple(volume.units), where)
        self.volume = volume
        settings = SlabSettings(self.tile_plan, batch=options.batch, blend=options.blend, label_type=self.label_type,
                                probabilities=(options.probabilities and target is not None)
                                or bool(options.extra_planes), tta=options.tta)
        self.job = BlockJob(axis_index=self.axis_index, axis=options.axis, norm=norm, where=where, slab=settings,
                            mode=choices.mode, classes=len(spec.classes),
                            density=choices.seeds is not None and target is not None, mask=mask)
        if target is not None:
            self.layout = _layout(volume, options, self.shape, self.axis_index, tuple(spec.classes), target,
                                  len(self.blocks), density=choices.seeds is not None)
            self.config = run_config(self, volume.dtype)
            self.hash = config_hash(self.config)

    @property
    def plane_voxels(self) -> int:
        return int(np.prod(self.plane_shape))

    def region(self, start: int, stop: int) -> tuple[slice, ...]:
        return region_of(start, stop, self.axis_index)

    def report(self, source: str, output: Path, model: str, device: str, choice: str) -> SegmentReport:
        spec, options = self.engine.spec, self.options
        return SegmentReport(
            input=source, output=str(output), label_path=str(output),
            model=model, backend=self.engine.name, device=device, precision=spec.precision, shape=self.shape,
            dtype=self.config["dtype"], axis=options.axis, tile=spec.tile, halo=self.halo, blend=options.blend,
            batch=options.batch, block=options.block, classes=tuple(spec.classes), config_hash=self.hash,
            backend_identity=spec.identity, backend_choice=choice, blocks_total=len(self.blocks),
            normalisation=self.norm.to_dict())

    def plane_passes(self, target: Path) -> tuple[PlanePass, ...]:
        """The extra passes of `--planes` (none without it), their state under the output `target`."""
        group = target / RUN_DIR / f"planes-{self.hash[:16]}"
        return tuple(PlanePass(group, axis, "zyx".index(axis), self.options.block, self.layout.zarr_format)
                     for axis in self.options.extra_planes)

    def pass_plan(self, plane_pass: PlanePass) -> RunPlan:
        """The plan of one extra pass: this run's choices with blocks along the pass's axis, computing
        probabilities (no output of its own: `PlanePass` holds what it writes)."""
        options = replace(self.options, axis=plane_pass.axis, planes=(), probabilities=True)
        plan = RunPlan(self.engine, self.volume, options, self.norm, self.job.where, self.choices, None, self.threads,
                       self.job.mask)
        plan.job = replace(plan.job, slab=replace(plan.job.slab, probabilities=True))
        chunks, shards = pass_chunking(self.shape, len(self.engine.spec.classes), plan.axis_index, self.options.block,
                                       self.axis_index, self.options.block)
        plane_pass.create((len(self.engine.spec.classes),) + self.shape, chunks, shards, len(plan.blocks))
        return plan

    def open_store(self, target: Path, resumable: bool, fingerprint: str) -> OutputStore:
        """The output at `target`: created, or reopened for `--resume` (refused when its run differs)."""
        self.job = replace(self.job, fuse=self.plane_passes(target))
        store = OutputStore(target, self.layout, self.hash)
        spec = self.engine.spec
        root_attrs = {
            "status": "incomplete", "config_hash": self.hash, "backend": self.engine.name,
            "precision": spec.precision, "tile": spec.tile, "halo": self.halo, "blend": self.options.blend,
            "axis": self.options.axis, "classes": list(spec.classes), "normalisation": self.norm.to_dict(),
            "input": {"shape": list(self.shape), "dtype": self.config["dtype"]}}
        if resumable:
            store.reopen(self.config, fingerprint, root_attrs)
        else:
            store.create(self.config, root_attrs, fingerprint)
        return store

    def check_memory(self, itemsize: int, available: int | None) -> None:
        """Refuse --batch / --block whose buffers alone would not fit in `available` bytes (None: unknown)."""
        if available is None:
            return
        options, classes = self.options, len(self.layout.classes)
        plane = self.plane_voxels
        block = min(options.block, self.depth)
        per_block = block * plane * (itemsize + 1 + self.layout.label_dtype.itemsize
                                     + (classes if options.probabilities else 0))
        tiles_per_block = block * self.tile_plan.num_tiles
        per_batch = options.batch * self.tile_plan.tile ** 2 * (1 + 4 * (classes + 1))
        need = per_block * (2 * options.prefetch + 2) + tiles_per_block * self.tile_plan.tile ** 2 + per_batch
        if need > available:
            raise EmsegError(f"--batch {options.batch} / --block {options.block} need about {need / 2**30:.1f} GiB "
                             f"of buffers, more than the {available / 2**30:.1f} GiB available; use smaller values")


def run_config(run: RunPlan, dtype: np.dtype) -> dict[str, Any]:
    """The run's configuration as recorded in the output; its hash keys the done-markers. Optional features
    add their keys only when used, so runs without them keep their identity."""
    spec, options, choices = run.engine.spec, run.options, run.choices
    config: dict[str, Any] = {
        # format 2: last tile flush with the edge; 3: label image root, levels; 4: block markers hold input digests
        "format": 4, "backend": spec.identity,
        "tile": spec.tile, "halo": run.halo, "blend": options.blend,
        "axis": options.axis, "batch": options.batch, "block": options.block,
        "probabilities": options.probabilities, "shape": list(run.shape), "dtype": dtype.name,
        "normalisation": run.norm.to_dict(), "classes": list(spec.classes), "label_name": options.label_name,
        "label_dtype": run.layout.label_dtype.name, "version": run.layout.version,
        "levels": [[lvl.path, list(lvl.shape), list(lvl.scale), list(lvl.translation)] for lvl in run.layout.levels],
    }
    if run.threads not in (None, UNRECORDED["threads"]):  # CPU runs on more than one thread only
        config["threads"] = run.threads
    mode = choices.mode
    if mode.max_points is not None:  # prompted runs only
        config["prompts"] = {"points": mode.points.digest if mode.points is not None else None,
                             "max_points": mode.max_points}
        if mode.auto_threshold is not None:  # --prompts auto only
            config["prompts"]["auto"] = {"peak_threshold": mode.auto_threshold, "nms_kernel": NMS_KERNEL,
                                         "density_blend": "gaussian"}
    if run.roi is not None:  # --roi runs only
        config["roi"] = [list(r) for r in run.roi]
    if run.job.mask is not None:  # --mask runs only
        config["mask"] = run.job.mask.config()
    if options.extra_planes:  # --planes with more than one orientation only
        config["planes"] = {"planes": [plane_name(a) for a in options.planes], "fusion": "mean probability, uint8"}
    if options.tta:
        config["tta"] = "rot90x4"
    if run.planar:  # a 2D image: its label image is 2D
        config["planar"] = True
    if run.layout.shards is not None:  # sharded outputs (zarr v3, the default): a resume never mixes layouts
        config["shards"] = {"shard": list(run.layout.shards), "chunks": list(run.layout.chunks)}
    if choices.instances:  # runs with --instances only: classes, and the density watershed or the class rules
        config["instances"] = instance_config(choices.instances, choices.seeds)
    return config


def _layout(volume: Any, options: SegmentOptions, shape: tuple[int, ...], axis_index: int,
            classes: tuple[str, ...], target: OutputTarget, blocks: int, density: bool = False) -> OutputLayout:
    """The label image's layout: the input's axes, scale, translation and units (none invented), `target`'s
    levels, zarr format and OME-Zarr version; chunks (or shards) aligned to write blocks."""
    axes = "".join(volume.axes) if len(volume.axes) == 3 and set(volume.axes) <= set(AXES) else "zyx"
    units = tuple(volume.units) if len(volume.units) == 3 else (None, None, None)
    sharded = options.shards and target.version != "0.4"  # zarr v2 (OME-Zarr 0.4) has no shards
    chunks, shards = output_chunking(shape, axis_index, options.block, sharded)
    return OutputLayout(shape=shape, chunks=chunks, classes=classes, label_dtype=label_dtype(len(classes)),
                        label_name=options.label_name, voxel_size=target.levels[0].scale, units=units, axes=axes,
                        probabilities=options.probabilities, levels=target.levels, blocks=blocks,
                        version=target.version, nested=target.nested, density=density,
                        planar=bool(volume.planar), shards=shards)


def output_chunking(shape: tuple[int, ...], axis_index: int, block: int,
                    sharded: bool) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(chunks, shards) of s0 (Z, Y, X) for write blocks of `block` planes along `axis_index`.

    Sharded: one shard per write block, `block` planes deep and spanning the whole plane (rounded up to whole
    chunks; zarr clips it at the array's edge), so the one writer of a block writes its shard whole, in one
    file write; chunks inside it (1, 256, 256) (`SHARD_INNER_TILE`, clipped to the shape). Unsharded: chunks
    `block` planes deep and at most 1024 × 1024 in the plane, one file each."""
    if not sharded:
        return tuple(min(block, s) if i == axis_index else min(s, 1024) for i, s in enumerate(shape)), None
    chunks = tuple(SHARD_INNER_PLANE if i == axis_index else min(s, SHARD_INNER_TILE) for i, s in enumerate(shape))
    shards = tuple(min(block, s) if i == axis_index else -(-s // c) * c for i, (s, c) in enumerate(zip(shape, chunks)))
    return chunks, shards
