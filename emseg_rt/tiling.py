"""The tiler: where the tiles of a 2D plane sit, how they are cut, and how their outputs become planes again.

A plane (H, W) is covered by tiles of the model's input size T. Neighbouring tiles overlap by at least
2·halo; each tile owns a "core" (at most (T − 2·halo)², at least `halo` pixels from its border), and the cores
partition the plane. Along each axis the tiles step by T − 2·halo from −halo; the last tile is moved back so
that it ends `halo` pixels past the plane's edge (the same context the first tile has before the start),
rather than holding mostly padding, and its core starts where the previous one ends. Everything outside the
plane is reflect-padded (numpy's 'reflect'; 'edge' for planes one pixel wide); a plane smaller than one tile
is one padded tile.

    plan = plan_tiles((H, W), tile=T, halo=h)
    tiles = extract_tiles(planes, plan)              # (P, N, T, T), numpy or torch
    for start, real, chunk in padded_batches(tiles.reshape(-1, 1, T, T), batch): ...   # the one batching rule
    planes = PlaneAccumulator(plan, "center")        # or "gaussian"; on any torch device
    for index, plane in planes.add(tile_outputs):    # (B, T, T) labels or (B, K, T, T) logits/densities
        ...                                          # each finished plane: (H, W) or (K, H, W)

Both the host path (`runtime.slab`) and the device path (`runtime.device_path`) use this one accumulator;
tests/tiling_reference.py holds the numpy brute force it is tested against (centre crop bit-equal, Gaussian
blending bit-equal on a CPU: the same float32 products and sums in the same tile order).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from emseg_rt.errors import EmsegError

BLENDS = ("center", "gaussian")  # centre crop: each pixel from the tile whose core holds it; Gaussian mean
DEFAULT_SIGMA_SCALE = 0.125  # σ = T/8 (nnU-Net / MONAI's sliding-window default)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one (H, W) plane sit.

    plane_shape: (H, W).
    tile:        T, the model's input side.
    halo:        context pixels each tile sees beyond its core on every side.
    origins:     (N, 2) int64, top-left corner of each tile in plane coordinates (may be negative).
    cores:       (N, 4) int64, each tile's core in plane coordinates: y0, y1, x0, x1 (half-open).
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


@lru_cache(maxsize=8)
def gaussian_weights(tile: int, sigma_scale: float = DEFAULT_SIGMA_SCALE) -> np.ndarray:
    """(T, T) float32 Gaussian importance map, σ = T·sigma_scale, peak 1, min 1e-3 (> 0), read-only."""
    centre = (tile - 1) / 2.0
    sigma = tile * sigma_scale
    axis = np.exp(-0.5 * ((np.arange(tile) - centre) / sigma) ** 2)
    weights = np.outer(axis, axis)
    weights = weights / weights.max()
    weights = np.maximum(weights, 1e-3).astype(np.float32)  # edge pixels still count where one tile covers them
    weights.setflags(write=False)
    return weights


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


def _take(planes: np.ndarray | torch.Tensor, index: np.ndarray, axis: int) -> np.ndarray | torch.Tensor:
    """planes indexed by `index` along `axis` (numpy's take, torch's index_select on the tensor's device)."""
    if isinstance(planes, torch.Tensor):
        return planes.index_select(axis, torch.from_numpy(index).to(planes.device))
    return np.take(planes, index, axis=axis)


def extract_tiles(planes: np.ndarray | torch.Tensor, plan: TilePlan) -> np.ndarray | torch.Tensor:
    """Cut planes into the plan's tiles: the padded plane gathered row- and column-wise (`source_indices`:
    numpy's reflect padding for any padding width), then each tile sliced from it.

    planes:  (H, W) or (P, H, W), any dtype, a numpy array or a torch tensor on any device.
    returns  (N, T, T) or (P, N, T, T) of the same kind, dtype and device, in plan order (row-major).
    """
    if planes.ndim not in (2, 3) or tuple(planes.shape[-2:]) != tuple(plan.plane_shape):
        raise ValueError(f"planes of shape {tuple(planes.shape)} do not match the plan's plane {plan.plane_shape}")
    (top, bottom), (left, right) = plan.padding
    h, w = plan.plane_shape
    reflect = min(h, w) > 1  # one padding mode for the whole plane
    rows = source_indices(h, np.array([-top]), h + top + bottom, reflect)[0]
    cols = source_indices(w, np.array([-left]), w + left + right, reflect)[0]
    padded = _take(_take(planes, rows, -2), cols, -1)
    t = plan.tile
    tiles = [padded[..., y + top:y + top + t, x + left:x + left + t] for y, x in plan.origins.tolist()]
    return torch.stack(tiles, dim=-3) if isinstance(padded, torch.Tensor) else np.stack(tiles, axis=-3)


def padded_batches(tiles: np.ndarray | torch.Tensor,
                   batch: int) -> Iterator[tuple[int, int, np.ndarray | torch.Tensor]]:
    """The one batching rule: consecutive full batches of `batch` tiles.

    tiles:   (M, ...) numpy array or torch tensor, in plane-major plan order.
    yields   (start, real, chunk): chunk (batch, ...) of the same kind holds tiles start .. start + real − 1,
             the last one filled up with copies of its last tile (so a tile's numbers never depend on how many
             tiles share its batch).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for start in range(0, tiles.shape[0], batch):
        chunk = tiles[start:start + batch]
        real = chunk.shape[0]
        if real < batch and isinstance(chunk, torch.Tensor):
            chunk = torch.cat([chunk, chunk[-1:].expand((batch - real,) + tuple(chunk.shape[1:]))])
        elif real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        yield start, real, chunk


def active_tiles(mask: np.ndarray, plan: TilePlan, windows: bool) -> np.ndarray:
    """Which tiles of each plane can change a voxel of `mask` (`segment --mask`).

    mask:    (P, H, W) bool, the planes' voxels to segment.
    windows: True: a tile counts when its window (clipped to the plane) holds a mask voxel (Gaussian
             blending spreads a tile over its window); False: when its core does (centre crop).
    returns  (P, N) bool in plan order; the others need not run: they change no mask voxel.
    """
    h, w = plan.plane_shape
    t = plan.tile
    out = np.zeros((mask.shape[0], plan.num_tiles), dtype=bool)
    for k, ((y, x), core) in enumerate(zip(plan.origins.tolist(), plan.cores.tolist())):
        y0, y1, x0, x1 = (max(y, 0), min(y + t, h), max(x, 0), min(x + t, w)) if windows else core
        out[:, k] = mask[:, y0:y1, x0:x1].any(axis=(1, 2))
    return out


def _core_windows(plan: TilePlan) -> list[tuple[slice, slice, slice, slice]]:
    """Per tile, in plan order: (plane rows, plane cols, tile rows, tile cols) of its core."""
    windows = []
    for (y, x), (y0, y1, x0, x1) in zip(plan.origins.tolist(), plan.cores.tolist()):
        windows.append((slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)))
    return windows


def _padded_windows(plan: TilePlan) -> list[tuple[slice, slice]]:
    """Per tile, in plan order: its (rows, cols) in the plane padded by `plan.padding`."""
    (top, _), (left, _) = plan.padding
    t = plan.tile
    return [(slice(y + top, y + top + t), slice(x + left, x + left + t)) for y, x in plan.origins.tolist()]


class PlaneAccumulator:
    """Tile outputs in, batch by batch in plane-major order; whole planes out as soon as their last tile is in.

    blend 'center': each plane pixel is copied from the one tile whose core holds it; tile outputs of any
                    dtype, (B, T, T) → planes (H, W) or (B, C, T, T) → planes (C, H, W), the same dtype.
    blend 'gaussian': each plane pixel is the mean of every tile covering it, weighted by
                    `gaussian_weights(T, sigma_scale)` (the float32 products and sums taken in plan order);
                    tile outputs (B, C, T, T) float (logits, or density maps with C = 1) → planes (C, H, W)
                    float32.
    device: where planes are assembled; tile outputs must lie there. A batch may end in the middle of a plane
    and hold tiles of several planes; memory holds one plane being assembled (no list of pending tiles).
    """

    def __init__(self, plan: TilePlan, blend: str, device: torch.device | str = "cpu",
                 sigma_scale: float = DEFAULT_SIGMA_SCALE) -> None:
        if blend not in BLENDS:
            raise ValueError(f"blend {blend!r} is not one of {', '.join(BLENDS)}")
        self.plan, self.blend, self.device = plan, blend, torch.device(device)
        self.planes_done = 0
        self._next_tile = 0  # index in the plan of the next tile to arrive
        self._plane: torch.Tensor | None = None  # the plane being assembled (padded for 'gaussian')
        if blend == "center":
            self._windows = _core_windows(plan)
            return
        self._windows = _padded_windows(plan)
        self._weights = torch.from_numpy(gaussian_weights(plan.tile, sigma_scale).copy()).to(self.device)
        (top, bottom), (left, right) = plan.padding
        h, w = plan.plane_shape
        norm = torch.zeros((h + top + bottom, w + left + right), dtype=torch.float32, device=self.device)
        for rows, cols in self._windows:
            norm[rows, cols] += self._weights
        self._norm = norm[top:top + h, left:left + w]

    @property
    def pending(self) -> int:
        """Tiles of the unfinished plane received so far (0 between planes)."""
        return self._next_tile

    def add(self, tile_outputs: torch.Tensor,
            positions: Sequence[int] | None = None) -> list[tuple[int, torch.Tensor]]:
        """The next B tiles' outputs → the planes they finish (none, one or more, in order), each as
        (plane index counted from 0 at this accumulator's first plane, a new tensor).

        positions: each tile's place in plane-major plan order counted over all planes (plane p, tile t:
        p·num_tiles + t), increasing; None: the tiles that follow the last one. Tiles left out (`segment
        --mask`: tiles that see no mask voxel) add nothing: their pixels stay 0 (their Gaussian weight still
        counts), a plane with a gap is finished by a later plane's tile or by `flush`, and a plane none of
        whose tiles came is never returned."""
        self._check(tile_outputs)
        n = self.plan.num_tiles
        finished = []
        for k, tile_output in enumerate(tile_outputs):
            where = self.planes_done * n + self._next_tile if positions is None else int(positions[k])
            plane, tile = divmod(where, n)
            if self._plane is not None and plane != self.planes_done:
                finished.append((self.planes_done, self._finish()))
            if self._plane is None:
                self.planes_done, self._plane = plane, self._new_plane(tile_output)
            self._put(tile_output, self._windows[tile])
            self._next_tile = tile + 1
            if self._next_tile == n:
                finished.append((self.planes_done, self._finish()))
        return finished

    def flush(self) -> list[tuple[int, torch.Tensor]]:
        """The plane being assembled, finished although tiles of it never came (none: an empty list)."""
        return [] if self._plane is None else [(self.planes_done, self._finish())]

    def _check(self, tile_outputs: torch.Tensor) -> None:
        ndims = (3, 4) if self.blend == "center" else (4,)
        t = self.plan.tile
        if tile_outputs.dim() not in ndims or tuple(tile_outputs.shape[-2:]) != (t, t):
            raise ValueError(f"{self.blend} blending takes tile outputs of {' or '.join(f'{n}D' for n in ndims)} "
                             f"shape (B, ..., {t}, {t}), got {tuple(tile_outputs.shape)}")
        if self.blend == "gaussian" and not tile_outputs.is_floating_point():
            raise ValueError(f"gaussian blending takes float tile outputs, got {tile_outputs.dtype}")

    def _new_plane(self, tile_output: torch.Tensor) -> torch.Tensor:
        lead = tuple(tile_output.shape[:-2])
        if self.blend == "center":  # zeros: pixels of tiles left out stay 0
            return torch.zeros(lead + tuple(self.plan.plane_shape), dtype=tile_output.dtype, device=self.device)
        (top, bottom), (left, right) = self.plan.padding
        h, w = self.plan.plane_shape
        return torch.zeros(lead + (h + top + bottom, w + left + right), dtype=torch.float32, device=self.device)

    def _put(self, tile_output: torch.Tensor, window: tuple[slice, ...]) -> None:
        if self.blend == "center":
            rows, cols, tile_rows, tile_cols = window
            self._plane[..., rows, cols] = tile_output[..., tile_rows, tile_cols]
        else:
            rows, cols = window
            self._plane[:, rows, cols] += tile_output.float() * self._weights

    def _finish(self) -> torch.Tensor:
        plane, self._plane, self._next_tile = self._plane, None, 0
        self.planes_done += 1
        if self.blend == "center":
            return plane
        (top, _), (left, _) = self.plan.padding
        h, w = self.plan.plane_shape
        return plane[:, top:top + h, left:left + w] / self._norm
