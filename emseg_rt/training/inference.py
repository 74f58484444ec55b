"""A simple tiled slice-by-slice segmentation loop over a volume, for validation during training.

Tiles overlap by `2·halo`; each tile's centre is kept (centre-crop stitching); edges are padded by
reflection, never dropped. The runtime (`emseg_rt.runtime`) is the production path; this loop exists so
training can validate without it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with windows of `tile` every `stride` (last one flush with the end)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


@torch.no_grad()
def segment_slices(model: nn.Module, volume: np.ndarray, halo: int = 16, batch: int = 16) -> np.ndarray:
    """volume (Z, Y, X) uint8 → labels (Z, Y, X) uint8, every z-slice segmented in overlapping tiles."""
    tile = model.config.tile
    core = tile - 2 * halo
    nz, ny, nx = volume.shape
    padded = np.pad(volume, ((0, 0), (halo, halo + max(0, tile - ny)), (halo, halo + max(0, tile - nx))), mode="reflect")
    out = np.zeros(volume.shape, np.uint8)
    ys = tile_starts(ny, core, core)
    xs = tile_starts(nx, core, core)
    jobs = [(z, y, x) for z in range(nz) for y in ys for x in xs]
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        tiles = np.stack([padded[z, y : y + tile, x : x + tile] for z, y, x in chunk])[:, None]
        labels = model(torch.from_numpy(np.ascontiguousarray(tiles)))["labels"].numpy()
        for (z, y, x), lab in zip(chunk, labels):
            h, w = min(core, ny - y), min(core, nx - x)
            out[z, y : y + h, x : x + w] = lab[halo : halo + h, halo : halo + w]
    return out
