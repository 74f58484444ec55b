"""The fused Triton kernel behind `nearest_centroid_triton` (imported only when that runs).

One program labels BLOCK consecutive output pixels of one image. For each pixel it computes the four source
positions and weights exactly as PyTorch's bilinear upsampling with align_corners=False does
(`_bilinear_triton.bilinear_source`), and

    value = λy0 · (λx0 · s[y0, x0] + λx1 · s[y0, x1]) + λy1 · (λx0 · s[y1, x0] + λx1 · s[y1, x1])

then walks the K score planes keeping the running minimum and its index (strict <: the lowest index wins
exact ties, as torch.argmin). The four gathers per centre hit the same few tokens for neighbouring pixels,
so they come from cache; nothing but the labels is written.

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
    def _nearest_centroid_kernel(scores_ptr, labels_ptr, clusters, in_h, in_w, out_h, out_w, scale_h, scale_w,
                                 BLOCK: tl.constexpr):
        image = tl.program_id(1).to(tl.int64)
        pixel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        pixels_out = out_h * out_w
        inside = pixel < pixels_out
        out_y = pixel // out_w
        out_x = pixel % out_w

        y0, y1, wy0, wy1 = bilinear_source(out_y, in_h, scale_h)
        x0, x1, wx0, wx1 = bilinear_source(out_x, in_w, scale_w)

        plane = in_h * in_w
        offset00 = y0 * in_w + x0
        offset01 = y0 * in_w + x1
        offset10 = y1 * in_w + x0
        offset11 = y1 * in_w + x1
        image_scores = scores_ptr + image * clusters * plane

        best_score = tl.full([BLOCK], float("inf"), tl.float32)
        best_label = tl.zeros([BLOCK], tl.int32)
        for centre in range(clusters):
            centre_scores = image_scores + centre * plane
            s00 = tl.load(centre_scores + offset00, mask=inside, other=0.0).to(tl.float32)
            s01 = tl.load(centre_scores + offset01, mask=inside, other=0.0).to(tl.float32)
            s10 = tl.load(centre_scores + offset10, mask=inside, other=0.0).to(tl.float32)
            s11 = tl.load(centre_scores + offset11, mask=inside, other=0.0).to(tl.float32)
            score = wy0 * (wx0 * s00 + wx1 * s01) + wy1 * (wx0 * s10 + wx1 * s11)
            better = score < best_score
            best_score = tl.where(better, score, best_score)
            best_label = tl.where(better, centre, best_label)

        tl.store(labels_ptr + image * pixels_out + pixel, best_label.to(labels_ptr.dtype.element_ty), mask=inside)


def launch(scores: torch.Tensor, out_h: int, out_w: int, labels_dtype: torch.dtype) -> torch.Tensor:
    """scores (B, K, h, w) float → labels (B, out_h, out_w) labels_dtype. Shapes are checked by the caller."""
    if triton is None:
        raise ImportError("nearest_centroid_triton needs triton (pip install 'emseg-rt[kernels]', Linux)")
    batch, clusters, in_h, in_w = scores.shape
    if batch > MAX_GRID_Y:
        raise ValueError(f"at most {MAX_GRID_Y} images per call, got {batch}")
    if clusters * in_h * in_w >= 2**31 or out_h * out_w >= 2**31:
        raise ValueError("one image's scores or labels exceed 2**31 elements")
    scores = scores.contiguous()
    labels = torch.empty((batch, out_h, out_w), dtype=labels_dtype, device=scores.device)
    grid = (triton.cdiv(out_h * out_w, BLOCK_PIXELS), batch)
    _nearest_centroid_kernel[grid](scores, labels, clusters, in_h, in_w, out_h, out_w,
                                   torch_scale(in_h, out_h), torch_scale(in_w, out_w),
                                   BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    return labels
