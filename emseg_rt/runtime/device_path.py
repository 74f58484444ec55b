"""Segmenting slabs on a backend's device: only uint8 planes go up and uint8 labels come down.

The tiles are cut (`tiling.extract_tiles`), stitched or blended (`tiling.PlaneAccumulator`) and merged
(`plane_labels.merge_logits`) where the model runs, with the tiler the host path (`slab.segment_slab`) uses:
the same plan, tile order and batches, so centre-cropped labels equal the host path's bit for bit (and
Gaussian-blended ones too on a CPU). `DevicePath` is what the torch and ONNX Runtime backends' `run_planes`
call: the upload, the batches, the download and the stage timings (`StageClock`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch

from emseg_rt.runtime.plane_labels import merge_logits, torch_label_dtype
from emseg_rt.tiling import PlaneAccumulator, TilePlan, extract_tiles, padded_batches

RunBatch = Callable[[torch.Tensor], torch.Tensor]


def segment_planes_on_device(planes: torch.Tensor, plan: TilePlan, run_batch: RunBatch, *, batch: int, blend: str,
                             label_type: np.dtype, threshold: float,
                             stage: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """The device path of `slab.segment_slab` for any backend that computes on torch tensors.

    planes:    (N, H, W) uint8 on the device.
    run_batch: tiles (batch, 1, T, T) uint8, contiguous, on the device → labels (batch, T, T) for 'center' or
               logits (batch, K, T, T) for 'gaussian', on the device (read here before the next call, so a
               backend may reuse its output buffers: CUDA graphs, bound ONNX Runtime outputs).
    batch:     tiles per call, in the order and with the padding of `slab.tile_batches`
               (`tiling.padded_batches`), so centre labels equal the host path's bit for bit.
    stage:     a context around each run_batch call (the caller's compute clock).
    returns    labels (N, H, W) on the device, of the torch counterpart of `label_type`.
    """
    labels = torch.empty((planes.shape[0],) + tuple(plan.plane_shape), dtype=torch_label_dtype(label_type),
                         device=planes.device)
    accumulator = PlaneAccumulator(plan, blend, planes.device)
    tiles = extract_tiles(planes, plan).reshape(-1, 1, plan.tile, plan.tile)  # (N·n, 1, T, T)
    for _, real, chunk in padded_batches(tiles, batch):
        with stage():
            out = run_batch(chunk.contiguous())
        for index, plane in accumulator.add(out[:real]):
            labels[index] = plane if blend == "center" else merge_logits(plane, threshold, label_type)
    return labels


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
