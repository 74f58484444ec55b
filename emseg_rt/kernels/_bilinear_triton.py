"""PyTorch's bilinear (align_corners=False) source indices and weights, as a Triton device function shared by
the fused kernels.

aten/src/ATen/native/UpSample.h (area_pixel_compute_source_index, guard_index_and_lambda):

    scale = in / out                      (float32, rounded once, as torch computes it: `torch_scale`)
    src   = max(scale · (dst + 0.5) − 0.5, 0)
    i0    = min(floor(src), in − 1),  i1 = min(i0 + 1, in − 1),  λ1 = src − i0,  λ0 = 1 − λ1

This module imports without triton (the package's import test walks every module).
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no triton on this platform: the kernels' `launch` says so (check_launch)
    triton = tl = None


BLOCK_PIXELS = 256  # output pixels per program
NUM_WARPS = 4
MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension (one per image)


def torch_scale(in_size: int, out_size: int) -> float:
    """in/out rounded to float32 once, as torch's area_pixel_compute_scale (float32 inputs) does."""
    return float(np.float32(in_size) / np.float32(out_size))


def check_launch(planes: torch.Tensor, out_h: int, out_w: int, kernel: str, what: str) -> tuple[int, ...]:
    """The grid (pixel blocks, images) of a per-pixel kernel over planes (B, K, h, w) → (B, out_h, out_w);
    ImportError without triton, ValueError past CUDA's grid or 32-bit offsets."""
    if triton is None:
        raise ImportError(f"{kernel} needs triton (pip install 'emseg-rt[kernels]', Linux)")
    batch, planes_per_image, in_h, in_w = planes.shape
    if batch > MAX_GRID_Y:
        raise ValueError(f"at most {MAX_GRID_Y} images per call, got {batch}")
    if planes_per_image * in_h * in_w >= 2**31 or out_h * out_w >= 2**31:
        raise ValueError(f"one image's {what} or labels exceed 2**31 elements")
    return (triton.cdiv(out_h * out_w, BLOCK_PIXELS), batch)


if triton is not None:

    @triton.jit
    def bilinear_source(dst, in_size, scale):
        """dst: int block of output indices along one axis → (i0, i1, λ0, λ1): the two source indices (int32)
        and their float32 weights, exactly as PyTorch computes them (module docstring)."""
        src = tl.maximum(scale * (dst.to(tl.float32) + 0.5) - 0.5, 0.0)
        lower = tl.minimum(src.to(tl.int32), in_size - 1)  # src ≥ 0, so truncation is floor
        upper = tl.minimum(lower + 1, in_size - 1)
        weight_upper = src - lower.to(tl.float32)
        return lower, upper, 1.0 - weight_upper, weight_upper

    @triton.jit
    def pixel_block(out_h, out_w, BLOCK: tl.constexpr):
        """This program's image and its BLOCK flat output pixels: (image (int64), pixel, pixels per image,
        inside mask)."""
        image = tl.program_id(1).to(tl.int64)
        pixel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        pixels_out = out_h * out_w
        return image, pixel, pixels_out, pixel < pixels_out

    @triton.jit
    def bilinear_taps(pixel, out_w, in_h, in_w, scale_h, scale_w):
        """Flat output pixels → the four source offsets in one (in_h, in_w) plane and their weights:
        (o00, o01, o10, o11, wy0, wy1, wx0, wx1)."""
        y0, y1, wy0, wy1 = bilinear_source(pixel // out_w, in_h, scale_h)
        x0, x1, wx0, wx1 = bilinear_source(pixel % out_w, in_w, scale_w)
        return y0 * in_w + x0, y0 * in_w + x1, y1 * in_w + x0, y1 * in_w + x1, wy0, wy1, wx0, wx1

    @triton.jit
    def bilinear_sample(plane_ptr, o00, o01, o10, o11, wy0, wy1, wx0, wx1, inside):
        """The bilinearly interpolated value of one plane at each pixel, in float32:
        λy0 · (λx0 · v[y0, x0] + λx1 · v[y0, x1]) + λy1 · (λx0 · v[y1, x0] + λx1 · v[y1, x1])."""
        v00 = tl.load(plane_ptr + o00, mask=inside, other=0.0).to(tl.float32)
        v01 = tl.load(plane_ptr + o01, mask=inside, other=0.0).to(tl.float32)
        v10 = tl.load(plane_ptr + o10, mask=inside, other=0.0).to(tl.float32)
        v11 = tl.load(plane_ptr + o11, mask=inside, other=0.0).to(tl.float32)
        return wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
