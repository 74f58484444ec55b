"""MAESTER's cover-stride inference, kept to compare against HiS4MAE's expand-stride (HiS4MAE §3.3).

Cover-stride gives every output pixel its own encoder window: the FOV placed so that the pixel sits at
in-window position (F//2, F//2) (reflect padding at the plane edges, as the tiler pads), encoded, and the
pixel labelled by the same centres and classes the head uses, at that one position. That is H·W encoder
forwards per (H, W) plane. Expand-stride (the runtime's tiler: tile = FOV, tile stride S = T − 2·halo)
encodes ⌈H/S⌉·⌈W/S⌉ tiles and labels every pixel of each tile's core from that tile's interpolated tokens:
about S² times fewer forwards (S = 60 for FOV 80 and the default halo 80 // 8 = 10: ~3,600× fewer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from emseg_rt.clustering.features import eval_mode, interpolate_grid_at
from emseg_rt.clustering.fit import cluster_head_of
from emseg_rt.kernels import token_scores
from emseg_rt.runtime.backends.torch_backend import TorchBackend
from emseg_rt.runtime.slab import segment_array
from emseg_rt.tiling import plan_tiles


def cover_stride_windows(plane_shape: tuple[int, int]) -> int:
    """Encoder forwards cover-stride runs on an (H, W) plane: H·W, one window per pixel."""
    return int(plane_shape[0]) * int(plane_shape[1])


def expand_stride_windows(plane_shape: tuple[int, int], tile: int, halo: int) -> int:
    """Encoder forwards expand-stride runs on an (H, W) plane: the tiler's tile count, ⌈H/S⌉·⌈W/S⌉ with
    S = tile − 2·halo."""
    return plan_tiles(plane_shape, tile, halo).num_tiles


def cover_windows(plane: np.ndarray, fov: int) -> np.ndarray:
    """plane (H, W) → (H, W, F, F) read-only view: window [y, x] is the F×F field of view with plane pixel
    (y, x) at in-window position (F//2, F//2), reflect-padded past the edges (edge-padded for a 1-pixel side).
    """
    before = fov // 2
    widths = ((before, fov - 1 - before),) * 2
    padded = np.pad(plane, widths, mode="reflect" if min(plane.shape) > 1 else "edge")
    return sliding_window_view(padded, (fov, fov))


def cover_stride_labels(pipeline: nn.Module, plane: np.ndarray, *, batch: int = 256) -> np.ndarray:
    """Label a plane MAESTER's way: one encoder window per pixel (module docstring).

    pipeline: a maester / his4mae pipeline (its FOV encoder and ClusterHead centres and classes).
    plane:    (H, W) uint8.
    returns   (H, W) uint8 classes (int32 past 255 classes, as the head; 0 = background): per pixel, the class of the nearest centre of its window's
              tokens interpolated to (F//2, F//2), scored as the head scores (argmin of interpolated
              ‖c‖² − 2 t·c), i.e. `pipeline.head(tokens, want_logits=False)["labels"][:, F//2, F//2]` but
              scoring that one pixel only.
    """
    head = cluster_head_of(pipeline)
    encoder = pipeline.encoders["fov_encoder"]
    fov = pipeline.config.tile
    height, width = plane.shape
    windows = cover_windows(np.asarray(plane, dtype=np.uint8), fov)
    device = next(encoder.parameters()).device
    labels = np.empty(height * width, dtype=np.uint8 if head.num_classes <= 255 else np.int32)
    with eval_mode(encoder):
        for start in range(0, height * width, batch):
            ys, xs = np.divmod(np.arange(start, min(start + batch, height * width)), width)
            tiles = torch.from_numpy(np.ascontiguousarray(windows[ys, xs])[:, None]).to(device)
            scores = token_scores(encoder(tiles), head.centres)  # (B, K, g, g)
            middle = np.full(len(ys), fov // 2)
            pixel_scores = interpolate_grid_at(scores, np.arange(len(ys)), middle, middle, fov)  # (B, K)
            labels[start:start + len(ys)] = head.cluster_classes[pixel_scores.argmin(dim=1)].cpu().numpy()
    return labels.reshape(height, width)


@dataclass(frozen=True)
class StrideComparison:
    """Cover-stride against expand-stride on one plane.

    agreement:                  share of pixels both label alike.
    cover_windows, expand_windows: encoder forwards each ran.
    cover_seconds, expand_seconds: wall time of each (same device, same batch size).
    """

    agreement: float
    cover_windows: int
    expand_windows: int
    cover_seconds: float
    expand_seconds: float


def compare_strides(pipeline: nn.Module, plane: np.ndarray, *, halo: int | None = None,
                    batch: int = 64) -> tuple[StrideComparison, np.ndarray, np.ndarray]:
    """Label a plane (H, W) uint8 both ways → (comparison, cover labels (H, W), expand labels (H, W)).

    Expand-stride labels come from the runtime (`segment_array` through the reference torch backend, halo
    default tile // 8), the labels `emseg-rt segment --backend torch` writes. The backend puts the pipeline in
    eval mode without gradients.
    """
    tile = pipeline.config.tile
    halo = tile // 8 if halo is None else int(halo)
    began = time.perf_counter()
    cover = cover_stride_labels(pipeline, plane, batch=batch)
    cover_seconds = time.perf_counter() - began
    device = str(next(pipeline.parameters()).device)
    backend = TorchBackend(pipeline, device=device, fast=False, model_id="compare-strides")
    began = time.perf_counter()
    expand = segment_array(backend, np.asarray(plane, dtype=np.uint8), halo=halo, batch=batch)
    expand_seconds = time.perf_counter() - began
    comparison = StrideComparison(float((cover == expand).mean()), cover_stride_windows(plane.shape),
                                  expand_stride_windows(plane.shape, tile, halo), cover_seconds, expand_seconds)
    return comparison, cover, expand
