"""`segment_volume`: stream a 3D volume through a backend into an OME-Zarr label image, resumably.

Data flow (three threads, bounded queues, so host memory depends on the plane size, never the volume size)::

    reader thread ──(slabs of `block` planes, uint8)──▶ compute (this thread) ──(label slabs)──▶ writer thread
    read + normalise                                    tile, batch, backend, stitch            write whole chunks,
                                                                                                 then a done-marker

Output layout (OME-Zarr 0.5, zarr v3)::

    OUT.zarr/zarr.json                   root group; attributes["emseg_rt"] = run configuration + status
    OUT.zarr/labels/<name>/s0            (Z, Y, X) uint8 labels (uint16 past 255 classes), image-label metadata
    OUT.zarr/probabilities/s0            (K, Z, Y, X) uint8 per-class probabilities (with probabilities=True)
    OUT.zarr/.emseg-rt/run.json          configuration and its hash
    OUT.zarr/.emseg-rt/done/<hash>/<i>   one empty marker per finished write block (whole output chunks)

A block is `block` planes along the slicing axis; output chunks are aligned to blocks, so each block is
written as whole chunks by one writer and a crash can at worst leave a block without its marker (redone on
resume). Batches never span blocks and the last batch of a block is padded to the full batch size, so a
block's numbers do not depend on where a run started: a resumed run is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emseg_rt.errors import EmsegError
from emseg_rt.io.ome_zarr import create_ome_image, create_ome_labels, label_dtype, open_volume
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.normalise import Normalisation, check_dtype, check_finite, dataset_normalisation, to_uint8
from emseg_rt.runtime.tiling import (
    TilePlan,
    blend_gaussian,
    extract_tiles,
    merge_classes,
    plan_tiles,
    probabilities_uint8,
    stitch_center,
)

RUN_DIR = ".emseg-rt"
AXES = ("z", "y", "x")
BLENDS = ("center", "gaussian")
_DONE = object()


@dataclass
class SegmentReport:
    """Totals and timings of one `segment_volume` call (seconds; the JSON of `--report`)."""

    input: str
    output: str
    label_path: str
    model: str
    backend: str
    device: str
    precision: str
    shape: tuple[int, ...]
    dtype: str
    axis: str
    tile: int
    halo: int
    blend: str
    batch: int
    block: int
    classes: tuple[str, ...]
    config_hash: str
    blocks_total: int = 0
    blocks_done_before: int = 0
    blocks_computed: int = 0
    slices_computed: int = 0
    tiles_computed: int = 0
    voxels_computed: int = 0
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    read_seconds: float = 0.0
    compute_seconds: float = 0.0
    stitch_seconds: float = 0.0
    write_seconds: float = 0.0
    backend_idle_fraction: float = 0.0
    slices_per_second: float = 0.0
    voxels_per_second: float = 0.0
    normalisation: dict = field(default_factory=dict)
    label_counts: dict = field(default_factory=dict)
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- helpers


def _axis_index(axis: str, axes: tuple[str, ...]) -> int:
    if axis not in AXES:
        raise EmsegError(f"--axis {axis!r} must be one of z, y, x")
    return axes.index(axis) if axis in axes else AXES.index(axis)


def _check_volume(volume: Any, source: str) -> None:
    if volume.ndim != 3:
        raise EmsegError(f"{source} is {volume.ndim}D with shape {volume.shape}; segment takes 3D (z, y, x) volumes "
                         "(pick a 3D array with --key / --level)")
    if 0 in volume.shape:
        raise EmsegError(f"{source} has an empty axis (shape {volume.shape}); nothing to segment")
    check_dtype(volume.dtype, source)


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _prepare_output(output: Path, source: Path, resume: bool, overwrite: bool) -> bool:
    """Check the output location; returns True when an existing run may be resumed."""
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
        raise EmsegError(f"output {output} is the input or inside it; choose another --out")
    if output.exists() and not output.is_dir():
        raise EmsegError(f"output {output} is a file, not a directory; choose another --out")
    parent = output.parent if output.parent != Path("") else Path(".")
    if not parent.exists():
        raise EmsegError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK | os.X_OK)):
        raise EmsegError(f"cannot write {output}: {parent if not output.exists() else output} is not writable")
    if output.exists():
        is_ours = (output / RUN_DIR).is_dir() or (output / "zarr.json").is_file() or not any(output.iterdir())
        if overwrite:
            if not is_ours:
                raise EmsegError(f"output {output} exists and is not an emseg-rt output; refusing to delete it")
            shutil.rmtree(output)
            return False
        if resume:
            return (output / RUN_DIR / "run.json").is_file()
        if any(output.iterdir()):
            raise EmsegError(f"output {output} already exists; pass --resume to finish it or --overwrite to replace it")
    return False


class _Stop(Exception):
    """Raised inside worker threads when another thread failed."""


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


# ---------------------------------------------------------------------------------------------- compute


def segment_slab(backend: Backend, slab: np.ndarray, plan: TilePlan, *, batch: int, blend: str,
                 probabilities: bool, label_type: np.dtype, timings: dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Segment a slab of planes.

    slab:    (N, H, W) uint8 planes.
    returns  labels (N, H, W) label_type, probabilities (K, N, H, W) uint8 or None, and the number of tiles run.
    Batches hold `batch` tiles in plane order; the last one is padded to `batch` with copies of its last tile.
    """
    n_planes = slab.shape[0]
    per_plane = plan.num_tiles
    tiles = np.concatenate([extract_tiles(plane, plan) for plane in slab])[:, None]  # (N·n, 1, T, T)
    want_logits = blend == "gaussian" or probabilities
    total = tiles.shape[0]
    labels_out = np.empty((n_planes,) + plan.plane_shape, dtype=label_type)
    probs_out = None
    tile_labels = np.empty((total, plan.tile, plan.tile), dtype=label_type) if not want_logits else None
    plane_logits: list[np.ndarray] = []
    finished_planes = 0
    compute_s = stitch_s = 0.0
    for start in range(0, total, batch):
        chunk = tiles[start:start + batch]
        real = chunk.shape[0]
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        t0 = time.perf_counter()
        out = backend.run(chunk, want_logits=want_logits)
        compute_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        if tile_labels is not None:
            tile_labels[start:start + real] = out["labels"][:real]
        else:
            plane_logits.append(out["logits"][:real])
            done_tiles = start + real
            # Stitch every plane whose tiles are all back, then drop its logits (bounded memory).
            while (finished_planes + 1) * per_plane <= done_tiles:
                stacked = np.concatenate(plane_logits) if len(plane_logits) > 1 else plane_logits[0]
                these, rest = stacked[:per_plane], stacked[per_plane:]
                plane_logits = [rest] if len(rest) else []
                logits = blend_gaussian(these, plan) if blend == "gaussian" else stitch_center(these, plan)
                labels_out[finished_planes] = merge_classes(logits, backend.spec.threshold, label_type)
                if probabilities:
                    if probs_out is None:
                        probs_out = np.empty((logits.shape[0], n_planes) + plan.plane_shape, dtype=np.uint8)
                    probs_out[:, finished_planes] = probabilities_uint8(logits)
                finished_planes += 1
        stitch_s += time.perf_counter() - t0
    if tile_labels is not None:
        t0 = time.perf_counter()
        for p in range(n_planes):
            labels_out[p] = stitch_center(tile_labels[p * per_plane:(p + 1) * per_plane], plan)
        stitch_s += time.perf_counter() - t0
    if timings is not None:
        timings["compute"] = timings.get("compute", 0.0) + compute_s
        timings["stitch"] = timings.get("stitch", 0.0) + stitch_s
    return labels_out, probs_out, total


# ---------------------------------------------------------------------------------------------- main entry


def segment_volume(
    input: str | Path,
    output: str | Path,
    *,
    model: str | None = None,
    checkpoints: Sequence[str | Path] = (),
    backend: str | Backend = "auto",
    device: str = "cpu",
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
    label_name: str = "organelles",
    progress: bool = False,
    report: str | Path | None = None,
    prefetch: int = 2,
) -> SegmentReport:
    """Segment a 3D volume plane by plane into `output` (an OME-Zarr container) and return a SegmentReport.

    input:   zarr v2/v3 array, group + `key`, or OME-Zarr image (`level`, default 0); (Z, Y, X) uint8, uint16
             or float (non-uint8 is mapped to uint8 with dataset-level robust percentiles).
    output:  new directory; refuses an existing one unless `resume` (finish what is missing) or `overwrite`.
    model:   registry name or model package directory; None → the embedded default model.
    checkpoints: weights loaded in order into a registry model (emseg_rt.models.checkpoint formats).
    backend: 'auto' | 'torch' | 'onnxruntime' | 'tensorrt', or an already loaded Backend.
    halo:    context pixels per tile side (default tile // 8); blend: 'center' crop or 'gaussian' weighting.
    axis:    the axis planes are perpendicular to; block: planes per write block (= output chunk depth).
    """
    t_start = time.perf_counter()
    if blend not in BLENDS:
        raise EmsegError(f"--blend {blend!r} must be one of {', '.join(BLENDS)}")
    if batch < 1:
        raise EmsegError(f"--batch {batch} must be >= 1")
    if block < 1:
        raise EmsegError(f"--block {block} must be >= 1")
    source = Path(input)
    output = Path(output)
    volume = open_volume(source, key=key, level=level)
    where = f"input {source}" + (f" (key {key})" if key else "") + (f" (level {volume.dataset_path})" if volume.is_ome else "")
    _check_volume(volume, where)
    axis_index = _axis_index(axis, volume.axes)
    norm = dataset_normalisation(volume.array, where)
    resumable = _prepare_output(output, source, resume, overwrite)

    if isinstance(backend, str):
        from emseg_rt.runtime.loader import load_backend

        engine = load_backend(model, backend, device, precision, checkpoints)
        owns_backend = True
    else:
        engine, owns_backend = backend, False
    try:
        return _run(engine, volume, source, output, where=where, model=model, device=device, precision=precision,
                    batch=batch, halo=halo, blend=blend, axis=axis, axis_index=axis_index, block=block,
                    resumable=resumable, probabilities=probabilities, label_name=label_name, norm=norm,
                    progress=progress, report=report, prefetch=prefetch, t_start=t_start)
    finally:
        if owns_backend:
            engine.close()


def _run(engine: Backend, volume: Any, source: Path, output: Path, *, where: str, model: str | None, device: str,
         precision: str, batch: int, halo: int | None, blend: str, axis: str, axis_index: int, block: int,
         resumable: bool, probabilities: bool, label_name: str, norm: Normalisation, progress: bool,
         report: str | Path | None, prefetch: int, t_start: float) -> SegmentReport:
    spec = engine.spec
    tile = spec.tile
    batch_max = spec.details.get("batch_max")
    if batch_max and batch > batch_max:
        raise EmsegError(f"--batch {batch} exceeds the model package's largest batch ({batch_max}); "
                         f"pass --batch {batch_max} or export with a larger --batch-max")
    halo = tile // 8 if halo is None else int(halo)
    shape = tuple(int(s) for s in volume.shape)
    depth = shape[axis_index]
    plane_shape = tuple(s for i, s in enumerate(shape) if i != axis_index)
    plan = plan_tiles(plane_shape, tile, halo)  # EmsegError for a bad halo
    classes = tuple(spec.classes)
    ltype = label_dtype(len(classes))
    chunks = tuple(block if i == axis_index else min(s, 1024) for i, s in enumerate(shape))
    blocks = [(b, min(b + block, depth)) for b in range(0, depth, block)]
    config = {
        "format": 1, "backend": spec.identity, "tile": tile, "halo": halo, "blend": blend, "axis": axis,
        "batch": batch, "block": block, "probabilities": probabilities, "shape": list(shape),
        "dtype": volume.dtype.name, "normalisation": norm.to_dict(), "classes": list(classes),
        "label_name": label_name, "label_dtype": ltype.name,
    }
    config_hash = _config_hash(config)
    run_dir = output / RUN_DIR
    done_dir = run_dir / "done" / config_hash[:16]
    model_name = model or "default"
    root_attrs = {"emseg_rt": {"status": "incomplete", "config_hash": config_hash, "model": model_name,
                               "backend": engine.name, "precision": precision, "tile": tile, "halo": halo,
                               "blend": blend, "axis": axis, "classes": list(classes),
                               "normalisation": norm.to_dict(), "input": {"shape": list(shape),
                                                                          "dtype": volume.dtype.name}}}
    voxel_size = tuple(volume.voxel_size) if len(volume.voxel_size) == 3 else (1.0, 1.0, 1.0)
    units = tuple(volume.units) if any(volume.units) else "nanometer" if volume.is_ome else None
    axes_names = "".join(volume.axes) if len(volume.axes) == 3 and set(volume.axes) <= set(AXES) else "zyx"

    if resumable:
        previous = json.loads((run_dir / "run.json").read_text())
        if previous.get("config_hash") != config_hash:
            raise EmsegError(f"{output} was written with a different configuration (model, backend, precision, "
                             "tiling or input differ); pass --overwrite to start again")
        label_array = zarr.open_array(str(output / "labels" / label_name / "s0"), mode="r+")
        prob_array = zarr.open_array(str(output / "probabilities" / "s0"), mode="r+") if probabilities else None
    else:
        try:
            output.mkdir(exist_ok=True)
            run_dir.mkdir(exist_ok=True)
            root = zarr.open_group(str(output), mode="a", zarr_format=3)
            root.attrs.update({"ome": {"version": "0.5"}, **root_attrs})
            label_array = create_ome_labels(output, label_name, shape, classes, voxel_size=voxel_size, axes=axes_names,
                                            units=units, chunks=chunks, dtype=ltype)
            prob_array = None
            if probabilities:
                prob_array = create_ome_image(
                    output / "probabilities", (len(classes),) + shape, np.uint8, voxel_size=(1.0,) + voxel_size,
                    axes="c" + axes_names, units=(None,) + (tuple(units) if isinstance(units, tuple) else (units,) * 3),
                    chunks=(1,) + chunks, name="probabilities",
                    extra_attributes={"emseg_rt": {"classes": list(classes), "scale": "sigmoid(logit) * 255"}})
            _write_json_atomic(run_dir / "run.json", {"config_hash": config_hash, "config": config})
        except OSError as exc:
            raise EmsegError(f"cannot write {output}: {exc.strerror or exc} ({exc.filename or output}); "
                             "choose a writable --out") from exc
    done_dir.mkdir(parents=True, exist_ok=True)

    done_before = {int(p.name) for p in done_dir.iterdir() if p.name.isdigit()}
    pending = [(i, b) for i, b in enumerate(blocks) if i not in done_before]
    rep = SegmentReport(
        input=str(source), output=str(output), label_path=str(output / "labels" / label_name), model=model_name,
        backend=engine.name, device=device, precision=precision, shape=shape, dtype=volume.dtype.name, axis=axis,
        tile=tile, halo=halo, blend=blend, batch=batch, block=block, classes=classes, config_hash=config_hash,
        blocks_total=len(blocks), blocks_done_before=len(done_before), normalisation=norm.to_dict(),
    )
    rep.setup_seconds = time.perf_counter() - t_start
    plane_voxels = int(np.prod(plane_shape))

    stop = threading.Event()
    errors: list[BaseException] = []
    read_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    write_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    timings = {"read": 0.0, "write": 0.0, "compute": 0.0, "stitch": 0.0}
    label_counts = np.zeros(len(classes) + 1, dtype=np.int64)

    def region(start: int, stop_: int) -> tuple[slice, ...]:
        return tuple(slice(start, stop_) if i == axis_index else slice(None) for i in range(3))

    def reader() -> None:
        try:
            for index, (b0, b1) in pending:
                t0 = time.perf_counter()
                try:
                    raw = np.asarray(volume.array[region(b0, b1)])
                except Exception as exc:  # codec / store errors from a damaged chunk
                    raise EmsegError(f"{where}: cannot read {axis} {b0}..{b1 - 1} (corrupt or missing chunk?): "
                                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
                check_finite(raw, f"{where} ({axis} {b0}..{b1 - 1})")
                slab = to_uint8(np.moveaxis(raw, axis_index, 0), norm)
                timings["read"] += time.perf_counter() - t0
                _put(read_q, (index, b0, b1, slab), stop)
            _put(read_q, _DONE, stop)
        except _Stop:
            pass
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)
            stop.set()

    def writer() -> None:
        try:
            while True:
                item = _get(write_q, stop)
                if item is _DONE:
                    return
                index, b0, b1, labels, probs = item
                t0 = time.perf_counter()
                label_array[region(b0, b1)] = np.moveaxis(labels, 0, axis_index)
                if prob_array is not None and probs is not None:
                    prob_array[(slice(None),) + region(b0, b1)] = np.moveaxis(probs, 1, axis_index + 1)
                (done_dir / str(index)).touch()  # only after the block's chunks are written
                timings["write"] += time.perf_counter() - t0
                label_counts[:] += np.bincount(labels.ravel(), minlength=len(classes) + 1)[: len(classes) + 1]
                rep.blocks_computed += 1
                rep.slices_computed += b1 - b0
                rep.voxels_computed += (b1 - b0) * plane_voxels
                if bar is not None:
                    bar.update(task, advance=b1 - b0)
        except _Stop:
            pass
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    bar = task = None
    show = progress and sys.stderr.isatty()
    if show:
        bar, task = _progress_bar(depth, sum(b1 - b0 for _, (b0, b1) in pending), plane_voxels)
    threads = [threading.Thread(target=reader, name="emseg-reader", daemon=True),
               threading.Thread(target=writer, name="emseg-writer", daemon=True)]
    t_loop = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        while True:
            item = _get(read_q, stop)
            if item is _DONE:
                _put(write_q, _DONE, stop)
                break
            index, b0, b1, slab = item
            labels, probs, n_tiles = segment_slab(engine, slab, plan, batch=batch, blend=blend,
                                                  probabilities=probabilities, label_type=ltype, timings=timings)
            rep.tiles_computed += n_tiles
            _put(write_q, (index, b0, b1, labels, probs), stop)
        threads[1].join()
    except _Stop:
        pass
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set() if errors else None
        for thread in threads:
            thread.join(timeout=30)
        if bar is not None:
            bar.stop()
    if errors:
        raise errors[0]

    loop_s = time.perf_counter() - t_loop
    all_done = all((done_dir / str(i)).exists() for i in range(len(blocks)))
    if all_done:
        root = zarr.open_group(str(output), mode="a", zarr_format=3)
        attrs = dict(root.attrs.get("emseg_rt", {}))
        attrs["status"] = "complete"
        root.attrs.update({"emseg_rt": attrs})
    rep.complete = all_done
    rep.read_seconds, rep.compute_seconds = timings["read"], timings["compute"]
    rep.stitch_seconds, rep.write_seconds = timings["stitch"], timings["write"]
    rep.wall_seconds = time.perf_counter() - t_start
    rep.backend_idle_fraction = max(0.0, 1.0 - timings["compute"] / loop_s) if loop_s > 0 else 0.0
    rep.slices_per_second = rep.slices_computed / loop_s if loop_s > 0 else 0.0
    rep.voxels_per_second = rep.voxels_computed / loop_s if loop_s > 0 else 0.0
    rep.label_counts = {("background" if i == 0 else classes[i - 1]): int(c) for i, c in enumerate(label_counts)}
    if report is not None:
        report_path = Path(report)
        try:
            _write_json_atomic(report_path, rep.to_dict())
        except OSError as exc:
            raise EmsegError(f"cannot write report {report_path}: {exc.strerror}") from exc
    return rep


def _progress_bar(depth: int, pending_slices: int, plane_voxels: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:  # type: ignore[override]
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("– slices/s", style="progress.data.speed")
            return Text(f"{speed:.2f} slices/s  {speed * plane_voxels / 1e6:.1f} Mvox/s", style="progress.data.speed")

    bar = Progress(TextColumn("segment"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), Rate(),
                   TextColumn("ETA"), TimeRemainingColumn(), transient=False)
    task = bar.add_task("segment", total=depth, completed=depth - pending_slices)
    bar.start()
    return bar, task
