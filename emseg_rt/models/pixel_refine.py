"""Full-resolution refinement of class logits from the tile's own pixels (`PixelRefineConfig`, issue 27).

The pixel encoder is one of the pipeline's encoders (its embedding, `pixel_embedding`, is a component input of
the head like the others), and the head's `LogitRefiner` runs between SAM's decoder and the class merge.
"""

from __future__ import annotations

import torch
from torch import nn

from emseg_rt.models.configs import PixelRefineConfig

LOGIT_CLAMP = 10.0  # logits beyond ±10 are certain: clamped before they are features, so scales stay alike
LOGIT_SCALE = 5.0


class PixelEncoder(nn.Module):
    """uint8 tiles (B, 1, T, T) → per-pixel features (B, W, T, T): two 3×3 convolutions with ReLU on the tile
    scaled to [−1, 1]."""

    def __init__(self, config: PixelRefineConfig) -> None:
        super().__init__()
        width = config.width
        self.convs = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.ReLU())

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.convs(tiles.float() / 127.5 - 1.0)


class LogitRefiner(nn.Module):
    """(pixel features (B, W, T, T), class logits (B, K, T, T)) → refined logits (B, K, T, T): the logits plus
    a residual of three 3×3 convolutions (the second dilated 2) over the features and the clamped, scaled
    logits. The last convolution starts at zero, so an untrained refiner returns the logits unchanged."""

    def __init__(self, num_classes: int, config: PixelRefineConfig) -> None:
        super().__init__()
        width = config.width
        self.convs = nn.Sequential(nn.Conv2d(width + num_classes, width, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
                                   nn.Conv2d(width, num_classes, 3, padding=1))
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, pixel_embedding: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        scaled = logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP) / LOGIT_SCALE
        return logits + self.convs(torch.cat([pixel_embedding, scaled.to(pixel_embedding.dtype)], dim=1))
