"""The fused Triton kernel behind `class_merge_triton` (`launch`; raises without triton).

One program labels BLOCK consecutive output pixels of one image. For each pixel it computes the four source
positions and weights exactly as PyTorch's bilinear upsampling with align_corners=False does
(`_bilinear_triton.bilinear_source`), and

    value = λy0 · (λx0 · l[y0, x0] + λx1 · l[y0, x1]) + λy1 · (λx0 · l[y1, x0] + λx1 · l[y1, x1])

per class, in float32, walking the K logit planes with a running maximum and its index (strict >: the lowest
index wins exact ties, as torch.max over a dimension). The label is k + 1 for the winning class k where the
maximum is > threshold, else 0; a pixel with a NaN logit in any class gets 0, as torch's max (which returns
the NaN) followed by `NaN > threshold` does. Nothing but the labels is written.

This module imports without triton (the package's import test walks every module); `launch` then raises.
"""

from __future__ import annotations

import torch

from emseg_rt.kernels._bilinear_triton import BLOCK_PIXELS, NUM_WARPS, check_launch, tl, torch_scale, triton

if triton is not None:
    from emseg_rt.kernels._bilinear_triton import bilinear_sample, bilinear_taps, pixel_block

    @triton.jit
    def _class_merge_kernel(logits_ptr, labels_ptr, classes, in_h, in_w, out_h, out_w, scale_h, scale_w,
                            threshold, BLOCK: tl.constexpr):
        image, pixel, pixels_out, inside = pixel_block(out_h, out_w, BLOCK)
        o00, o01, o10, o11, wy0, wy1, wx0, wx1 = bilinear_taps(pixel, out_w, in_h, in_w, scale_h, scale_w)
        plane = in_h * in_w
        image_logits = logits_ptr + image * classes * plane

        best_logit = tl.full([BLOCK], float("-inf"), tl.float32)
        best_class = tl.zeros([BLOCK], tl.int32)
        saw_nan = tl.zeros([BLOCK], tl.int1)
        for k in range(classes):
            logit = bilinear_sample(image_logits + k * plane, o00, o01, o10, o11, wy0, wy1, wx0, wx1, inside)
            better = logit > best_logit  # class 0 stays the winner where every logit is −inf, as in torch
            best_logit = tl.where(better, logit, best_logit)
            best_class = tl.where(better, k, best_class)
            saw_nan = saw_nan | (logit != logit)

        foreground = (best_logit > threshold) & (saw_nan == 0)
        labels = tl.where(foreground, best_class + 1, 0)
        tl.store(labels_ptr + image * pixels_out + pixel, labels.to(labels_ptr.dtype.element_ty), mask=inside)


def launch(logits: torch.Tensor, out_h: int, out_w: int, threshold: float,
           labels_dtype: torch.dtype) -> torch.Tensor:
    """logits (B, K, h, w) float → labels (B, out_h, out_w) labels_dtype. Shapes are checked by the caller."""
    grid = check_launch(logits, out_h, out_w, "class_merge_triton", "logits")
    batch, classes, in_h, in_w = logits.shape
    logits = logits.contiguous()
    labels = torch.empty((batch, out_h, out_w), dtype=labels_dtype, device=logits.device)
    _class_merge_kernel[grid](logits, labels, classes, in_h, in_w, out_h, out_w,
                              torch_scale(in_h, out_h), torch_scale(in_w, out_w), float(threshold),
                              BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    return labels
