"""The fused Triton kernel behind `nearest_centroid_triton` (`launch`; raises without triton).

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

from emseg_rt.kernels._bilinear_triton import BLOCK_PIXELS, NUM_WARPS, check_launch, tl, torch_scale, triton

if triton is not None:
    from emseg_rt.kernels._bilinear_triton import bilinear_sample, bilinear_taps, pixel_block

    @triton.jit
    def _nearest_centroid_kernel(scores_ptr, labels_ptr, clusters, in_h, in_w, out_h, out_w, scale_h, scale_w,
                                 BLOCK: tl.constexpr):
        image, pixel, pixels_out, inside = pixel_block(out_h, out_w, BLOCK)
        o00, o01, o10, o11, wy0, wy1, wx0, wx1 = bilinear_taps(pixel, out_w, in_h, in_w, scale_h, scale_w)
        plane = in_h * in_w
        image_scores = scores_ptr + image * clusters * plane

        best_score = tl.full([BLOCK], float("inf"), tl.float32)
        best_label = tl.zeros([BLOCK], tl.int32)
        for centre in range(clusters):
            score = bilinear_sample(image_scores + centre * plane, o00, o01, o10, o11, wy0, wy1, wx0, wx1, inside)
            better = score < best_score
            best_score = tl.where(better, score, best_score)
            best_label = tl.where(better, centre, best_label)

        tl.store(labels_ptr + image * pixels_out + pixel, best_label.to(labels_ptr.dtype.element_ty), mask=inside)


def launch(scores: torch.Tensor, out_h: int, out_w: int, labels_dtype: torch.dtype) -> torch.Tensor:
    """scores (B, K, h, w) float → labels (B, out_h, out_w) labels_dtype. Shapes are checked by the caller."""
    grid = check_launch(scores, out_h, out_w, "nearest_centroid_triton", "scores")
    batch, clusters, in_h, in_w = scores.shape
    scores = scores.contiguous()
    labels = torch.empty((batch, out_h, out_w), dtype=labels_dtype, device=scores.device)
    _nearest_centroid_kernel[grid](scores, labels, clusters, in_h, in_w, out_h, out_w,
                                   torch_scale(in_h, out_h), torch_scale(in_w, out_w),
                                   BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    return labels
