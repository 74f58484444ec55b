"""Training tiles: random crops of (image, labels) slices with flips and 90° rotations, and the fixed grid of
crops the embedding cache holds (`tile_starts`). Inference tiling is `emseg_rt.tiling`'s alone.
"""

from __future__ import annotations

import numpy as np
import torch

from emseg_rt.tiling import extract_tiles, plan_tiles


def runtime_tile(image: np.ndarray, labels: np.ndarray, axis: int, index: int, tile: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random tile of plane `index` along `axis` of a volume, exactly as the runtime feeds it to the model:
    the tiler's own plan (`emseg_rt.tiling.plan_tiles`, halo T/8) and cutting, so edge tiles carry its reflect
    padding and a plane smaller than a tile is padded to one (an xz plane of a thin volume). The labels are
    cut by the same plan, so padding is labelled as it looks.

    image, labels: (Z, Y, X), the same shape; axis 0 gives an xy plane, 1 an xz plane (Z, X), 2 yz (Z, Y).
    returns        (tile (T, T) of image's dtype, labels (T, T)).
    """
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ")
    plane, plane_labels = np.take(image, index, axis), np.take(labels, index, axis)
    plan = plan_tiles(plane.shape, tile, tile // 8)
    n = int(rng.integers(plan.num_tiles))
    return extract_tiles(plane, plan)[n], extract_tiles(plane_labels, plan)[n]


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of crops of side `tile` every `stride` covering [0, length), all inside it (the last one
    flush with the end, so training crops never need padding); [0] when length <= tile."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


class TileSampler:
    """Draws random (tile, labels) crops from a list of volumes.

    volumes:  [(image (Z, Y, X) uint8, labels (Z, Y, X) uint8), ...], each Y, X >= tile.
    tile:     side of the square crops.
    """

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]], tile: int, seed: int = 0) -> None:
        for image, labels in volumes:
            if image.shape != labels.shape:
                raise ValueError(f"image {image.shape} and labels {labels.shape} differ")
            if min(image.shape[-2:]) < tile:
                raise ValueError(f"volume {image.shape} is smaller than the tile {tile}")
        self.volumes = volumes
        self.tile = tile
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """→ tiles (B, 1, T, T) uint8 and labels (B, T, T) uint8."""
        t = self.tile
        tiles = np.empty((batch, 1, t, t), np.uint8)
        labels = np.empty((batch, t, t), np.uint8)
        for i in range(batch):
            image, truth = self.volumes[int(self.rng.integers(len(self.volumes)))]
            z = int(self.rng.integers(image.shape[0]))
            y = int(self.rng.integers(image.shape[1] - t + 1))
            x = int(self.rng.integers(image.shape[2] - t + 1))
            crop, crop_labels = image[z, y : y + t, x : x + t], truth[z, y : y + t, x : x + t]
            k = int(self.rng.integers(4))
            crop, crop_labels = np.rot90(crop, k), np.rot90(crop_labels, k)
            if self.rng.random() < 0.5:
                crop, crop_labels = crop[:, ::-1], crop_labels[:, ::-1]
            tiles[i, 0], labels[i] = crop, crop_labels
        return torch.from_numpy(tiles), torch.from_numpy(labels)
