"""Training tiles: random crops of (image, labels) slices with flips and 90° rotations, and the fixed grid of
crops the embedding cache holds (`tile_starts`). Inference tiling is `emseg_rt.tiling`'s alone.
"""

from __future__ import annotations

import numpy as np
import torch


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
