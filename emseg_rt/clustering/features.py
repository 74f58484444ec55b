"""Expand-stride pixel features of a random sample of voxels: what HiS4MAE's K-means runs on (§3.3).

A pixel's feature is the one inference uses: the plane is tiled by the runtime's tiler (`plan_tiles`, tile =
the FOV, tile stride T − 2·halo = HiS4MAE's expand stride S), the tile whose core holds the pixel is encoded by
the FOV encoder, and its patch tokens are bilinearly interpolated to that pixel exactly as
`F.interpolate(tokens, (T, T), mode="bilinear", align_corners=False)` would (the head interpolates token
scores, which is the same by linearity). Only the sampled pixels' features are formed, from their four
source tokens (`interpolate_grid_at`); no (B, C, T, T) map is built, and only tiles whose core holds a
sample are encoded. Planes are read and encoded one at a time, so memory is the sample's features plus one
plane's tiles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from emseg_rt.errors import EmsegError
from emseg_rt.progress import Progress
from emseg_rt.tiling import TilePlan, extract_tiles, plan_tiles

DEFAULT_FRACTION = 1e-3  # HiS4MAE §3.3: centres from a subset one-thousandth the size of X


def bilinear_taps(coords: np.ndarray, grid: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear (align_corners=False) source taps along one axis of a `grid` → `size` upsampling.

    coords:  (N,) int output pixel positions in 0..size-1.
    returns  low (N,) int64 and high (N,) int64 source indices, and (N,) float32 weight of `high`
             (`low` gets 1 − weight): source = max((coord + 0.5)·grid/size − 0.5, 0), as ATen computes it.
    """
    source = np.maximum((np.asarray(coords, dtype=np.float64) + 0.5) * (grid / size) - 0.5, 0.0)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, grid - 1)
    return low, high, (source - low).astype(np.float32)


def interpolate_grid_at(grid_values: torch.Tensor, batch_index: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                        size: int) -> torch.Tensor:
    """Values of a bilinearly upsampled grid at a few pixels, without building the upsampled map.

    grid_values: (B, D, h, w) float (patch tokens, or per-centre token scores).
    batch_index: (N,) int, which grid each pixel reads; ys, xs: (N,) int pixel positions in a size×size output.
    returns      (N, D) float32 = F.interpolate(grid_values, (size, size), mode="bilinear",
                 align_corners=False)[batch_index, :, ys, xs] (equal up to float rounding).
    """
    y0, y1, wy = bilinear_taps(ys, grid_values.shape[-2], size)
    x0, x1, wx = bilinear_taps(xs, grid_values.shape[-1], size)
    device = grid_values.device
    b = torch.as_tensor(np.asarray(batch_index, dtype=np.int64), device=device)
    wy_t = torch.as_tensor(wy, device=device)[:, None]
    wx_t = torch.as_tensor(wx, device=device)[:, None]
    values = grid_values.float()

    def at(rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:  # (N, D)
        return values[b, :, torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)]

    top = (1 - wx_t) * at(y0, x0) + wx_t * at(y0, x1)
    bottom = (1 - wx_t) * at(y1, x0) + wx_t * at(y1, x1)
    return (1 - wy_t) * top + wy_t * bottom


def core_tile_index(plan: TilePlan, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(N,) int64 index (plan order) of the tile whose core holds each plane pixel (ys, xs): the tile that
    centre-crop stitching takes that pixel from."""
    row_starts, col_starts = np.unique(plan.cores[:, 0]), np.unique(plan.cores[:, 2])
    rows = np.searchsorted(row_starts, ys, side="right") - 1
    cols = np.searchsorted(col_starts, xs, side="right") - 1
    return rows * len(col_starts) + cols


def sample_positions(shape: tuple[int, int, int], fraction: float = DEFAULT_FRACTION, seed: int = 0,
                     min_samples: int = 0) -> np.ndarray:
    """A seeded uniform sample of distinct voxels, max(round(fraction·voxels), min_samples, 1) of them (at most
    every voxel).

    shape:   (Z, Y, X).
    returns  (N, 3) int64 (z, y, x), sorted in C order (plane by plane).
    """
    if not 0.0 < fraction <= 1.0:
        raise EmsegError(f"--fraction {fraction} must be in (0, 1] (the share of voxels sampled; HiS4MAE: 0.001)")
    total = int(np.prod(shape))
    count = min(max(round(fraction * total), int(min_samples), 1), total)
    flat = np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode and without autograd for the block; its training flag is restored after."""
    training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield module
    finally:
        module.train(training)


def plane_features(encoder: nn.Module, plane: np.ndarray, plan: TilePlan, pixels: np.ndarray,
                   batch: int = 64) -> np.ndarray:
    """Expand-stride features of some pixels of one plane.

    plane:   (H, W) uint8; plan: its tile plan; pixels: (n, 2) int (y, x) plane positions.
    returns  (n, C) float32: each pixel's interpolated token feature in the tile whose core holds it.
    """
    device = next(encoder.parameters()).device
    tile_of = core_tile_index(plan, pixels[:, 0], pixels[:, 1])
    needed = np.unique(tile_of)
    tiles = extract_tiles(plane, plan)[needed]  # (m, T, T): only tiles whose core holds a sample
    out: np.ndarray | None = None
    for start in range(0, len(needed), batch):
        chunk = needed[start:start + batch]
        tokens = encoder(torch.from_numpy(np.ascontiguousarray(tiles[start:start + batch][:, None])).to(device))
        inside = (tile_of >= chunk[0]) & (tile_of <= chunk[-1])  # `needed` is sorted: chunk is a range of it
        tiles_of_inside = tile_of[inside]
        ys = pixels[inside, 0] - plan.origins[tiles_of_inside, 0]
        xs = pixels[inside, 1] - plan.origins[tiles_of_inside, 1]
        values = interpolate_grid_at(tokens, np.searchsorted(chunk, tiles_of_inside), ys, xs, plan.tile)
        if out is None:
            out = np.empty((len(pixels), values.shape[1]), dtype=np.float32)
        out[inside] = values.cpu().numpy()
    assert out is not None
    return out


def sample_pixel_features(pipeline: nn.Module, volume: np.ndarray, *, fraction: float = DEFAULT_FRACTION,
                          halo: int | None = None, seed: int = 0, batch: int = 64, min_samples: int = 0,
                          progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Expand-stride features of a seeded random sample of voxels (see the module docstring).

    pipeline:    a maester / his4mae pipeline (uses `pipeline.encoders["fov_encoder"]` and `config.tile`).
    volume:      (Z, Y, X) or (Y, X) uint8, a numpy array or anything that reads one z plane with volume[z].
    fraction:    share of voxels sampled (`sample_positions`; at least `min_samples`).
    halo:        tile halo as in the runtime (None: tile // 8), so features match `segment` exactly.
    batch:       tiles per encoder call.
    progress:    a reporter whose total becomes the number of planes holding samples, advanced plane by plane.
    returns      features (N, C) float32 and positions (N, 3) int64 (z, y, x; z = 0 for a 2D volume), in the
                 same order, sorted plane by plane.
    """
    if volume.dtype != np.uint8:
        raise EmsegError(f"the volume is {volume.dtype}; cluster fitting reads uint8 intensities (what the model sees)")
    planes = np.asarray(volume)[None] if volume.ndim == 2 else volume
    tile = pipeline.config.tile
    plan = plan_tiles(tuple(planes.shape[1:]), tile, tile // 8 if halo is None else int(halo))
    positions = sample_positions(tuple(planes.shape), fraction, seed, min_samples)
    encoder = pipeline.encoders["fov_encoder"]
    bounds = np.searchsorted(positions[:, 0], np.arange(planes.shape[0] + 1))
    features = np.empty((len(positions), pipeline.config.fov_encoder.embed_dim), dtype=np.float32)
    sampled_planes = np.unique(positions[:, 0])
    if progress is not None:
        progress.update(progress.done, total=progress.done + len(sampled_planes))
    with eval_mode(encoder):
        for z in sampled_planes:
            rows = slice(bounds[z], bounds[z + 1])
            plane = np.asarray(planes[int(z)], dtype=np.uint8)
            features[rows] = plane_features(encoder, plane, plan, positions[rows, 1:], batch)
            if progress is not None:
                progress.advance(1)
    return features, positions
