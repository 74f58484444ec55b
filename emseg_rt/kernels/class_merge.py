"""Class merge without the tile-size logits: low-resolution class logits → label image.

The heads' `ClassMerge` upsamples (B, K, h, w) class logits bilinearly to the (B, K, T, T) tile, takes the
per-pixel maximum over K and writes k + 1 for the winning class where its logit is above a threshold, else 0
(background). When the runtime wants labels only (centre-crop stitching, the default) the (B, K, T, T)
float32 logits are written and read for nothing: at T = 1024 and K = 3 that is 12 MiB per tile.
`class_merge_triton` computes the same labels in one fused kernel that allocates nothing but the labels.

The rule (`class_merge_reference`, exactly what `ClassMerge` computes):

    logits = F.interpolate(low_res.float(), (T, T), mode="bilinear", align_corners=False)
    best, k = logits.max(dim=1)                     # lowest index among exactly equal maxima
    label = k + 1 where best > threshold, else 0    # a NaN logit in any class gives 0

Both paths compute each upsampled logit with PyTorch's source indices and weights in float32; the kernel may
round the weighted sum differently in the last bit (fused multiply-adds on a GPU), which can change a label
only where two classes, or a class and the threshold, are equal to float32 rounding.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from emseg_rt.kernels import _class_merge_triton
from emseg_rt.kernels.dispatch import resolve_impl
LABEL_LIMITS = {torch.uint8: 2**8 - 1, torch.int16: 2**15 - 1, torch.int32: 2**31 - 1, torch.int64: 2**63 - 1}


def _check_merge_inputs(low_res: torch.Tensor, tile: int, labels_dtype: torch.dtype) -> None:
    if low_res.dim() != 4 or low_res.shape[1] < 1:
        raise ValueError(f"low_res must be (B, K, h, w) with K >= 1, got shape {tuple(low_res.shape)}")
    if not low_res.is_floating_point():
        raise ValueError(f"low_res must be float logits, got {low_res.dtype}")
    if int(tile) < 1:
        raise ValueError(f"tile must be a positive size, got {tile}")
    if labels_dtype not in LABEL_LIMITS:
        raise ValueError(f"labels_dtype must be one of {list(LABEL_LIMITS)}, got {labels_dtype}")
    if low_res.shape[1] > LABEL_LIMITS[labels_dtype]:
        raise ValueError(f"{low_res.shape[1]} classes (labels 0..{low_res.shape[1]}) do not fit in {labels_dtype}")


def upsample_class_logits(low_res: torch.Tensor, tile: int) -> torch.Tensor:
    """low_res (B, K, h, w) float → (B, K, T, T) float32 logits, bilinear as SAM's postprocess; logits already
    at the tile's size (a pixel refinement's) are returned as they are (bilinear at scale 1 is the identity)."""
    if tuple(low_res.shape[-2:]) == (tile, tile):
        return low_res.float()
    return F.interpolate(low_res.float(), size=(tile, tile), mode="bilinear", align_corners=False)


def labels_from_logits(logits: torch.Tensor, threshold: float, labels_dtype: torch.dtype) -> torch.Tensor:
    """logits (B, K, T, T) float → labels (B, T, T) labels_dtype: k + 1 for the class with the largest logit
    (lowest k among equal maxima), 0 where that logit is not above `threshold`."""
    best, best_class = logits.max(dim=1)
    labels = torch.where(best > threshold, best_class + 1, torch.zeros_like(best_class))
    return labels.to(labels_dtype)


def class_merge_reference(low_res: torch.Tensor, tile: int, threshold: float = 0.0,
                          labels_dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """The class-merge rule in torch (any device): upsample, argmax over K, threshold.

    low_res:  (B, K, h, w) float class logits.
    returns   (B, T, T) labels_dtype in [0, K]; builds the (B, K, T, T) float32 logits on the way.
    """
    _check_merge_inputs(low_res, tile, labels_dtype)
    return labels_from_logits(upsample_class_logits(low_res, int(tile)), threshold, labels_dtype)


def class_merge_triton(low_res: torch.Tensor, tile: int, threshold: float = 0.0,
                       labels_dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Fused Triton kernel: per output pixel, PyTorch's bilinear weights of its four source logits, a loop
    over K keeping the running maximum, the threshold, the label. Nothing but the labels is allocated.

    low_res:  (B, K, h, w) float32/float16/bfloat16 on CUDA (interpolated in float32). CPU tensors work only
              under the Triton interpreter (TRITON_INTERPRET=1, set before triton loads).
    returns   (B, T, T) labels_dtype in [0, K], equal to `class_merge_reference` (module docstring).
    Raises ImportError when triton is not installed.
    """
    _check_merge_inputs(low_res, tile, labels_dtype)
    if low_res.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"class_merge_triton needs CUDA tensors (got {low_res.device}); on a CPU use "
                         "class_merge_reference, or set TRITON_INTERPRET=1 before importing triton")
    return _class_merge_triton.launch(low_res, int(tile), int(tile), threshold, labels_dtype)


@torch.library.custom_op("emseg_rt::class_merge", mutates_args=())
def class_merge_op(low_res: torch.Tensor, tile: int, threshold: float, labels_dtype: torch.dtype) -> torch.Tensor:
    """`class_merge_triton` as a torch operator (opaque to torch.compile, `dispatch`): low-resolution logits
    (B, K, h, w) → labels (B, T, T)."""
    return class_merge_triton(low_res, tile, threshold, labels_dtype)


@class_merge_op.register_fake
def _class_merge_fake(low_res: torch.Tensor, tile: int, threshold: float, labels_dtype: torch.dtype) -> torch.Tensor:
    return low_res.new_empty((low_res.shape[0], tile, tile), dtype=labels_dtype)


def class_merge_labels(low_res: torch.Tensor, tile: int, threshold: float = 0.0,
                       labels_dtype: torch.dtype = torch.uint8, *, impl: str = "auto") -> torch.Tensor:
    """Labels of the class merge without materialising the tile-size logits where a kernel can.

    low_res:  (B, K, h, w) float class logits; tile: T.
    impl:     'auto' (Triton for CUDA tensors when triton imports and nothing is tracing, else the torch
              reference), 'triton' or 'torch'.
    returns   (B, T, T) labels_dtype: k + 1 of the class with the largest upsampled logit, 0 = background.
    """
    if resolve_impl(impl, low_res.device) == "triton":
        _check_merge_inputs(low_res, tile, labels_dtype)
        return class_merge_op(low_res, int(tile), float(threshold), labels_dtype)
    return class_merge_reference(low_res, tile, threshold, labels_dtype)
