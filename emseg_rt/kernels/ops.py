"""The Triton kernels as torch custom operators (`torch.ops.emseg_rt.*`), so compiled models call them.

The torch backend's CUDA fast path runs the model under `torch.compile`. Dynamo cannot trace into a Triton
launch wrapper written in Python (it would fall back to the torch reference, or break the graph); a custom
operator with a fake implementation (output shape, dtype and strides, no data) is opaque to it, and the
compiled graph calls the kernel as it is. The `impl="auto"` entry points (`nearest_centroid`,
`class_merge_labels`, `rel_pos_attention`) call these operators whenever they choose Triton, compiled or not.
`torch.export`, `torch.jit` tracing and ONNX export still get the torch references (`resolve_impl`): exported
graphs hold standard operators only.
"""

from __future__ import annotations

import torch

from emseg_rt.kernels.class_merge import class_merge_triton
from emseg_rt.kernels.nearest_centroid import nearest_centroid_triton
from emseg_rt.kernels.rel_pos_attention import rel_pos_attention_triton


@torch.library.custom_op("emseg_rt::rel_pos_attention", mutates_args=())
def rel_pos_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                         rel_w: torch.Tensor, scale: float) -> torch.Tensor:
    """`rel_pos_attention_triton` as an operator: q, k, v (B, heads, N, D) → (B, heads, N, D), stored (B, N,
    heads, D)."""
    return rel_pos_attention_triton(q, k, v, rel_h, rel_w, scale)


@rel_pos_attention_op.register_fake
def _rel_pos_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor,
                            rel_w: torch.Tensor, scale: float) -> torch.Tensor:
    batch, heads, tokens, head_dim = q.shape
    return q.new_empty((batch, tokens, heads, head_dim)).transpose(1, 2)  # the kernel's layout


@torch.library.custom_op("emseg_rt::class_merge", mutates_args=())
def class_merge_op(low_res: torch.Tensor, tile: int, threshold: float, labels_dtype: torch.dtype) -> torch.Tensor:
    """`class_merge_triton` as an operator: low-resolution logits (B, K, h, w) → labels (B, T, T)."""
    return class_merge_triton(low_res, tile, threshold, labels_dtype)


@class_merge_op.register_fake
def _class_merge_fake(low_res: torch.Tensor, tile: int, threshold: float, labels_dtype: torch.dtype) -> torch.Tensor:
    return low_res.new_empty((low_res.shape[0], tile, tile), dtype=labels_dtype)


@torch.library.custom_op("emseg_rt::nearest_centroid", mutates_args=())
def nearest_centroid_op(scores: torch.Tensor, out_h: int, out_w: int, labels_dtype: torch.dtype) -> torch.Tensor:
    """`nearest_centroid_triton` as an operator: token scores (B, K, h, w) → labels (B, H, W)."""
    return nearest_centroid_triton(scores, (out_h, out_w), labels_dtype=labels_dtype)


@nearest_centroid_op.register_fake
def _nearest_centroid_fake(scores: torch.Tensor, out_h: int, out_w: int, labels_dtype: torch.dtype) -> torch.Tensor:
    return scores.new_empty((scores.shape[0], out_h, out_w), dtype=labels_dtype)
