"""The tiler written the plain numpy way: the reference `emseg_rt.tiling` is tested against (MONAI-style).

These were the runtime's own host-path functions before one torch implementation served host and device
alike; they pad with `np.pad`, cut with slices and stitch or blend whole planes of tiles in plan order, so
they share nothing with `tiling.extract_tiles` (index gathers) or `tiling.PlaneAccumulator` (batch by batch)
but the `TilePlan` and the Gaussian weights they are given.
"""

from __future__ import annotations

import numpy as np

from emseg_rt.tiling import TilePlan, gaussian_weights


def pad_plane(plane: np.ndarray, plan: TilePlan) -> np.ndarray:
    """plane (H, W) any dtype → reflect-padded plane covering every tile ('edge' for 1-pixel-wide planes)."""
    return np.pad(plane, plan.padding, mode="reflect" if min(plane.shape) > 1 else "edge")


def extract_tiles(plane: np.ndarray, plan: TilePlan) -> np.ndarray:
    """plane (H, W) → tiles (N, T, T) of the same dtype, in plan order, sliced from the padded plane."""
    padded = pad_plane(plane, plan)
    (top, _), (left, _) = plan.padding
    t = plan.tile
    return np.stack([padded[y + top: y + top + t, x + left: x + left + t] for y, x in plan.origins])


def stitch_center(tile_outputs: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Centre crop: tile_outputs (N, T, T) or (N, C, T, T) → (H, W) or (C, H, W), the same dtype."""
    out = np.empty(tile_outputs.shape[1:-2] + tuple(plan.plane_shape), dtype=tile_outputs.dtype)
    for i, ((y, x), (y0, y1, x0, x1)) in enumerate(zip(plan.origins, plan.cores)):
        out[..., y0:y1, x0:x1] = tile_outputs[i, ..., y0 - y:y1 - y, x0 - x:x1 - x]
    return out


def blend_gaussian(tile_logits: np.ndarray, plan: TilePlan, sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian-weighted mean of every tile covering a pixel: (N, K, T, T) float → (K, H, W) float32."""
    (top, bottom), (left, right) = plan.padding
    h, w = plan.plane_shape
    k, t = tile_logits.shape[1], plan.tile
    acc = np.zeros((k, h + top + bottom, w + left + right), dtype=np.float32)
    norm = np.zeros(acc.shape[1:], dtype=np.float32)
    weights = gaussian_weights(t, sigma_scale)
    for i, (y, x) in enumerate(plan.origins):
        ys, xs = slice(y + top, y + top + t), slice(x + left, x + left + t)
        acc[:, ys, xs] += tile_logits[i].astype(np.float32) * weights
        norm[ys, xs] += weights
    return (acc / norm)[:, top: top + h, left: left + w]


def merge_classes(logits: np.ndarray, threshold: float = 0.0, dtype: np.dtype = np.dtype(np.uint8)) -> np.ndarray:
    """(K, H, W) logits → (H, W) labels: k+1 for the largest logit (the first on ties), 0 where it is not
    above `threshold`."""
    best_class = logits.argmax(axis=0)
    best = np.take_along_axis(logits, best_class[None], axis=0)[0]
    return np.where(best > threshold, best_class + 1, 0).astype(dtype)


def brute_force_blend(tile_logits: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Pixel by pixel in float64: (N, K, T, T) → (K, H, W), each pixel Σ w·logit / Σ w over the tiles
    covering it."""
    weights = gaussian_weights(plan.tile).astype(np.float64)
    out = np.zeros((tile_logits.shape[1],) + tuple(plan.plane_shape))
    for py in range(plan.plane_shape[0]):
        for px in range(plan.plane_shape[1]):
            acc, norm = np.zeros(tile_logits.shape[1]), 0.0
            for i, (y, x) in enumerate(plan.origins):
                ty, tx = py - y, px - x
                if 0 <= ty < plan.tile and 0 <= tx < plan.tile:
                    acc += weights[ty, tx] * tile_logits[i, :, ty, tx]
                    norm += weights[ty, tx]
            out[:, py, px] = acc / norm
    return out
