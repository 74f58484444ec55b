"""Stitched or blended logits → what the runtime writes: label planes (the kernels' class-merge rule,
`kernels.class_merge.labels_from_logits`, the model's own) and uint8 probabilities.

    labels = merge_logits(logits, threshold, np.dtype(np.uint8))   # (K, H, W) → (H, W), on the logits' device
    probs = probabilities_uint8(logits.numpy())                     # (K, H, W) uint8
"""

from __future__ import annotations

import numpy as np
import torch

from emseg_rt.kernels.class_merge import labels_from_logits

_TORCH_LABEL_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16,
                       np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}


def torch_label_dtype(label_type: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy label dtype (uint8, uint16, int32, int64): labels are stored in it."""
    try:
        return _TORCH_LABEL_DTYPES[np.dtype(label_type)]
    except KeyError:
        raise ValueError(f"labels of dtype {np.dtype(label_type)} are not supported") from None


def merge_logits(logits: torch.Tensor, threshold: float, label_type: np.dtype) -> torch.Tensor:
    """Class merge of stitched planes or tiles on their device.

    logits:  (K, H, W) or (B, K, H, W) float.
    returns  (H, W) or (B, H, W) labels of the torch counterpart of `label_type`: k + 1 for the largest logit
             (the lowest k on ties), 0 where it is not above `threshold` (NaN: 0).
    """
    if logits.dim() not in (3, 4):
        raise ValueError(f"logits must be (K, H, W) or (B, K, H, W), got shape {tuple(logits.shape)}")
    dtype = torch_label_dtype(label_type)
    if logits.dim() == 3:
        return labels_from_logits(logits[None], threshold, dtype)[0]
    return labels_from_logits(logits, threshold, dtype)


def probabilities_uint8(logits: np.ndarray) -> np.ndarray:
    """(K, H, W) per-class logits → (K, H, W) uint8 per-class probabilities sigmoid(logit)·255, rounded."""
    prob = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float32), -60, 60)))
    return np.rint(prob * 255.0).astype(np.uint8)
