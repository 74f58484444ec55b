"""Segmenting planes held in memory: the compute step of `segment_volume`, usable on its own.

`tile_batches` cuts a slab by the one batching rule (`tiling.padded_batches`: batches never span slabs; the
last batch is padded to full size with copies of its last tile, so a plane's numbers do not depend on its
neighbours in the batch order). `segment_slab` runs those batches through a `Backend` and stitches planes as
soon as their tiles are back (`tiling.PlaneAccumulator`, the device path's accumulator too).
`segment_slab_auto` is `--prompts auto`: a prompt-free pass for the density, its peaks as point prompts,
a prompted pass for the labels. `segment_array` is the in-memory entry for training validation and scripts:
the same tiler, the same backend calls, no zarr.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emseg_rt.constants import label_dtype
from emseg_rt.runtime.backends.base import Backend
from emseg_rt.runtime.plane_labels import merge_logits, probabilities_uint8
from emseg_rt.runtime.prompts import NMS_KERNEL, PointSet, peaks_to_points, rotate_points, slab_prompts
from emseg_rt.tiling import PlaneAccumulator, TilePlan, extract_tiles, padded_batches, plan_tiles


@dataclass(frozen=True)
class TileBatch:
    """One backend call: `tiles` (batch, 1, T, T) uint8, of which the first `real` are the slab's tiles
    `start .. start + real - 1` (plane-major order); the rest are padding."""

    start: int
    real: int
    tiles: np.ndarray

    @property
    def positions(self) -> range:
        """The real tiles' places among the slab's tiles (`tiling.PlaneAccumulator.add`)."""
        return range(self.start, self.start + self.real)


def tile_batches(slab: np.ndarray, plan: TilePlan, batch: int,
                 active: np.ndarray | None = None) -> Iterator[TileBatch]:
    """Cut a slab (N, H, W) uint8 into full batches of `batch` tiles (N·plan.num_tiles tiles in all).

    active: (N, num_tiles) bool: only the batches holding an active tile (`segment --mask`). A batch runs whole
    or not at all, so every tile that runs has the same neighbours in its backend call as in a run of all the
    tiles, and the same numbers (a backend's arithmetic may depend on a tile's place in its batch)."""
    tiles = extract_tiles(slab, plan).reshape(-1, 1, plan.tile, plan.tile)  # (N·n, 1, T, T), plane-major
    flags = None if active is None else active.ravel()
    for start, real, chunk in padded_batches(tiles, batch):
        if flags is None or flags[start:start + real].any():
            yield TileBatch(start, real, chunk)


def batch_prompts(prompts: Mapping[str, np.ndarray] | None, item: TileBatch) -> dict[str, np.ndarray] | None:
    """The rows of per-tile prompts (slab tile order) for one batch, padded as its tiles are: the padding
    entries repeat the last real tile's prompts."""
    if not prompts:
        return None
    out = {}
    for name, rows in prompts.items():
        chunk = rows[item.start:item.start + item.real]
        pad = item.tiles.shape[0] - item.real
        out[name] = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
    return out


def run_tta(backend: Backend, tiles: np.ndarray, prompts: Mapping[str, np.ndarray] | None = None,
            outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Rotation test-time augmentation: the batch run 4 times, turned by k·90° (`np.rot90` on the (T, T) axes,
    point prompts turned with it by `prompts.rotate_points`), each output turned back; logits (B, K, T, T)
    are the mean of the four, labels (B, T, T) the class merge of that mean at the backend's threshold.
    `outputs`: extra per-pixel outputs (e.g. 'density' (B, 1, T, T)), each turned back and averaged too."""
    tile = tiles.shape[-1]
    total = None
    extra_totals: dict[str, np.ndarray] = {}
    for k in range(4):
        turned = None
        if prompts:
            turned = dict(prompts)
            if "point_coords" in prompts and "point_labels" in prompts:
                turned["point_coords"] = rotate_points(prompts["point_coords"], prompts["point_labels"], k, tile)
        turned_tiles = np.ascontiguousarray(np.rot90(tiles, k, axes=(-2, -1)))
        if outputs:
            out = backend.run(turned_tiles, want_logits=True, prompts=turned, outputs=tuple(outputs))
        else:
            out = backend.run(turned_tiles, want_logits=True, prompts=turned)
        back = np.rot90(out["logits"].astype(np.float32, copy=False), -k, axes=(-2, -1))
        total = back.copy() if total is None else total + back
        for name in outputs:
            back = np.rot90(out[name].astype(np.float32, copy=False), -k, axes=(-2, -1))
            extra_totals[name] = back.copy() if name not in extra_totals else extra_totals[name] + back
    logits = total / np.float32(4)
    labels = merge_logits(torch.from_numpy(logits), backend.spec.threshold,
                          label_dtype(len(backend.spec.classes))).numpy()
    return {"logits": logits, "labels": labels, **{name: t / np.float32(4) for name, t in extra_totals.items()}}


def takes_device_path(backend: Backend) -> bool:
    """Whether `segment_slab` runs this backend's labels-only calls on its device (`run_planes`: torch and
    onnxruntime, prompt-free models)."""
    return hasattr(backend, "run_planes") and not backend.spec.prompts


def segment_slab(backend: Backend, slab: np.ndarray, plan: TilePlan, *, batch: int, blend: str,
                 probabilities: bool, label_type: np.dtype, timings: dict | None = None,
                 prompts: Mapping[str, np.ndarray] | None = None, tta: bool = False,
                 density_out: np.ndarray | None = None,
                 active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Segment a slab of planes.

    slab:    (N, H, W) uint8 planes.
    prompts: per-tile prompt arrays by name, N·n_tiles rows in tile order (`prompts.slab_prompts`), for
             prompted models; each batch gets its rows, padded like its tiles.
    tta:     rotation test-time augmentation (`run_tta`); needs logits, so labels come from the stitched mean.
    density_out: (N, H, W) float32, filled with each plane's density (a model with a 'density' extra output:
             Prompt-DAS), its tiles always Gaussian-blended (`tiling.PlaneAccumulator`; with `tta`: each
             tile's mean of the four turned back).
    active:  (N, num_tiles) bool: run only the batches holding one of these tiles (`segment --mask`,
             `tiling.active_tiles`; `tile_batches`); pixels that only tiles left out cover are 0 (labels,
             probabilities, density).
    returns  labels (N, H, W) label_type, probabilities (K, N, H, W) uint8 or None, and the number of tiles run.
    `timings` (optional) accumulates 'compute' (backend calls) and 'stitch' seconds.
    A backend with `run_planes` (torch, onnxruntime) tiles, stitches and merges on its device when the call
    needs nothing but labels from a prompt-free model (no prompts, tta, density or probabilities): the same
    plan, tile order and batches.
    """
    n_planes, per_plane = slab.shape[0], plan.num_tiles
    active = None if active is None or active.all() else active
    if (takes_device_path(backend) and not prompts and not tta and density_out is None and not probabilities
            and active is None):
        labels = backend.run_planes(slab, plan, batch=batch, blend=blend, label_type=label_type,
                                    threshold=backend.spec.threshold, timings=timings)
        return labels, None, n_planes * per_plane
    want_logits = blend == "gaussian" or probabilities or tta
    planes = _HostPlanes(plan, blend, want_logits, backend.spec.threshold, label_type, n_planes, probabilities,
                         density_out)
    outputs = ("density",) if density_out is not None else ()
    compute_s = stitch_s = 0.0
    ran = 0
    for item in tile_batches(slab, plan, batch, active):
        ran += item.real
        t0 = time.perf_counter()
        out = _run_batch(backend, item, prompts, tta=tta, want_logits=want_logits, outputs=outputs)
        compute_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        planes.add(out, item.real, item.positions)
        stitch_s += time.perf_counter() - t0
    planes.flush()
    if timings is not None:
        timings["compute"] = timings.get("compute", 0.0) + compute_s
        timings["stitch"] = timings.get("stitch", 0.0) + stitch_s
    return planes.labels, planes.probabilities, ran


def _run_batch(backend: Backend, item: TileBatch, prompts: Mapping[str, np.ndarray] | None, *, tta: bool,
               want_logits: bool, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One batch through the backend (with its rows of the prompts; four turns with `tta`)."""
    extra = batch_prompts(prompts, item)
    if tta:
        return run_tta(backend, item.tiles, extra, outputs)
    kwargs: dict = {} if extra is None else {"prompts": extra}
    if outputs:
        kwargs["outputs"] = outputs
    return backend.run(item.tiles, want_logits=want_logits, **kwargs)


@dataclass(frozen=True)
class SlabSettings:
    """How the planes of a slab are computed: the tile plan, tiles per backend call, 'center' or 'gaussian'
    blending, the labels' dtype, whether to return uint8 probabilities, rotation TTA."""

    plan: TilePlan
    batch: int
    blend: str
    label_type: np.dtype
    probabilities: bool = False
    tta: bool = False

    def segment(self, backend: Backend, slab: np.ndarray, timings: dict | None = None,
                prompts: Mapping[str, np.ndarray] | None = None, density_out: np.ndarray | None = None,
                active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, int]:
        """`segment_slab` with these settings."""
        return segment_slab(backend, slab, self.plan, batch=self.batch, blend=self.blend,
                            probabilities=self.probabilities, label_type=self.label_type, timings=timings,
                            prompts=prompts, tta=self.tta, density_out=density_out, active=active)


def segment_slab_auto(backend: Backend, slab: np.ndarray, settings: SlabSettings, *, start: int, axis: str | int,
                      max_points: int, peak_threshold: float, timings: dict | None = None,
                      counts: dict[str, int] | None = None, kernel: int = NMS_KERNEL,
                      density_out: np.ndarray | None = None,
                      active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, int, PointSet]:
    """`--prompts auto` on one slab (planes start.. along `axis` of the volume): Prompt-DAS's detection →
    segmentation loop at inference.

    Pass 1 runs without prompts and blends each plane's density (`segment_slab(density_out=)`); its peaks
    (`prompts.peaks_to_points`: ≥ peak_threshold, NMS kernel) become positive points of their plane, cut per
    tile like given points (`prompts.slab_prompts`, at most `max_points` per tile, nearest its centre); pass 2
    runs with them. Where no plane of the slab has a peak, pass 1's labels are the result (pass 2 would
    compute the same numbers).
    returns  labels, probabilities (or None) of the prompted pass, the number of tiles run (both passes) and
             the points found. `counts` accumulates window_prompts' counters and 'auto_points'.
    density_out: (N, H, W) float32, filled with the density of the pass that gave the labels.
    active: (N, num_tiles) bool, the tiles both passes run (`segment_slab`); None: all.
    """
    plan = settings.plan
    density = np.zeros((slab.shape[0],) + plan.plane_shape, np.float32)
    no_points = slab_prompts(None, start, start + slab.shape[0], axis, plan, max_points)
    first = settings.segment(backend, slab, timings, no_points, density, active)
    t0 = time.perf_counter()
    points = peaks_to_points(density, start, axis, peak_threshold, kernel)
    if timings is not None:
        timings["stitch"] = timings.get("stitch", 0.0) + time.perf_counter() - t0
    if counts is not None:
        counts["auto_points"] = counts.get("auto_points", 0) + len(points)
    if not len(points):
        if density_out is not None:
            density_out[...] = density
        return first[0], first[1], first[2], points
    prompts = slab_prompts(points, start, start + slab.shape[0], axis, plan, max_points, counts)
    labels, probs, n_tiles = settings.segment(backend, slab, timings, prompts, density_out, active)
    return labels, probs, first[2] + n_tiles, points


@dataclass(frozen=True)
class PromptMode:
    """How a run prompts its tiles: `max_points` None for prompt-free models; else `points` (None: no
    prompts, the prompt-free mode of a prompted model) or, with `auto_threshold`, `--prompts auto`."""

    max_points: int | None = None
    points: PointSet | None = None
    auto_threshold: float | None = None


def segment_planes(backend: Backend, slab: np.ndarray, settings: SlabSettings, mode: PromptMode, *, start: int,
                   axis: str | int, timings: dict | None = None, counts: dict[str, int] | None = None,
                   density_out: np.ndarray | None = None,
                   active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Planes start.. of the volume along `axis` → labels, probabilities, tiles run: the one place that picks
    `segment_slab` with the slab's prompts or `segment_slab_auto` (the block driver of every scheduler).
    density_out: (N, H, W) float32 to fill with the blended density of the labels' pass (density models).
    active: (N, num_tiles) bool, the tiles to run (`segment --mask`); None: all."""
    if mode.auto_threshold is not None:
        return segment_slab_auto(backend, slab, settings, start=start, axis=axis, max_points=mode.max_points,
                                 peak_threshold=mode.auto_threshold, timings=timings, counts=counts,
                                 density_out=density_out, active=active)[:3]
    prompts = None if mode.max_points is None else slab_prompts(
        mode.points, start, start + slab.shape[0], axis, settings.plan, mode.max_points, counts)
    return settings.segment(backend, slab, timings, prompts, density_out, active)


def _host_tensor(array: np.ndarray) -> torch.Tensor:
    """A backend's output array as a CPU tensor sharing its memory (copied only where torch cannot share it:
    read-only or negatively strided arrays)."""
    if not array.flags.writeable or any(stride < 0 for stride in array.strides):
        array = np.array(array)
    return torch.from_numpy(array)


class _HostPlanes:
    """The host path's results for one slab, filled plane by plane from each batch's tile outputs through
    `tiling.PlaneAccumulator` (host memory holds one plane being assembled, no list of tiles).

    labels:        (N, H, W) label_type: centre-cropped tile labels, or the class merge of the plane's
                   stitched or blended logits (`want_logits`).
    probabilities: (K, N, H, W) uint8 sigmoid·255 of those logits when asked for, else None.
    density_out:   (N, H, W) float32 filled with each plane's Gaussian-blended 'density' output, or None.
    """

    def __init__(self, plan: TilePlan, blend: str, want_logits: bool, threshold: float, label_type: np.dtype,
                 n_planes: int, probabilities: bool, density_out: np.ndarray | None) -> None:
        self.want_logits, self.threshold, self.label_type = want_logits, threshold, label_type
        self.want_probabilities, self.density_out = probabilities, density_out
        self.labels = np.zeros((n_planes,) + tuple(plan.plane_shape), dtype=label_type)  # 0 where no tile ran
        self.probabilities: np.ndarray | None = None
        self.tiles = PlaneAccumulator(plan, blend)
        self.densities = None if density_out is None else PlaneAccumulator(plan, "gaussian")

    def add(self, out: Mapping[str, np.ndarray], real: int, positions: Sequence[int] | None = None) -> None:
        """out: one batch's backend outputs, of which the first `real` tiles are the slab's (at `positions`
        among its tiles when only some run)."""
        tiles = out["logits" if self.want_logits else "labels"][:real]
        self._planes(self.tiles.add(_host_tensor(tiles), positions), None if self.densities is None else
                     self.densities.add(_host_tensor(out["density"][:real]), positions))

    def flush(self) -> None:
        """Finish the planes whose last tiles did not run."""
        self._planes(self.tiles.flush(), None if self.densities is None else self.densities.flush())

    def _planes(self, labels: list, densities: list | None) -> None:
        for index, plane in labels:
            self._finish_plane(index, plane)
        for index, plane in densities or ():
            self.density_out[index] = plane[0].numpy()

    def _finish_plane(self, index: int, plane: torch.Tensor) -> None:
        if not self.want_logits:
            self.labels[index] = plane.numpy()
            return
        self.labels[index] = merge_logits(plane, self.threshold, self.label_type).numpy()
        if self.want_probabilities:
            logits = plane.numpy()
            if self.probabilities is None:
                shape = (logits.shape[0], self.labels.shape[0]) + logits.shape[1:]
                self.probabilities = np.zeros(shape, dtype=np.uint8)  # 0 in planes where no tile ran
            self.probabilities[:, index] = probabilities_uint8(logits)


def segment_array(backend: Backend, volume: np.ndarray, *, halo: int | None = None, batch: int = 4,
                  blend: str = "center") -> np.ndarray:
    """Segment an in-memory volume plane by plane (z planes) with the runtime's tiler and batching.

    volume:  (Z, Y, X) or (Y, X) uint8.
    returns  labels of the same shape, uint8 (uint16 past 255 classes); halo defaults to tile // 8 as in
             `segment_volume`.
    """
    planes = volume[None] if volume.ndim == 2 else volume
    tile = backend.spec.tile
    plan = plan_tiles(planes.shape[1:], tile, tile // 8 if halo is None else halo)
    labels, _, _ = segment_slab(backend, np.ascontiguousarray(planes, dtype=np.uint8), plan, batch=batch,
                                blend=blend, probabilities=False, label_type=label_dtype(len(backend.spec.classes)))
    return labels[0] if volume.ndim == 2 else labels
