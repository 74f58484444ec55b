"""Attention with SAM's decomposed relative position, without the (N × N) bias.

SAM's ViT adds to every attention logit a relative-position term that factorises over the key's row and
column (segment_anything `add_decomposed_rel_pos`):

    bias[q, (k_row, k_col)] = rel_h[q, k_row] + rel_w[q, k_col],    q, k over the H·W = N tokens,

with rel_h (B, heads, H, W, H) and rel_w (B, heads, H, W, W) computed from the unscaled queries. Built as an
additive mask for `F.scaled_dot_product_attention` (`rel_pos_attention_reference`, what `SdpaAttention` runs
on a CPU) it is heads·N² values per image: for SAM ViT-H global attention (N = 64·64 = 4096, 16 heads) 268 M
values, 512 MiB in fp16, per image and global block. `rel_pos_attention_triton` is a flash-attention kernel
(online softmax over blocks of keys, float32 accumulation, as segment-anything-fast's) that adds the two terms
inside the kernel, reading N·(H + W) values instead.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from emseg_rt.kernels import _rel_pos_attention_triton
from emseg_rt.kernels.dispatch import resolve_impl
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # the kernel holds a (BLOCK_M, next_pow2(D)) accumulator in registers


def _check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                            rel_w: torch.Tensor) -> tuple[int, int]:
    """ValueError unless the shapes fit (B, heads, N, D) and (B, heads, H, W, H|W) with N = H·W;
    returns (H, W)."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must be (B, heads, N, D) of one shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if rel_h.dim() != 5 or rel_w.dim() != 5:
        raise ValueError(f"rel_h, rel_w must be (B, heads, H, W, H) and (B, heads, H, W, W), got "
                         f"{tuple(rel_h.shape)}, {tuple(rel_w.shape)}")
    batch, heads, tokens, _ = q.shape
    rows, cols = rel_h.shape[2], rel_h.shape[3]
    if (rel_h.shape != (batch, heads, rows, cols, rows) or rel_w.shape != (batch, heads, rows, cols, cols)
            or rows * cols != tokens):
        raise ValueError(f"rel_h {tuple(rel_h.shape)} and rel_w {tuple(rel_w.shape)} do not match "
                         f"q {tuple(q.shape)} (need (B, heads, H, W, H), (B, heads, H, W, W), H·W = N)")
    return rows, cols


def rel_pos_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """rel_h (B, heads, H, W, H), rel_w (B, heads, H, W, W) → the additive mask (B, heads, H·W, H·W),
    bias[..., (i, j), (k, l)] = rel_h[..., i, j, k] + rel_w[..., i, j, l]."""
    b, heads, h, w, _ = rel_h.shape
    return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, heads, h * w, h * w)


def rel_pos_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                                rel_w: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA with the materialised decomposed relative-position bias (any device, traceable).

    q, k, v:  (B, heads, N, D), N = H·W tokens in row-major order.
    rel_h:    (B, heads, H, W, H) float, q·R_h terms; rel_w: (B, heads, H, W, W) float, q·R_w terms.
    scale:    multiplies q·kᵀ (SAM: D^−0.5).
    returns   (B, heads, N, D) in q's dtype: softmax(scale·q kᵀ + bias) v.
    """
    _check_attention_inputs(q, k, v, rel_h, rel_w)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=rel_pos_bias(rel_h, rel_w), scale=scale)


def rel_pos_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                             rel_w: torch.Tensor, scale: float, *, block_m: int | None = None,
                             block_n: int | None = None) -> torch.Tensor:
    """Fused Triton flash attention adding rel_h[q, key_row] + rel_w[q, key_col] inside the kernel.

    q, k, v:  (B, heads, N, D) float16, bfloat16 or float32 (one dtype, any strides), D ≤ 256, on CUDA. CPU
              tensors work only under the Triton interpreter (TRITON_INTERPRET=1, set before triton loads).
    rel_h, rel_w: as `rel_pos_attention_reference` (any float dtype; added in float32).
    block_m, block_n: query rows per program and keys per softmax step (powers of two ≥ 16; default 64 × 64 for
              16-bit inputs, 32 × 32 for fp32; for tuning and tests).
    returns   (B, heads, N, D) in q's dtype, laid out (B, N, heads, D) in memory. Softmax and accumulation
              in float32; never builds the (N, N) bias or the attention matrix.
    Raises ImportError when triton is not installed.
    """
    _check_attention_inputs(q, k, v, rel_h, rel_w)
    if q.dtype not in KERNEL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {KERNEL_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}: use rel_pos_attention_reference")
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"rel_pos_attention_triton needs CUDA tensors (got {q.device}); on a CPU use "
                         "rel_pos_attention_reference, or set TRITON_INTERPRET=1 before importing triton")
    blocks = {name: size for name, size in (("block_m", block_m), ("block_n", block_n)) if size is not None}
    for name, size in blocks.items():
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {size}")
    return _rel_pos_attention_triton.launch(q, k, v, rel_h, rel_w, scale, **blocks)


@torch.library.custom_op("emseg_rt::rel_pos_attention", mutates_args=())
def rel_pos_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                         rel_w: torch.Tensor, scale: float) -> torch.Tensor:
    """`rel_pos_attention_triton` as a torch operator (opaque to torch.compile, `dispatch`): q, k, v
    (B, heads, N, D) → (B, heads, N, D), stored (B, N, heads, D)."""
    return rel_pos_attention_triton(q, k, v, rel_h, rel_w, scale)


@rel_pos_attention_op.register_fake
def _rel_pos_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                            rel_w: torch.Tensor, scale: float) -> torch.Tensor:
    batch, heads, tokens, head_dim = q.shape
    return q.new_empty((batch, tokens, heads, head_dim)).transpose(1, 2)  # the kernel's layout


def _needs_autograd(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                      rel_w: torch.Tensor, scale: float, *, impl: str = "auto") -> torch.Tensor:
    """softmax(scale·q kᵀ + rel_h[q, key_row] + rel_w[q, key_col]) v, SAM's attention with decomposed relative
    position (shapes as `rel_pos_attention_reference`).

    impl:  'auto' (the Triton kernel for CUDA tensors of a supported dtype and head dim when triton imports,
           nothing is tracing and no gradient is wanted — the kernel has no backward; else the reference),
           'triton' or 'torch'.
    returns (B, heads, N, D) in q's dtype.
    """
    chosen = resolve_impl(impl, q.device)
    if impl == "auto" and chosen == "triton" and (
            q.dtype not in KERNEL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype
            or q.shape[-1] > MAX_HEAD_DIM or _needs_autograd(q, k, v, rel_h, rel_w)):
        chosen = "torch"
    if chosen == "triton":
        return rel_pos_attention_op(q, k, v, rel_h, rel_w, float(scale))
    return rel_pos_attention_reference(q, k, v, rel_h, rel_w, scale)
