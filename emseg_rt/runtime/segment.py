"""`segment_volume`: stream a 3D volume through a backend into an OME-Zarr label image, resumably.

The jobs live in their own modules: `options` (what the user asked, checked once), `output` (the
output directory, its arrays and done-markers), `slab` (tiling, backend calls, stitching), `stream`
(reader / compute / writer threads) and `report` (totals, timings, progress). This module wires them.

A block is `block` planes along the slicing axis; output chunks are aligned to blocks, so each block is
written as whole chunks by one writer. Batches never span blocks and the last batch of a block is padded
to full size, so a block's numbers do not depend on where a run started: a resumed run is byte-identical
to an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg_rt.errors import EmsegError
from emseg_rt.io import is_array, is_url, open_volume, source_name
from emseg_rt.io.ome_zarr import label_dtype
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.claim import OutputClaim, claim_output
from emseg_rt.runtime.distributed import BackendRecipe, BlockTask, check_address, run_blocks_on_cluster
from emseg_rt.runtime.fingerprint import check_no_missing_chunks, input_fingerprint
from emseg_rt.runtime.instances import (
    WatershedSeeds,
    instance_label_name,
    instance_stages,
    parse_instance_classes,
)
from emseg_rt.runtime.normalise import (
    Normalisation,
    check_dtype,
    check_finite,
    dataset_normalisation,
    parse_window,
    to_uint8,
)
from emseg_rt.runtime.options import AXES, DEFAULT_LABEL_NAME, SegmentOptions
from emseg_rt.runtime.output import OutputLayout, OutputStore, config_hash
from emseg_rt.runtime.prompts import (
    NMS_KERNEL,
    PEAK_THRESHOLD,
    PointSet,
    load_points,
    plane_of,
    points_per_window,
)
from emseg_rt.runtime.report import ProgressLog, SegmentReport, progress_bar
from emseg_rt.runtime.slab import PromptMode, segment_planes
from emseg_rt.runtime.stream import run_stream
from emseg_rt.runtime.target import OutputTarget, plan_target
from emseg_rt.runtime.tiling import plan_tiles

Block = tuple[int, int, int]  # (index, first plane, end plane)


def segment_volume(
    input: Any,
    output: str | Path | None = None,
    *,
    model: str | None = None,
    checkpoints: Sequence[str | Path] = (),
    backend: str | Backend = "auto",
    device: str = "auto",
    precision: str = "fp32",
    batch: int = 4,
    halo: int | None = None,
    blend: str = "center",
    axis: str = "z",
    block: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    probabilities: bool = False,
    key: str | None = None,
    level: int | None = None,
    label_name: str = DEFAULT_LABEL_NAME,
    levels: int | None = None,
    into_input: bool = False,
    window: str | None = None,
    progress: bool = False,
    report: str | Path | None = None,
    prefetch: int = 2,
    say: Callable[[str], None] | None = None,
    allow_missing_chunks: bool = False,
    dask: str | None = None,
    prompts: str | Path | PointSet | None = None,
    tta: bool = False,
    instances: str | Sequence[str] | None = None,
    peak_threshold: float | None = None,
) -> SegmentReport:
    """Segment a 3D volume plane by plane into an OME-Zarr label image and return a SegmentReport.

    input:   a path or URL that `io.open_volume` reads (zarr / OME-Zarr, N5, HDF5, TIFF; `key` picks a dataset,
             `level` an OME level), or a numpy / dask / zarr array (Z, Y, X). Non-uint8 intensities are mapped
             to uint8 with dataset-level robust percentiles, or `window` ("LOW,HIGH", "1%,99%").
    output:  new directory that becomes the label image; refuses an existing one unless `resume` (finish what
             is missing) or `overwrite`. None with `into_input`: the labels go to INPUT/labels/<label_name>.
    model:   registry name or model package directory; None → the embedded default model.
    checkpoints: weights loaded in order into a registry model (emseg_rt.models.checkpoint formats).
    backend: 'auto' | 'torch' | 'onnxruntime' | 'tensorrt', or an already loaded Backend.
    device:  'auto' (a CUDA GPU when torch sees one, else the CPU; `runtime.devices`), 'cpu', 'cuda[:N]'.
    precision: 'fp32', 'fp16' or 'bf16' (bf16 on the torch backend only).
    levels:  pyramid levels s0..s(levels-1), each 2× smaller in y and x (default: from the plane size); with
             `into_input` the input image's own levels.
    say:     receives one-line notes (which backend `auto` chose and why, progress when not on a terminal).
    allow_missing_chunks: read never-written input chunks as the array's fill value instead of refusing.
    dask:    'local:N' or a scheduler address: one task per block on a Dask cluster (`runtime.distributed`),
             the same computation and output as without it.
    prompts: point prompts for a window-prompted model (prompt-das-*): a CSV z,y,x[,label], a zarr array
             (N, 3|4) or a `PointSet`, in voxel coordinates of the input (`runtime.prompts`); None: none;
             "auto": per slab, a prompt-free pass gives the blended density, its peaks (`peak_threshold`,
             default 125/255 as the Prompt-DAS code; NMS kernel 5) are the positive points of a second pass
             (`slab.segment_slab_auto`).
    tta:     rotation test-time augmentation (4 quarter turns per tile, logits averaged).
    instances: class names (or "a,b"): also write each class's instances as a uint32 label image
             `<class>_instances` beside the semantic one (`runtime.instances`), IDs unique across blocks and
             resumed runs: connected components, or for a model with a density output (prompt-das-*) a
             marker watershed seeded by the density's peaks (`peak_threshold`, default 125/255; NMS 5).
    Tiling, batching and output options: see `SegmentOptions`. What `overwrite`, `resume` and the output
    lock guarantee: `runtime.claim`. In-memory labels without writing: `segment_labels`.
    """
    t_start = time.perf_counter()
    options = SegmentOptions(batch=batch, halo=halo, blend=blend, axis=axis, block=block, resume=resume,
                             overwrite=overwrite, probabilities=probabilities, label_name=label_name,
                             prefetch=prefetch, levels=levels, into_input=into_input, tta=tta).validate()
    auto = isinstance(prompts, str) and prompts == "auto"
    points = None if prompts is None or auto else load_points(prompts)
    auto_threshold = _peak_threshold(auto, peak_threshold, bool(instances))
    source = input if is_array(input) or is_url(input) else Path(input)
    if device != "auto":  # a GPU that is not there: refused before anything is read or claimed
        from emseg_rt.runtime.devices import resolve_device

        resolve_device(device)
    _check_dask(dask, backend, source)
    volume, where = open_input(source, key, level)
    check_no_missing_chunks(volume.array, where, allow_missing_chunks)
    norm = dataset_normalisation(volume.array, where, window=parse_window(window) if window else None)
    target = plan_target(source, volume, output, options, level)
    claim = claim_output(target.output, source if isinstance(source, Path) else None, resume=options.resume,
                         overwrite=options.overwrite, into_input=options.into_input, lock_path=target.lock)
    try:
        rep = _segment_claimed(claim, source, volume, options, norm, where, target, model=model,
                               checkpoints=checkpoints, backend=backend, device=device, precision=precision,
                               progress=progress, say=say, t_start=t_start, dask=dask, key=key, level=level,
                               points=points, instances=instances, auto_threshold=auto_threshold,
                               peak_threshold=peak_threshold)
        if rep.complete:
            claim.commit()  # --overwrite: the new output replaces the old one only now, in one rename
            target.register(tuple(instance_label_name(c) for c in rep.instances))
    finally:
        claim.release()
    rep.wall_seconds = time.perf_counter() - t_start
    if report is not None:
        rep.write_json(report)
    return rep


def _peak_threshold(auto: bool, peak_threshold: float | None, instances: bool = False) -> float | None:
    """The density threshold of `--prompts auto` (None when not auto); --peak-threshold without --prompts auto
    or --instances is refused (with --instances alone it is checked once the model is known)."""
    if not auto:
        if peak_threshold is not None and not instances:
            raise EmsegError("--peak-threshold is for --prompts auto and for --instances on a density model")
        if peak_threshold is not None and not np.isfinite(float(peak_threshold)):
            raise EmsegError(f"--peak-threshold {peak_threshold} must be a finite number")
        return None
    threshold = PEAK_THRESHOLD if peak_threshold is None else float(peak_threshold)
    if not np.isfinite(threshold):
        raise EmsegError(f"--peak-threshold {peak_threshold} must be a finite number")
    return threshold


def open_input(source: Any, key: str | None, level: int | None) -> tuple[Any, str]:
    """The input as a checked 3D Volume (singleton t/c squeezed) and how messages name it."""
    volume = open_volume(source, key=key, level=level, spatial=True)
    where = f"input {source_name(source)}" + (f" (key {key})" if key else "") + (
        f" (level {volume.dataset_path})" if volume.is_ome else "")
    _check_volume(volume, where)
    return volume, where


def _check_dask(dask: str | None, backend: Any, source: Any) -> None:
    if dask is None:
        return
    check_address(dask)
    if not isinstance(backend, str):
        raise EmsegError("--dask: workers load the model themselves; pass a backend name, not a loaded backend")
    if is_array(source):
        raise EmsegError("--dask: workers read the input themselves; pass a path or URL, not an in-memory array")


def _segment_claimed(claim: OutputClaim, source: Any, volume: Any, options: SegmentOptions, norm: Normalisation,
                     where: str, target: OutputTarget, *,
                     model: str | None, checkpoints: Sequence[str | Path], backend: str | Backend, device: str,
                     precision: str, progress: bool, say: Callable[[str], None] | None,
                     t_start: float, dask: str | None = None, key: str | None = None,
                     level: int | None = None, points: PointSet | None = None,
                     instances: str | Sequence[str] | None = None,
                     auto_threshold: float | None = None, peak_threshold: float | None = None) -> SegmentReport:
    """Load the backend, open or create the output at `claim.target`, compute every pending block (here,
    or one task per block on a Dask cluster)."""
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        (say or (lambda m: None))(message)

    if isinstance(backend, str):
        from emseg_rt.runtime.devices import resolve_device
        from emseg_rt.runtime.loader import load_backend

        device = resolve_device(device, note)
        engine, owns_backend = load_backend(model, backend, device, precision, checkpoints, say=note), True
    else:
        engine, owns_backend = backend, False
    try:
        max_points = _check_backend(engine, options, points, auto=auto_threshold is not None)
        instance_classes = parse_instance_classes(instances, tuple(engine.spec.classes))
        seeds = _watershed_seeds(engine, instance_classes, auto_threshold, peak_threshold)
        run = _RunPlan(engine, volume, options, norm, target, points, max_points, instance_classes, auto_threshold,
                       seeds)
        _note_points_outside(points, run.shape, say or (lambda m: None))
        _check_memory(run, volume)
        rep = run.report(source_name(source), claim.output, model or "default", device, " ".join(notes))
        store = run.open_store(claim.target, claim.resumable, input_fingerprint(volume.array, volume.path))
        if dask is None:
            _stream(engine, volume, run, store, rep, where, progress, say)
    finally:
        if owns_backend:
            engine.close()
    if dask is not None:
        recipe = BackendRecipe(model, str(backend), device, precision, tuple(str(c) for c in checkpoints))
        _stream_on_cluster(dask, recipe, source, key, level, run, store, rep, where, say or (lambda m: None))
    rep.complete = store.mark_complete_if_done(len(run.blocks), lambda: _instance_stage(run, store, rep, target))
    rep.finish(run.timings, run.loop_seconds, time.perf_counter() - t_start)
    rep.setup_seconds = run.setup_done - t_start
    return rep


def region_of(start: int, stop: int, axis_index: int) -> tuple[slice, ...]:
    """The (Z, Y, X) index of planes start..stop-1 along `axis_index`."""
    return tuple(slice(start, stop) if i == axis_index else slice(None) for i in range(3))


def read_slab(array: Any, start: int, stop: int, axis_index: int, axis: str, norm: Normalisation,
              where: str) -> np.ndarray:
    """Planes start..stop-1 of a (Z, Y, X) array as a (N, H, W) uint8 slab (normalised, NaN/Inf refused)."""
    try:
        raw = np.asarray(array[region_of(start, stop, axis_index)])
    except Exception as exc:  # codec / store errors from a damaged chunk
        raise EmsegError(f"{where}: cannot read {axis} {start}..{stop - 1} (corrupt or missing chunk?): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    check_finite(raw, f"{where} ({axis} {start}..{stop - 1})")
    return to_uint8(np.moveaxis(raw, axis_index, 0), norm)


def _check_volume(volume: Any, source: str) -> None:
    if volume.ndim != 3:
        raise EmsegError(f"{source} is {volume.ndim}D with shape {volume.shape}; segment takes 3D (z, y, x) volumes "
                         "(pick a 3D array with --key / --level)")
    if 0 in volume.shape:
        raise EmsegError(f"{source} has an empty axis (shape {volume.shape}); nothing to segment")
    check_dtype(volume.dtype, source)


def _available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(run: "_RunPlan", volume: Any) -> None:
    """Refuse --batch / --block whose buffers alone would not fit in memory (before allocating them)."""
    available = _available_memory_bytes()
    if available is None:
        return
    options, classes = run.options, len(run.layout.classes)
    plane = int(np.prod(run.plane_shape))
    block = min(options.block, run.depth)
    per_block = block * plane * (volume.dtype.itemsize + 1 + run.layout.label_dtype.itemsize
                                         + (classes if options.probabilities else 0))
    tiles_per_block = block * run.tile_plan.num_tiles
    per_batch = options.batch * run.tile_plan.tile ** 2 * (1 + 4 * (classes + 1))
    need = per_block * (2 * options.prefetch + 2) + tiles_per_block * run.tile_plan.tile ** 2 + per_batch
    if need > available:
        raise EmsegError(f"--batch {options.batch} / --block {options.block} need about {need / 2**30:.1f} GiB of "
                         f"buffers, more than the {available / 2**30:.1f} GiB available; use smaller values")


def _check_backend(engine: Backend, options: SegmentOptions, points: PointSet | None = None,
                   auto: bool = False) -> int | None:
    """Refuse what this backend cannot run; return P, the points per tile of a window-prompted model (None
    for a prompt-free one). `auto` (--prompts auto) needs a window-prompted model with a density output."""
    max_points = None
    if auto and (not engine.spec.prompts or "density" not in getattr(engine.spec, "extra_outputs", ())):
        raise EmsegError("--prompts auto needs a point-prompted model with a density output (prompt-das-*)")
    if engine.spec.prompts:
        max_points = points_per_window(engine)  # None: vanilla-sam's per-class prompts, or an unknown layout
        if max_points is None:
            raise EmsegError(f"the model needs per-tile prompts ({', '.join(engine.spec.prompts)}); `segment` runs "
                             "prompt-free models (scsam-*, sam-star-*, mae-star-*, surgicalsam-*) and "
                             "window-prompted ones (prompt-das-*)")
    elif points is not None:
        raise EmsegError("--prompts: this model takes no prompts (point prompts are for prompt-das-*)")
    batch_max = engine.spec.details.get("batch_max")
    if batch_max and options.batch > batch_max:
        raise EmsegError(f"--batch {options.batch} exceeds the model package's largest batch ({batch_max}); "
                         f"pass --batch {batch_max} or export with a larger --batch-max")
    return max_points


def _watershed_seeds(engine: Backend, instances: tuple[str, ...], auto_threshold: float | None,
                     peak_threshold: float | None) -> WatershedSeeds | None:
    """The instance stage's watershed settings: for --instances on a model with a density output, its peaks
    (the auto threshold, else --peak-threshold, else PEAK_THRESHOLD) seed it; None: connected components."""
    has_density = "density" in getattr(engine.spec, "extra_outputs", ())
    if not instances or not has_density:
        if peak_threshold is not None and auto_threshold is None:
            raise EmsegError("--peak-threshold with --instances needs a model with a density output (prompt-das-*)")
        return None
    threshold = auto_threshold if auto_threshold is not None else (
        PEAK_THRESHOLD if peak_threshold is None else float(peak_threshold))
    return WatershedSeeds(threshold, NMS_KERNEL)


def _note_points_outside(points: PointSet | None, shape: tuple[int, ...], note: Callable[[str], None]) -> None:
    """One note when some prompts lie outside the volume (they prompt nothing)."""
    if points is None or not len(points):
        return
    planes = np.stack([plane_of(points, i) for i in range(3)], axis=1)
    outside = int((~((planes >= 0) & (planes < np.array(shape))).all(axis=1)).sum())
    if outside:
        note(f"prompts: {outside} of {len(points)} points lie outside the volume {tuple(shape)} (z, y, x) and "
             "prompt nothing")


class _RunPlan:
    """Everything derived from the backend, the volume and the options: tile plan, blocks, layout, config."""

    def __init__(self, engine: Backend, volume: Any, options: SegmentOptions, norm: Normalisation,
                 target: OutputTarget, points: PointSet | None = None, max_points: int | None = None,
                 instances: tuple[str, ...] = (), auto_threshold: float | None = None,
                 seeds: WatershedSeeds | None = None) -> None:
        spec = engine.spec
        self.options = options
        self.instances = instances
        self.seeds = seeds
        self.points, self.max_points = points, max_points
        self.auto_threshold = auto_threshold
        self.prompt_counts: dict[str, int] = {}
        self.norm = norm
        self.axis_index = options.axis_index(volume.axes)
        self.halo = options.halo_for(spec.tile)
        self.shape = tuple(int(s) for s in volume.shape)
        self.depth = self.shape[self.axis_index]
        self.plane_shape = tuple(s for i, s in enumerate(self.shape) if i != self.axis_index)
        self.tile_plan = plan_tiles(self.plane_shape, spec.tile, self.halo)  # EmsegError for a bad halo
        self.blocks: list[Block] = [(i, b, min(b + options.block, self.depth))
                                    for i, b in enumerate(range(0, self.depth, options.block))]
        self.layout = _layout(volume, options, self.shape, self.axis_index, tuple(spec.classes), target,
                              len(self.blocks), density=seeds is not None)
        self.config = {
            "format": 3, "backend": spec.identity,  # 2: last tile flush with the edge; 3: label image root, levels
            "tile": spec.tile, "halo": self.halo, "blend": options.blend,
            "axis": options.axis, "batch": options.batch, "block": options.block,
            "probabilities": options.probabilities, "shape": list(self.shape), "dtype": volume.dtype.name,
            "normalisation": norm.to_dict(), "classes": list(spec.classes), "label_name": options.label_name,
            "label_dtype": self.layout.label_dtype.name, "version": self.layout.version,
            "levels": [[lvl.path, list(lvl.shape), list(lvl.scale), list(lvl.translation)]
                       for lvl in self.layout.levels],
        }
        if max_points is not None:  # prompted runs only, so other runs keep their identity
            self.config["prompts"] = {"points": points.digest if points is not None else None,
                                      "max_points": max_points}
            if auto_threshold is not None:  # --prompts auto only, so other prompted runs keep their identity
                self.config["prompts"]["auto"] = {"peak_threshold": auto_threshold, "nms_kernel": NMS_KERNEL,
                                                  "density_blend": "gaussian"}
        if options.tta:
            self.config["tta"] = "rot90x4"
        if instances:  # runs with --instances only, so other runs keep their identity
            self.config["instances"] = {"classes": list(instances), "method": "connected components, face"}
            if seeds is not None:  # density models: their watershed and its density store
                self.config["instances"].update(method="marker watershed", peak_threshold=seeds.threshold,
                                                nms_kernel=seeds.kernel, density_blend="gaussian")
        self.hash = config_hash(self.config)
        self.engine = engine
        self.timings = {"read": 0.0, "write": 0.0, "compute": 0.0, "stitch": 0.0}
        self.loop_seconds = 0.0
        self.setup_done = 0.0

    def report(self, source: str, output: Path, model: str, device: str, choice: str) -> SegmentReport:
        spec, options = self.engine.spec, self.options
        return SegmentReport(
            input=source, output=str(output), label_path=str(output),
            model=model, backend=self.engine.name, device=device, precision=spec.precision, shape=self.shape,
            dtype=self.config["dtype"], axis=options.axis, tile=spec.tile, halo=self.halo, blend=options.blend,
            batch=options.batch, block=options.block, classes=tuple(spec.classes), config_hash=self.hash,
            backend_identity=spec.identity, backend_choice=choice, blocks_total=len(self.blocks),
            normalisation=self.norm.to_dict())

    def open_store(self, target: Path, resumable: bool, fingerprint: str) -> OutputStore:
        store = OutputStore(target, self.layout, self.hash)
        spec = self.engine.spec
        root_attrs = {
            "status": "incomplete", "config_hash": self.hash, "backend": self.engine.name,
            "precision": spec.precision, "tile": spec.tile, "halo": self.halo, "blend": self.options.blend,
            "axis": self.options.axis, "classes": list(spec.classes), "normalisation": self.norm.to_dict(),
            "input": {"shape": list(self.shape), "dtype": self.config["dtype"]}}
        if resumable:
            store.reopen(fingerprint, root_attrs)
        else:
            store.create(self.config, root_attrs, fingerprint)
        return store

    def region(self, start: int, stop: int) -> tuple[slice, ...]:
        return region_of(start, stop, self.axis_index)


def _layout(volume: Any, options: SegmentOptions, shape: tuple[int, ...], axis_index: int,
            classes: tuple[str, ...], target: OutputTarget, blocks: int, density: bool = False) -> OutputLayout:
    """The label image's layout: the input's axes, scale, translation and units (none invented), `target`'s
    levels, zarr format and OME-Zarr version; chunks aligned to write blocks."""
    axes = "".join(volume.axes) if len(volume.axes) == 3 and set(volume.axes) <= set(AXES) else "zyx"
    units = tuple(volume.units) if len(volume.units) == 3 else (None, None, None)
    chunks = tuple(min(options.block, s) if i == axis_index else min(s, 1024) for i, s in enumerate(shape))
    return OutputLayout(shape=shape, chunks=chunks, classes=classes, label_dtype=label_dtype(len(classes)),
                        label_name=options.label_name, voxel_size=target.levels[0].scale, units=units, axes=axes,
                        probabilities=options.probabilities, levels=target.levels, blocks=blocks,
                        version=target.version, nested=target.nested, density=density)


def _instance_stage(run: _RunPlan, store: OutputStore, rep: SegmentReport, target: OutputTarget) -> None:
    """Every requested class's instance label image, after the semantic blocks and pyramid, before the root
    is marked complete (`runtime.instances`); resumes from its own markers."""
    if not run.instances:
        return
    import dataclasses

    t0 = time.perf_counter()
    layout = store.layout
    base = layout.label_spec()
    semantic = zarr_open_array(store.root / layout.levels[0].path)
    parent = store.root.parent if layout.nested else store.root
    stages = instance_stages(
        run.instances, layout.classes, semantic, store.root, parent,
        lambda name: dataclasses.replace(base, name=instance_label_name(name), classes=(),
                                         dtype=np.dtype(np.uint32), colors=()),
        run.blocks, run.axis_index, store.state, run.hash, "../../" if layout.nested else None,
        density=zarr_open_array(store.density_path) if run.seeds is not None else None, seeds=run.seeds)
    for stage in stages:
        rep.instances[stage.class_name] = stage.run()
    rep.instance_seconds = time.perf_counter() - t0


def zarr_open_array(path: Path) -> Any:
    import zarr

    return zarr.open_array(str(path), mode="r")


def _stream_on_cluster(address: str, recipe: "BackendRecipe", source: Path, key: str | None, level: int | None,
                       run: _RunPlan, store: OutputStore, rep: SegmentReport, where: str,
                       say: Callable[[str], None]) -> None:
    """Every block without a done-marker as one Dask task (`runtime.distributed`); fills `rep`'s counters."""
    done_before = store.done_blocks()
    pending = [b for b in run.blocks if b[0] not in done_before]
    rep.blocks_done_before = len(done_before)
    options, plane_voxels = run.options, int(np.prod(run.plane_shape))
    label_counts = np.zeros(len(run.layout.classes) + 1, dtype=np.int64)
    task = BlockTask(recipe=recipe, identity=run.engine.spec.identity, source=str(source), key=key, level=level,
                     axis_index=run.axis_index, axis=options.axis, norm=run.norm, where=where,
                     plane_shape=run.plane_shape, tile=run.tile_plan.tile, halo=run.halo, batch=options.batch,
                     blend=options.blend, target=str(store.root), layout=run.layout, run_hash=run.hash,
                     mode=PromptMode(run.max_points, run.points, run.auto_threshold), tta=options.tta)

    def on_block(result: dict[str, Any]) -> None:
        label_counts[:] += np.asarray(result["label_counts"], dtype=np.int64)
        rep.blocks_computed += 1
        rep.slices_computed += result["planes"]
        rep.voxels_computed += result["planes"] * plane_voxels
        rep.tiles_computed += result["tiles"]
        run.timings["compute"] += result["compute"]
        run.timings["stitch"] += result["stitch"]
        for name, count in result.get("prompt_counts", {}).items():
            run.prompt_counts[name] = run.prompt_counts.get(name, 0) + count

    run.setup_done = time.perf_counter()
    try:
        if pending:
            run_blocks_on_cluster(address, task, pending, say, on_block)
    finally:
        run.loop_seconds = time.perf_counter() - run.setup_done
    rep.auto_points = run.prompt_counts.get("auto_points", 0)
    classes = run.layout.classes
    rep.label_counts = {("background" if i == 0 else classes[i - 1]): int(c) for i, c in enumerate(label_counts)}


def _stream(engine: Backend, volume: Any, run: _RunPlan, store: OutputStore, rep: SegmentReport, where: str,
            progress: bool, say: Callable[[str], None] | None = None) -> None:
    """Read, segment and write every block without a done-marker; fills `rep`'s counters. Progress: a bar on
    a terminal, else a `ProgressLog` line every 10 s through `say` (batch jobs' logs)."""
    import sys

    done_before = store.done_blocks()
    pending = [b for b in run.blocks if b[0] not in done_before]
    rep.blocks_done_before = len(done_before)
    plane_voxels = int(np.prod(run.plane_shape))
    label_counts = np.zeros(len(run.layout.classes) + 1, dtype=np.int64)
    options, axis_index, timings = run.options, run.axis_index, run.timings
    bar = task = log = None
    if progress and sys.stderr.isatty():
        bar, task = progress_bar(run.depth, sum(b1 - b0 for _, b0, b1 in pending), plane_voxels)
    elif progress and say is not None and pending:
        log = ProgressLog(run.depth, run.depth - sum(b1 - b0 for _, b0, b1 in pending), say=say,
                          voxels_per_plane=plane_voxels)

    def read(item: Block) -> np.ndarray:
        _, b0, b1 = item
        t0 = time.perf_counter()
        slab = read_slab(volume.array, b0, b1, axis_index, options.axis, run.norm, where)
        timings["read"] += time.perf_counter() - t0
        return slab

    def compute(item: Block, slab: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        _, b0, _ = item
        density = np.empty(slab.shape, np.float32) if run.seeds is not None else None
        labels, probs, n_tiles = segment_planes(
            engine, slab, run.tile_plan, PromptMode(run.max_points, run.points, run.auto_threshold), start=b0,
            axis=axis_index, batch=options.batch, blend=options.blend, probabilities=options.probabilities,
            label_type=run.layout.label_dtype, timings=timings, tta=options.tta, counts=run.prompt_counts,
            density_out=density)
        rep.tiles_computed += n_tiles
        return labels, probs, density

    def write(item: Block, result: tuple[np.ndarray, np.ndarray | None, np.ndarray | None]) -> None:
        index, b0, b1 = item
        labels, probs, density = result
        t0 = time.perf_counter()
        store.write_block(index, run.region(b0, b1), np.moveaxis(labels, 0, axis_index),
                          None if probs is None else np.moveaxis(probs, 1, axis_index + 1),
                          None if density is None else np.moveaxis(density, 0, axis_index))
        timings["write"] += time.perf_counter() - t0
        label_counts[:] += np.bincount(labels.ravel(), minlength=len(label_counts))[: len(label_counts)]
        rep.blocks_computed += 1
        rep.slices_computed += b1 - b0
        rep.voxels_computed += (b1 - b0) * plane_voxels
        if bar is not None:
            bar.update(task, advance=b1 - b0)
        if log is not None:
            log.update(b1 - b0)

    run.setup_done = time.perf_counter()
    try:
        run_stream(pending, read, compute, write, options.prefetch)
    finally:
        run.loop_seconds = time.perf_counter() - run.setup_done
        if bar is not None:
            bar.stop()
    if log is not None:
        log.finish()
    rep.auto_points = run.prompt_counts.get("auto_points", 0)
    if run.auto_threshold is not None and pending and say is not None:
        say(f"prompts auto: {run.prompt_counts.get('auto_points', 0)} density peaks >= {run.auto_threshold:.3g} "
            f"in {sum(b1 - b0 for _, b0, b1 in pending)} planes became positive prompts")
    if run.prompt_counts.get("tiles_over") and say is not None:
        say(f"prompts: {run.prompt_counts['tiles_over']} tiles held more than {run.max_points} points; kept the "
            f"{run.max_points} nearest each tile's centre ({run.prompt_counts['points_dropped']} dropped)")
    classes = run.layout.classes
    rep.label_counts = {("background" if i == 0 else classes[i - 1]): int(c) for i, c in enumerate(label_counts)}
