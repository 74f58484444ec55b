"""The fused Triton kernel behind `class_merge_triton` (imported only when that runs).

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

try:
    import triton
    import triton.language as tl
except ImportError:  # no triton on this platform: `launch` says so
    triton = None

from emseg_rt.kernels._bilinear_triton import torch_scale

if triton is not None:
    from emseg_rt.kernels._bilinear_triton import bilinear_source

BLOCK_PIXELS = 256  # output pixels per program
NUM_WARPS = 4
MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension (one per image)

if triton is not None:

    @triton.jit
    def _class_merge_kernel(logits_ptr, labels_ptr, classes, in_h, in_w, out_h, out_w, scale_h, scale_w,
                            threshold, BLOCK: tl.constexpr):
        image = tl.program_id(1).to(tl.int64)
        pixel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        pixels_out = out_h * out_w
        inside = pixel < pixels_out
        y0, y1, wy0, wy1 = bilinear_source(pixel // out_w, in_h, scale_h)
        x0, x1, wx0, wx1 = bilinear_source(pixel % out_w, in_w, scale_w)

        plane = in_h * in_w
        offset00 = y0 * in_w + x0
        offset01 = y0 * in_w + x1
        offset10 = y1 * in_w + x0
        offset11 = y1 * in_w + x1
        image_logits = logits_ptr + image * classes * plane

        best_logit = tl.full([BLOCK], float("-inf"), tl.float32)
        best_class = tl.zeros([BLOCK], tl.int32)
        saw_nan = tl.zeros([BLOCK], tl.int1)
        for k in range(classes):
            class_logits = image_logits + k * plane
            l00 = tl.load(class_logits + offset00, mask=inside, other=0.0).to(tl.float32)
            l01 = tl.load(class_logits + offset01, mask=inside, other=0.0).to(tl.float32)
            l10 = tl.load(class_logits + offset10, mask=inside, other=0.0).to(tl.float32)
            l11 = tl.load(class_logits + offset11, mask=inside, other=0.0).to(tl.float32)
            logit = wy0 * (wx0 * l00 + wx1 * l01) + wy1 * (wx0 * l10 + wx1 * l11)
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
    if triton is None:
        raise ImportError("class_merge_triton needs triton (pip install 'emseg-rt[kernels]', Linux)")
    batch, classes, in_h, in_w = logits.shape
    if batch > MAX_GRID_Y:
        raise ValueError(f"at most {MAX_GRID_Y} images per call, got {batch}")
    if classes * in_h * in_w >= 2**31 or out_h * out_w >= 2**31:
        raise ValueError("one image's logits or labels exceed 2**31 elements")
    logits = logits.contiguous()
    labels = torch.empty((batch, out_h, out_w), dtype=labels_dtype, device=logits.device)
    grid = (triton.cdiv(out_h * out_w, BLOCK_PIXELS), batch)
    _class_merge_kernel[grid](logits, labels, classes, in_h, in_w, out_h, out_w,
                              torch_scale(in_h, out_h), torch_scale(in_w, out_w), float(threshold),
                              BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    return labels
