"""Tiling, blending and stitching of 2D planes: pure functions of arrays and parameters.

A plane (H, W) is covered by tiles of the model's input size T. Neighbouring tiles overlap by at least
2·halo; each tile owns a "core" (at most (T − 2·halo)², at least `halo` pixels from its border), and the cores
partition the plane. Along each axis the tiles step by T − 2·halo from −halo; the last tile is moved back so
that it ends `halo` pixels past the plane's edge (the same context the first tile has before the start),
rather than holding mostly padding, and its core starts where the previous one ends. Everything outside the
plane is reflect-padded; a plane smaller than one tile is one padded tile.

    plan = plan_tiles((H, W), tile=T, halo=h)
    tiles = extract_tiles(plane, plan)                  # (N, T, T)
    labels = stitch_center(tile_labels, plan)            # (H, W)  — centre crop
    logits = blend_gaussian(tile_logits, plan)           # (K, H, W) — weighted blending
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from emseg_rt.errors import EmsegError


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one (H, W) plane sit.

    plane_shape: (H, W).
    tile:        T, the model's input side.
    halo:        context pixels each tile sees beyond its core on every side.
    origins:     (N, 2) int, top-left corner of each tile in plane coordinates (may be negative).
    cores:       (N, 4) int, each tile's core in plane coordinates: y0, y1, x0, x1 (half-open).
    stride:      T − 2·halo, the step between tiles and the largest core side.
    """

    plane_shape: tuple[int, int]
    tile: int
    halo: int
    origins: np.ndarray
    cores: np.ndarray

    @property
    def stride(self) -> int:
        return self.tile - 2 * self.halo

    @property
    def num_tiles(self) -> int:
        return len(self.origins)

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Reflect padding ((top, bottom), (left, right)) that makes every tile lie inside the padded plane."""
        h, w = self.plane_shape
        top, left = -int(self.origins[:, 0].min()), -int(self.origins[:, 1].min())
        bottom = int(self.origins[:, 0].max()) + self.tile - h
        right = int(self.origins[:, 1].max()) + self.tile - w
        return (top, max(bottom, 0)), (left, max(right, 0))


def _axis_tiles(size: int, tile: int, halo: int) -> list[tuple[int, int, int]]:
    """(origin, core start, core end) of each tile along one axis of length `size`."""
    stride = tile - 2 * halo
    count = max(1, math.ceil(size / stride))
    tiles = [(k * stride - halo, k * stride, (k + 1) * stride) for k in range(count - 1)]
    last_start = (count - 1) * stride
    last_origin = max(-halo, min(last_start - halo, size + halo - tile))  # flush with the edge + halo
    return tiles + [(last_origin, last_start, size)]


def plan_tiles(plane_shape: tuple[int, int], tile: int, halo: int) -> TilePlan:
    """Cover a (H, W) plane with T×T tiles whose cores (stride T − 2·halo) tile the plane exactly.

    Tiles are in row-major order. Raises EmsegError when the halo leaves no core (2·halo >= T).
    """
    h, w = (int(s) for s in plane_shape)
    if h < 1 or w < 1:
        raise EmsegError(f"cannot tile an empty plane of shape {plane_shape}")
    if halo < 0 or 2 * halo >= tile:
        raise EmsegError(f"--halo {halo} must be >= 0 and less than half the model's tile ({tile})")
    ys, xs = _axis_tiles(h, tile, halo), _axis_tiles(w, tile, halo)
    origins = np.array([(y[0], x[0]) for y in ys for x in xs], dtype=np.int64)
    cores = np.array([(y[1], y[2], x[1], x[2]) for y in ys for x in xs], dtype=np.int64)
    return TilePlan((h, w), tile, halo, origins, cores)


def pad_plane(plane: np.ndarray, plan: TilePlan) -> np.ndarray:
    """plane (H, W) any dtype → reflect-padded plane covering every tile of `plan`."""
    return np.pad(plane, plan.padding, mode="reflect" if min(plane.shape) > 1 else "edge")


def extract_tiles(plane: np.ndarray, plan: TilePlan) -> np.ndarray:
    """plane (H, W) → tiles (N, T, T) of the same dtype, in plan order, edges reflect-padded."""
    padded = pad_plane(plane, plan)
    (top, _), (left, _) = plan.padding
    t = plan.tile
    return np.stack([padded[y + top: y + top + t, x + left: x + left + t] for y, x in plan.origins])


def _core_slices(plan: TilePlan, index: int) -> tuple[slice, slice, slice, slice]:
    """(plane rows, plane cols, tile rows, tile cols) of tile `index`'s core."""
    y, x = (int(v) for v in plan.origins[index])
    y0, y1, x0, x1 = (int(v) for v in plan.cores[index])
    return slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def stitch_center(tile_outputs: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Centre-crop stitching: every plane pixel is taken from the one tile whose core contains it.

    tile_outputs: (N, T, T) or (N, C, T, T), any dtype.
    returns       (H, W) or (C, H, W), same dtype.
    """
    lead = tile_outputs.shape[1:-2]
    out = np.empty(lead + tuple(plan.plane_shape), dtype=tile_outputs.dtype)
    for i in range(plan.num_tiles):
        ry, rx, ty, tx = _core_slices(plan, i)
        out[..., ry, rx] = tile_outputs[i, ..., ty, tx]
    return out


@lru_cache(maxsize=8)
def gaussian_weights(tile: int, sigma_scale: float = 0.125) -> np.ndarray:
    """(T, T) float32 Gaussian importance map, σ = T·sigma_scale (nnU-Net / MONAI default 1/8), min > 0."""
    centre = (tile - 1) / 2.0
    sigma = tile * sigma_scale
    axis = np.exp(-0.5 * ((np.arange(tile) - centre) / sigma) ** 2)
    weights = np.outer(axis, axis)
    weights = weights / weights.max()
    weights = np.maximum(weights, 1e-3).astype(np.float32)  # edge pixels still count where one tile covers them
    weights.setflags(write=False)
    return weights


def blend_gaussian(tile_logits: np.ndarray, plan: TilePlan, sigma_scale: float = 0.125) -> np.ndarray:
    """Weighted blending: each plane pixel is the Gaussian-weighted mean of every tile covering it.

    tile_logits: (N, K, T, T) float.
    returns      (K, H, W) float32.
    """
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
    """Class merge after blending: (K, H, W) logits → (H, W) labels, k+1 for the largest logit, 0 where none
    exceeds `threshold` (the same rule as the model's in-graph ClassMerge)."""
    best_class = logits.argmax(axis=0)
    best = np.take_along_axis(logits, best_class[None], axis=0)[0]
    return np.where(best > threshold, best_class + 1, 0).astype(dtype)


def probabilities_uint8(logits: np.ndarray) -> np.ndarray:
    """(K, H, W) per-class logits → (K, H, W) uint8 per-class probabilities sigmoid(logit)·255, rounded."""
    prob = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float32), -60, 60)))
    return np.rint(prob * 255.0).astype(np.uint8)
