"""Class merge: per-class low-resolution logits → tile-size logits and a label image."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from emseg_rt.constants import label_dtype
from emseg_rt.kernels.class_merge import class_merge_labels, labels_from_logits, upsample_class_logits


def model_label_dtype(num_classes: int) -> torch.dtype:
    """The labels' dtype inside a model (and its exported graph): `constants.label_dtype`'s uint8, and int32
    where that says a wider type (torch and the kernels have no uint16 arithmetic; the runtime stores uint16)."""
    return torch.uint8 if label_dtype(num_classes) == np.uint8 else torch.int32


class ClassMerge(nn.Module):
    """Upsample class logits to the tile and take the per-pixel argmax, background where none is > 0."""

    def __init__(self, tile: int, num_classes: int, threshold: float = 0.0) -> None:
        super().__init__()
        self.tile = tile
        self.num_classes = num_classes
        self.threshold = threshold

    def forward(self, low_res_logits: torch.Tensor, want_logits: bool = True) -> dict[str, torch.Tensor]:
        """low_res_logits: (B, K, h, w) float.

        want_logits: False returns labels only, without building the tile-size logits (the fused Triton
                     kernel on CUDA, the same rule in torch elsewhere: `emseg_rt.kernels.class_merge`).
        returns logits (B, K, T, T) float32 (bilinear, as SAM's postprocess; unless want_logits is False) and
        labels (B, T, T) uint8: k+1 for the class with the largest logit, 0 where no logit is above the
        threshold.
        """
        dtype = model_label_dtype(self.num_classes)
        if not want_logits:
            return {"labels": class_merge_labels(low_res_logits, self.tile, self.threshold, dtype)}
        logits = upsample_class_logits(low_res_logits, self.tile)
        return {"logits": logits, "labels": labels_from_logits(logits, self.threshold, dtype)}
