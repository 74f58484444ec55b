"""SAM's ViT attention computed by `F.scaled_dot_product_attention` (fused kernels), same weights.

segment_anything's `Attention` materialises softmax(q·kᵀ·s + B_rel) with explicit matmuls. Here the
decomposed relative-position term B_rel (SAM's `add_decomposed_rel_pos`) is computed as its two small
factors rel_h (B, heads, H, W, H) and rel_w (B, heads, H, W, W) and handed to
`emseg_rt.kernels.rel_pos_attention`: on CUDA (triton importable, nothing tracing, no gradient) a
flash-attention Triton kernel that adds them inside the kernel; elsewhere (CPU, ONNX export, torch.compile)
SDPA with the (B, heads, N, N) bias as an additive mask, which picks a fused kernel (memory-efficient
attention on CUDA, a fused CPU kernel otherwise). The result is the same function; the speed-up is what
`emseg-rt bench` measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

from emseg_rt.kernels.rel_pos_attention import rel_pos_attention, rel_pos_bias


def decomposed_rel_pos(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed relative-position factors.

    q:        (B, heads, H·W, C) unscaled queries; rel_pos_h (2H−1, C), rel_pos_w (2W−1, C) parameters.
    returns   rel_h (B, heads, H, W, H) = q_ij·R_h[i−k] and rel_w (B, heads, H, W, W) = q_ij·R_w[j−l],
              in q's dtype.
    """
    b, heads, _, c = q.shape
    h, w = size
    r_h = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (H, H, C)
    r_w = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (W, W, C)
    r_q = q.reshape(b, heads, h, w, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)
    return rel_h, rel_w


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """SAM's decomposed relative-position term as an additive attention mask.

    q:        (B, heads, H·W, C) unscaled queries
    returns   (B, heads, H·W, H·W) bias, bias[..., (i, j), (k, l)] = q_ij·R_h[i−k] + q_ij·R_w[j−l].
    """
    return rel_pos_bias(*decomposed_rel_pos(q, rel_pos_h, rel_pos_w, size))


class SdpaAttention(nn.Module):
    """Drop-in for segment_anything's `Attention`, sharing its parameters (same state-dict keys)."""

    def __init__(self, attention: Attention) -> None:
        super().__init__()
        self.num_heads = attention.num_heads
        self.scale = attention.scale
        self.qkv = attention.qkv
        self.proj = attention.proj
        self.use_rel_pos = attention.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h = attention.rel_pos_h
            self.rel_pos_w = attention.rel_pos_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) → (B, H, W, C)."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, H·W, C_head)
        if self.use_rel_pos:
            rel_h, rel_w = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (h, w))
            out = rel_pos_attention(q, k, v, rel_h, rel_w, self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.reshape(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def use_sdpa_attention(module: nn.Module) -> int:
    """Replace every segment_anything `Attention` inside `module` by `SdpaAttention`; returns how many."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Attention):
                setattr(parent, name, SdpaAttention(child))
                replaced += 1
    return replaced
