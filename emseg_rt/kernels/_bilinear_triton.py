"""PyTorch's bilinear (align_corners=False) source indices and weights, as a Triton device function shared by
the fused kernels (imported only when one of them runs).

aten/src/ATen/native/UpSample.h (area_pixel_compute_source_index, guard_index_and_lambda):

    scale = in / out                      (float32, rounded once, as torch computes it: `torch_scale`)
    src   = max(scale · (dst + 0.5) − 0.5, 0)
    i0    = min(floor(src), in − 1),  i1 = min(i0 + 1, in − 1),  λ1 = src − i0,  λ0 = 1 − λ1

This module imports without triton (the package's import test walks every module).
"""

from __future__ import annotations

import numpy as np

try:
    import triton
    import triton.language as tl
except ImportError:  # no triton on this platform: the kernels' `launch` says so
    triton = None


def torch_scale(in_size: int, out_size: int) -> float:
    """in/out rounded to float32 once, as torch's area_pixel_compute_scale (float32 inputs) does."""
    return float(np.float32(in_size) / np.float32(out_size))


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
