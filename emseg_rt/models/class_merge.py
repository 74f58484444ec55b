"""Class merge: per-class low-resolution logits → tile-size logits and a label image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def label_dtype(num_classes: int) -> torch.dtype:
    """uint8 labels up to 255 classes, int32 above (0 is background). torch has no uint16 arithmetic."""
    return torch.uint8 if num_classes <= 255 else torch.int32


class ClassMerge(nn.Module):
    """Upsample class logits to the tile and take the per-pixel argmax, background where none is > 0."""

    def __init__(self, tile: int, num_classes: int, threshold: float = 0.0) -> None:
        super().__init__()
        self.tile = tile
        self.num_classes = num_classes
        self.threshold = threshold

    def forward(self, low_res_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """low_res_logits: (B, K, h, w) float.

        returns logits (B, K, T, T) float32 (bilinear, as SAM's postprocess) and labels (B, T, T)
        uint8: k+1 for the class with the largest logit, 0 where no logit is above the threshold.
        """
        logits = F.interpolate(
            low_res_logits.float(), size=(self.tile, self.tile), mode="bilinear", align_corners=False
        )
        best, best_class = logits.max(dim=1)
        labels = torch.where(best > self.threshold, best_class + 1, torch.zeros_like(best_class))
        return {"logits": logits, "labels": labels.to(label_dtype(self.num_classes))}
