"""The tiler of `tiling.py` on torch tensors, on any device: tiles are cut, stitched, blended and merged where
the model runs, so only uint8 planes go up and uint8 labels come down.

This is a port of the same functions, not a second tiler: the same `TilePlan` (`tiling.plan_tiles`), the same
tile order, the same reflect padding (`tiling.pad_plane`: numpy's 'reflect' for planes wider than one pixel
on both axes, 'edge' otherwise), the same core crop, the same `tiling.gaussian_weights` accumulated in the
same tile order, the same class merge. tests/test_device_tiling.py checks each against its numpy original.

    tiles = extract_tiles_torch(plane, plan)             # (N, T, T), one gather, any padding size
    labels = stitch_center_torch(tile_labels, plan)      # (H, W)
    logits = blend_gaussian_torch(tile_logits, plan)     # (K, H, W) float32
    labels = merge_classes_torch(logits, threshold)      # (H, W) uint8
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch

from emseg_rt.kernels.class_merge import labels_from_logits
from emseg_rt.runtime.tiling import TilePlan, _core_slices, gaussian_weights

BLENDS = ("center", "gaussian")


def source_indices(size: int, starts: np.ndarray, tile: int, reflect: bool) -> np.ndarray:
    """Which plane index each tile pixel reads along one axis.

    size:    the plane's length along the axis (>= 1).
    starts:  (M,) int, tile origins along the axis (may be negative or run past the end).
    returns  (M, T) int64 in [0, size): numpy's 'reflect' padding (mirrored on the edge pixels, repeated with
             period 2·(size − 1) for pads wider than the plane, as `np.pad` does) or 'edge' (clamped).
    """
    positions = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(tile, dtype=np.int64)[None, :]
    if not reflect or size == 1:
        return np.clip(positions, 0, size - 1)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


def tile_index(plan: TilePlan, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The gather index of `extract_tiles_torch`: rows (N, T, 1) and cols (N, 1, T) int64 on `device`, so that
    plane[rows, cols] is (N, T, T), tile i's pixel (a, b) read from plane[rows[i, a], cols[i, b]]."""
    h, w = plan.plane_shape
    reflect = min(h, w) > 1  # tiling.pad_plane: one mode for the whole plane
    rows = source_indices(h, plan.origins[:, 0], plan.tile, reflect)
    cols = source_indices(w, plan.origins[:, 1], plan.tile, reflect)
    return (torch.from_numpy(rows).to(device)[:, :, None], torch.from_numpy(cols).to(device)[:, None, :])


def extract_tiles_torch(planes: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """planes (H, W) or (P, H, W), any dtype, any device → tiles (N, T, T) or (P, N, T, T) of the same dtype and
    device, in plan order, edges reflect-padded exactly as `tiling.extract_tiles` (one gather, no padded copy)."""
    if planes.dim() not in (2, 3) or tuple(planes.shape[-2:]) != tuple(plan.plane_shape):
        raise ValueError(f"planes of shape {tuple(planes.shape)} do not match the plan's plane {plan.plane_shape}")
    rows, cols = tile_index(plan, planes.device)
    return planes[..., rows, cols]


def _check_tiles(tile_outputs: torch.Tensor, plan: TilePlan, ndims: tuple[int, ...]) -> None:
    if tile_outputs.dim() not in ndims or tile_outputs.shape[0] != plan.num_tiles or \
            tuple(tile_outputs.shape[-2:]) != (plan.tile, plan.tile):
        raise ValueError(f"tile outputs of shape {tuple(tile_outputs.shape)} do not match the plan's "
                         f"{plan.num_tiles} tiles of {plan.tile}x{plan.tile}")


def stitch_center_torch(tile_outputs: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """Centre-crop stitching on the tensors' device: every plane pixel from the one tile whose core holds it.

    tile_outputs: (N, T, T) or (N, C, T, T), any dtype.
    returns       (H, W) or (C, H, W), same dtype and device; equal to `tiling.stitch_center`.
    """
    _check_tiles(tile_outputs, plan, (3, 4))
    lead = tuple(tile_outputs.shape[1:-2])
    out = torch.empty(lead + tuple(plan.plane_shape), dtype=tile_outputs.dtype, device=tile_outputs.device)
    for i in range(plan.num_tiles):
        ry, rx, ty, tx = _core_slices(plan, i)
        out[..., ry, rx] = tile_outputs[i, ..., ty, tx]
    return out


class GaussianBlender:
    """`tiling.blend_gaussian` for one plan on one device, its weights (T, T) and their sum over the padded
    plane computed once (a slab blends many planes with the same plan)."""

    def __init__(self, plan: TilePlan, device: torch.device | str, sigma_scale: float = 0.125) -> None:
        self.plan = plan
        self.weights = torch.from_numpy(gaussian_weights(plan.tile, sigma_scale).copy()).to(device)  # (T, T)
        (top, bottom), (left, right) = plan.padding
        h, w = plan.plane_shape
        self.norm = torch.zeros((h + top + bottom, w + left + right), dtype=torch.float32, device=device)
        for ys, xs in self._windows():
            self.norm[ys, xs] += self.weights

    def _windows(self) -> list[tuple[slice, slice]]:
        """Each tile's (rows, cols) in the padded plane, in plan order."""
        (top, _), (left, _) = self.plan.padding
        t = self.plan.tile
        return [(slice(int(y) + top, int(y) + top + t), slice(int(x) + left, int(x) + left + t))
                for y, x in self.plan.origins]

    def blend(self, tile_logits: torch.Tensor) -> torch.Tensor:
        """tile_logits (N, K, T, T) float on this blender's device → (K, H, W) float32, each pixel the
        Gaussian-weighted mean of every tile covering it (the tiles added in plan order, as numpy does)."""
        _check_tiles(tile_logits, self.plan, (4,))
        (top, _), (left, _) = self.plan.padding
        h, w = self.plan.plane_shape
        acc = torch.zeros((tile_logits.shape[1],) + tuple(self.norm.shape), dtype=torch.float32,
                          device=self.norm.device)
        for i, (ys, xs) in enumerate(self._windows()):
            acc[:, ys, xs] += tile_logits[i].float() * self.weights
        return (acc / self.norm)[:, top: top + h, left: left + w]


def blend_gaussian_torch(tile_logits: torch.Tensor, plan: TilePlan, sigma_scale: float = 0.125) -> torch.Tensor:
    """Weighted blending on the tensors' device (`tiling.blend_gaussian`).

    tile_logits: (N, K, T, T) float.
    returns      (K, H, W) float32, same device.
    """
    return GaussianBlender(plan, tile_logits.device, sigma_scale).blend(tile_logits)


def torch_label_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy label dtype (uint8, uint16, int32, int64)."""
    table = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16,
             np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}
    try:
        return table[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"labels of dtype {np.dtype(dtype)} are not supported on the device") from None


def merge_classes_torch(logits: torch.Tensor, threshold: float = 0.0,
                        dtype: np.dtype = np.dtype(np.uint8)) -> torch.Tensor:
    """Class merge on the tensor's device (`tiling.merge_classes`): (K, H, W) logits → (H, W) labels of the
    torch counterpart of `dtype`, k+1 for the largest logit (the lowest k on ties), 0 where none exceeds
    `threshold`."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (K, H, W), got shape {tuple(logits.shape)}")
    return labels_from_logits(logits[None], threshold, torch_label_dtype(dtype))[0]  # the model's own rule


class DevicePlaneStitcher:
    """Collects tile outputs of a slab in plane order, on their device, and stitches each plane into
    `labels_out[plane]` as soon as all its tiles are in, then drops them (device memory holds one plane's
    tile outputs plus a batch), as slab's host-side `_PlaneStitcher` does.

    blend 'center': add tile labels (n, T, T); 'gaussian': add tile logits (n, K, T, T), blended and merged.
    labels_out: (P, H, W) on `device`, of the torch counterpart of `label_type`.
    """

    def __init__(self, plan: TilePlan, blend: str, threshold: float, planes: int, label_type: np.dtype,
                 device: torch.device | str) -> None:
        if blend not in BLENDS:
            raise ValueError(f"blend {blend!r} is not one of {', '.join(BLENDS)}")
        self.plan, self.blend, self.threshold, self.label_type = plan, blend, threshold, np.dtype(label_type)
        self.labels_out = torch.empty((planes,) + tuple(plan.plane_shape), dtype=torch_label_dtype(label_type),
                                      device=device)
        self.blender = GaussianBlender(plan, device) if blend == "gaussian" else None
        self.pending: list[torch.Tensor] = []
        self.pending_count = 0
        self.planes_done = 0

    def add(self, tile_outputs: torch.Tensor) -> None:
        """tile_outputs: the next n tiles' labels (n, T, T) or logits (n, K, T, T)."""
        self.pending.append(tile_outputs)
        self.pending_count += tile_outputs.shape[0]
        per_plane = self.plan.num_tiles
        while self.pending_count >= per_plane:
            stacked = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
            self._finish_plane(stacked[:per_plane])
            rest = stacked[per_plane:]
            self.pending = [rest] if len(rest) else []
            self.pending_count = len(rest)

    def _finish_plane(self, tile_outputs: torch.Tensor) -> None:
        if self.blender is None:
            self.labels_out[self.planes_done] = stitch_center_torch(tile_outputs, self.plan)
        else:
            logits = self.blender.blend(tile_outputs)
            self.labels_out[self.planes_done] = merge_classes_torch(logits, self.threshold, self.label_type)
        self.planes_done += 1


RunBatch = Callable[[torch.Tensor], torch.Tensor]


def segment_planes_on_device(planes: torch.Tensor, plan: TilePlan, run_batch: RunBatch, *, batch: int, blend: str,
                             label_type: np.dtype, threshold: float,
                             stage: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """The device path of `slab.segment_slab` for any backend that computes on torch tensors.

    planes:    (N, H, W) uint8 on the device.
    run_batch: tiles (batch, 1, T, T) uint8, contiguous, on the device → labels (batch, T, T) for 'center' or
               logits (batch, K, T, T) for 'gaussian', on the device (copied here before the next call, so a
               backend may reuse its output buffers: CUDA graphs, bound ONNX Runtime outputs).
    batch:     tiles per call, in the order and with the padding of `slab.tile_batches` (the last batch
               filled with copies of its last tile), so centre labels equal the host path's bit for bit.
    stage:     a context around each run_batch call (the caller's compute clock).
    returns    labels (N, H, W) on the device, of the torch counterpart of `label_type`.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    stitcher = DevicePlaneStitcher(plan, blend, threshold, planes.shape[0], label_type, planes.device)
    tiles = extract_tiles_torch(planes, plan).reshape(-1, 1, plan.tile, plan.tile)  # (N·n, 1, T, T)
    for start in range(0, tiles.shape[0], batch):
        chunk = tiles[start:start + batch]
        real = chunk.shape[0]
        if real < batch:  # slab.tile_batches' padding: copies of the last tile
            chunk = torch.cat([chunk, chunk[-1:].expand(batch - real, -1, -1, -1)])
        with stage():
            out = run_batch(chunk.contiguous())
        stitcher.add(out[:real].to(torch.float32, copy=True) if blend == "gaussian" else out[:real].clone())
    return stitcher.labels_out


class StageClock:
    """Seconds spent inside `stage()` blocks: wall time on a CPU; on CUDA the GPU time between CUDA events
    recorded on the current stream at each block's ends, read after one synchronisation in `seconds()`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.wall = 0.0
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def stage(self) -> Iterator[None]:
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            yield
            end.record()
            self.events.append((begin, end))
        else:
            t0 = time.perf_counter()
            yield
            self.wall += time.perf_counter() - t0

    def seconds(self) -> float:
        if self.events:
            self.events[-1][1].synchronize()
        return self.wall + sum(begin.elapsed_time(end) for begin, end in self.events) / 1000.0


class DevicePath:
    """What a backend needs to segment slabs on its device (`run_planes` of the torch and ONNX Runtime
    backends): the upload, `segment_planes_on_device`, the download and the stage timings."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._copy_stream: torch.cuda.Stream | None = None  # uploads on CUDA

    def run(self, slab: np.ndarray, plan: TilePlan, run_batch: RunBatch, *, batch: int, blend: str,
            label_type: np.dtype, threshold: float, timings: dict | None = None) -> np.ndarray:
        """slab (N, H, W) uint8 host planes → labels (N, H, W) label_type host array; `run_batch` as in
        `segment_planes_on_device`. `timings` accumulates 'compute' (the run_batch calls; on CUDA their GPU
        time from CUDA events) and 'stitch' (the rest: upload, tiling, stitching, merge, download)."""
        if slab.ndim != 3 or slab.dtype != np.uint8 or tuple(slab.shape[1:]) != tuple(plan.plane_shape):
            raise ValueError(f"run_planes takes (N, H, W) uint8 planes of {plan.plane_shape}, "
                             f"got {slab.dtype} {slab.shape}")
        t_start = time.perf_counter()
        clock = StageClock(self.device)
        labels = segment_planes_on_device(self.upload(slab), plan, run_batch, batch=batch, blend=blend,
                                          label_type=label_type, threshold=threshold, stage=clock.stage)
        labels = labels.cpu().numpy()
        compute_s = clock.seconds()
        if timings is not None:
            timings["compute"] = timings.get("compute", 0.0) + compute_s
            timings["stitch"] = timings.get("stitch", 0.0) + max(0.0, time.perf_counter() - t_start - compute_s)
        return labels.astype(label_type, copy=False)

    def upload(self, slab: np.ndarray) -> torch.Tensor:
        """(N, H, W) uint8 host planes → the same on this device. On CUDA: copied from a pinned buffer,
        non-blocking, on a side stream; the compute stream waits on an event recorded after the copy, not the
        host. (A caller that uploads slab n+1 while slab n computes would overlap the two; `segment` calls
        run_planes one slab at a time, so there the copy precedes the slab's compute.)"""
        host = torch.from_numpy(np.ascontiguousarray(slab))
        if self.device.type != "cuda":
            return host.to(self.device)
        pinned = host.pin_memory()  # the caching host allocator keeps it until the copy has run
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        compute_stream = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            planes = pinned.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        compute_stream.wait_event(copied)
        planes.record_stream(compute_stream)  # allocated on the copy stream, used on the compute stream
        return planes
